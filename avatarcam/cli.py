"""Command-line interface: `python run.py --help`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from avatarcam.config import documented_keys, load_config, parse_override
from avatarcam.errors import FaceMimicError
from avatarcam.generators import GENERATORS
from avatarcam.paths import DEFAULT_CONFIG

WEB_TOKEN_ENV = "FACEMIMIC_WEB_TOKEN"
"""The browser mode's access token (web.token) from the environment, which other users cannot read."""

EPILOG = """\
examples:
  python run.py                                   webcam 0 -> default avatar -> preview + "FaceMimic Camera"
  python run.py --source clip.mp4 --avatar avatars/astronaut.png
  python run.py --model fomm --checkpoint ~/avatarify/vox-adv-cpk.pth.tar
  python run.py --model swap                      face swap: your camera picture with the avatar's face on yours
  python run.py --set motion.smoothing=0.6 --set vcam.fit=fill
  python run.py --serve                           the page http://127.0.0.1:8080/ for browsers (WebRTC)
  python run.py --check                           self-test of camera, landmark model and virtual camera
  python run.py --list-config                     every config.yaml key with its default and allowed values

Hotkeys (global, work while the call app has focus): Ctrl+Alt+1..9 avatar, Ctrl+Alt+N/P next/previous,
Ctrl+Alt+C recalibrate, Ctrl+Alt+0 passthrough, Ctrl+Alt+F freeze; see README for the full table.
"""


def program_name(argv0: str | None = None) -> str:
    """How the user started us, for usage lines: `facemimic` (the installed command, facemimic.exe on Windows)
    or `run.py` (everything else: run.py itself, an embedding program, a test runner)."""
    name = os.path.basename(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
    return "facemimic" if name.lower().startswith("facemimic") else "run.py"


def positive_seconds(text: str) -> float:
    """--duration's type: a number of seconds above 0 (argparse reports the ArgumentTypeError with the flag)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text} is not a duration: give seconds above 0 (e.g. --duration 10), or leave --duration out to run "
            "until you quit (q, Esc or Ctrl+C) or a video source ends")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag maps onto a config.yaml key (flags win)."""
    prog = program_name()
    p = argparse.ArgumentParser(
        prog=prog, description="FaceMimic: your webcam drives a portrait (or, with --model swap, wears its "
                    "face), published as the 'FaceMimic Camera'.",
        epilog=EPILOG if prog == "run.py" else EPILOG.replace("python run.py", prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="config file (default: config.yaml)")
    src = p.add_argument_group("input")
    src.add_argument("--source", help="camera index, video file or URL (capture.source)")
    src.add_argument("--mirror", dest="mirror", action="store_true", default=None, help="mirror the camera")
    src.add_argument("--no-mirror", dest="mirror", action="store_false", help="do not mirror the camera")
    src.add_argument("--fast", action="store_true", help="video files: read as fast as possible (capture.pace=false)")
    av = p.add_argument_group("avatar and model")
    av.add_argument("--avatar", help="avatar name, 1-based index, or image path (avatars.default)")
    av.add_argument("--avatars-folder", help="folder of avatar images (avatars.folder)")
    av.add_argument("--model", choices=tuple(GENERATORS), help="generator (generator.model)")
    av.add_argument("--checkpoint", help="FOMM checkpoint (vox-adv-cpk.pth.tar) or LivePortrait weights folder "
                    "(generator.checkpoint)")
    av.add_argument("--backend", choices=("auto", "tensorrt", "onnxruntime", "torch", "triton"),
                    help="inference runtime (generator.backend); triton: a Triton server, see --triton-url")
    av.add_argument("--triton-url", help="Triton server gRPC address host:port (generator.triton_url); token from "
                    "$FACEMIMIC_TRITON_TOKEN")
    av.add_argument("--triton-ca", help="PEM certificate that signed the Triton server's (generator.triton_ca)")
    av.add_argument("--triton-insecure", action="store_true",
                    help="allow plain text, no token, to another machine (generator.triton_insecure)")
    av.add_argument("--no-crop", action="store_true", help="FOMM: use frames as given, no face crop")
    av.add_argument("--fomm-size", type=int, help="FOMM: model input size in pixels, default 256 (generator.fomm_size)")
    av.add_argument("--fomm-precision", choices=("auto", "fp32", "bf16", "int8"),
                    help="FOMM frame generator on CPU: fp32 exact, bf16 fast, int8 fastest (8-bit bottleneck), "
                         "auto (generator.fomm_precision)")
    av.add_argument("--fomm-config", help="FOMM: its own YAML, e.g. config/vox-adv-256.yaml (generator.fomm_config)")
    av.add_argument("--canvas-size", type=int, help="avatar canvas side in pixels (generator.canvas_size)")
    mo = p.add_argument_group("motion")
    mo.add_argument("--smoothing", type=float, help="0..1 temporal smoothing (motion.smoothing)")
    mo.add_argument("--intensity", type=float, help="0..2 expression gain for every region (motion.intensity.*)")
    mo.add_argument("--scale-lock", action="store_true", help="ignore head distance (motion.scale_lock)")
    out = p.add_argument_group("output")
    out.add_argument("--no-vcam", action="store_true", help="do not open the virtual camera (output.vcam=off)")
    out.add_argument("--vcam-backend", choices=("auto", "v4l2loopback", "unitycapture", "obs"),
                     help="pyvirtualcam backend (vcam.backend)")
    out.add_argument("--vcam-device", help="virtual camera device, e.g. /dev/video10 (vcam.device)")
    out.add_argument("--no-preview", action="store_true", help="no preview window (output.preview=off)")
    out.add_argument("--out", help="also record the output to this video file (output.video)")
    wb = p.add_argument_group("browser mode")
    wb.add_argument("--serve", action="store_true", help="serve the FaceMimic page: each browser's webcam drives "
                    "its own avatar over WebRTC (prints the URL)")
    wb.add_argument("--host", help="address to serve on (web.host, default 127.0.0.1); 0.0.0.0 for the local "
                    "network needs the printed token and serves HTTPS")
    wb.add_argument("--port", type=int, help="port of the page (web.port, default 8080)")
    wb.add_argument("--token", help=f"access token for the page (web.token; default: ${WEB_TOKEN_ENV}, else random "
                    "off localhost); visible to every user of this machine in the process list: prefer "
                    f"${WEB_TOKEN_ENV} or web.token in the config file")
    wb.add_argument("--cert", help="HTTPS certificate, PEM (web.cert; default off localhost: self-signed)")
    wb.add_argument("--key", help="private key of --cert, PEM (web.key)")
    run = p.add_argument_group("run")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="set any config key, e.g. --set motion.head_rotation=0.8 (repeatable)")
    run.add_argument("--duration", type=positive_seconds, metavar="SECONDS",
                     help="stop after this many seconds (above 0); without it the run lasts until you quit or a "
                     "video source ends")
    run.add_argument("--check", action="store_true", help="self-test: camera, landmark model, virtual camera")
    run.add_argument("--list-config", action="store_true", help="print every config key and exit")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Dotted config overrides from the parsed flags."""
    o: dict = {}
    simple = {
        "source": "capture.source", "mirror": "capture.mirror", "avatar": "avatars.default",
        "avatars_folder": "avatars.folder", "model": "generator.model", "checkpoint": "generator.checkpoint",
        "backend": "generator.backend", "canvas_size": "generator.canvas_size", "smoothing": "motion.smoothing",
        "fomm_size": "generator.fomm_size", "fomm_config": "generator.fomm_config",
        "fomm_precision": "generator.fomm_precision", "triton_url": "generator.triton_url",
        "triton_ca": "generator.triton_ca",
        "vcam_backend": "vcam.backend", "vcam_device": "vcam.device", "out": "output.video",
        "host": "web.host", "port": "web.port", "token": "web.token", "cert": "web.cert", "key": "web.key",
    }
    for attr, key in simple.items():
        value = getattr(args, attr)
        if value is not None:
            o[key] = value
    if args.fast:
        o["capture.pace"] = False
    if args.no_crop:
        o["generator.crop"] = False
    if args.triton_insecure:
        o["generator.triton_insecure"] = True
    if args.intensity is not None:
        for region in ("mouth", "eyes", "brows", "face"):
            o[f"motion.intensity.{region}"] = args.intensity
    if args.scale_lock:
        o["motion.scale_lock"] = True
    if args.no_vcam:
        o["output.vcam"] = "off"
    if args.no_preview:
        o["output.preview"] = "off"
    env_token = os.environ.get(WEB_TOKEN_ENV, "").strip()
    if env_token and args.token is None:  # flags > environment > config file; unlike a flag, not shown by `ps`
        o["web.token"] = env_token
    for item in args.set:
        key, value = parse_override(item)
        o[key] = value
    return o


def warn_visible_token(args: argparse.Namespace) -> bool:
    """Warn (True) when the page's token was given on the command line, where `ps` shows it to every local user."""
    on_line = args.token is not None or any(item.split("=", 1)[0].strip() == "web.token" for item in args.set)
    if on_line:
        logging.getLogger(__name__).warning(
            "the access token given on the command line is visible to every user of this machine in the process "
            "list (ps): set $%s or web.token in the config file instead", WEB_TOKEN_ENV)
    return on_line


def _stop_on_sigterm(stop_event) -> None:
    """SIGTERM (a service manager, `kill`, a closing terminal) stops the run like `q` does, so the outputs are
    finalised (an mp4 without its index does not play); Ctrl+C (SIGINT) is caught as KeyboardInterrupt."""
    import signal

    def handler(signum, frame) -> None:
        logging.getLogger(__name__).info("stopping (%s)", signal.Signals(signum).name)
        stop_event.set()

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): the caller owns signals
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of run.py; returns the process exit code."""
    # OpenCV prints backend probing noise and MediaPipe its graph set-up; our own messages say what matters.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("GLOG_minloglevel", "2")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    warn_visible_token(args)
    if args.list_config:
        for key, default, allowed, doc in documented_keys():
            print(f"{key} = {default!r}\n    {doc}; {allowed}")
        return 0
    try:
        config = load_config(args.config, overrides_from_args(args))
        if args.check:
            from avatarcam.selftest import run_self_test

            return run_self_test(config)
        if args.serve:
            import threading

            from avatarcam.disclosure import show_first_start_notice
            from avatarcam.web.server import serve

            show_first_start_notice()  # the page offers face swap too
            stop = threading.Event()
            _stop_on_sigterm(stop)  # closes every browser's connection and exits 0, as the camera mode does
            return serve(config, stop=stop)
        from avatarcam.app import App
        from avatarcam.config import CaptureConfig
        from avatarcam.disclosure import show_first_start_notice

        show_first_start_notice()

        # Only the untouched default camera falls back to the sample clip; a camera the user chose is waited for.
        explicit = args.source is not None or config.capture.source != CaptureConfig().source
        app = App(config, duration_s=args.duration, source_explicit=explicit)
        _stop_on_sigterm(app.stop_event)
        summary = app.run()
    except FaceMimicError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C before the outputs were open: nothing to finalise
        print("stopped (Ctrl+C)", file=sys.stderr)
        return 130
    print(f"FaceMimic rendered {summary.frames_rendered} frames in {summary.seconds:.1f} s "
          f"(outputs: {', '.join(summary.outputs) or 'none'})")
    # app.notes were each logged once when they happened: one line per fact, not repeated here.
    if summary.video_path is not None:
        print(f"output video: {summary.video_path}")
    return 0
