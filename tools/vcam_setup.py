"""Set up the "FaceMimic Camera" virtual camera once: print the steps for this OS, or (Linux, with consent) do them.

    python tools/vcam_setup.py            # print the steps; on Linux, offer to run them (y/N)
    python tools/vcam_setup.py --yes      # Linux: run modprobe and write the boot-time files without asking
    python tools/vcam_setup.py --check    # does a "FaceMimic Camera" device exist? (exit status 0/1)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from avatarcam import vcam
from avatarcam.errors import DeviceError


def check(*, system: str, sysfs_root: str, label: str) -> int:
    """Report whether the device exists; 0 when it does."""
    if system == "Linux":
        try:
            path = vcam.find_loopback_device(label=label, sysfs_root=sysfs_root)
        except DeviceError as exc:
            print(f"MISSING: {exc}")
            return 1
        print(f'OK: "{label}" is {path}.')
        return 0
    sink = vcam.VirtualCameraSink(width=640, height=360, fps=30, label=label, system=system)
    try:
        sink.open()
    except DeviceError as exc:
        print(f"MISSING: {exc}")
        return 1
    try:
        print(f'OK: FaceMimic can publish to "{sink.device}" (backend {sink.backend}).')
    finally:
        sink.close()
    return 0


def _privileged(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo") is None:
        raise SystemExit("This step needs root and sudo is not installed: run this tool as root.")
    return ["sudo", *argv]


def linux_apply(*, label: str, video_nr: int, sysfs_root: str) -> int:
    """Load the module now and write the boot-time files (each command is shown before it runs)."""
    if shutil.which("modprobe") is None and not Path("/sbin/modprobe").exists():
        print("modprobe is not available here (a container?); run these steps on the host.")
        return 1
    if subprocess.run(["modinfo", "v4l2loopback"], capture_output=True).returncode != 0:
        print("The v4l2loopback module is not installed. Install it first, e.g. "
              "`sudo apt install v4l2loopback-dkms`, then run this tool again.")
        return 1
    steps: list[tuple[list[str], str | None]] = []
    if Path(sysfs_root, "module", "v4l2loopback").exists():
        print("v4l2loopback is loaded without our device; it is unloaded first (close apps using its cameras).")
        steps.append((_privileged(["modprobe", "-r", "v4l2loopback"]), None))
    steps.append((_privileged(["modprobe", "v4l2loopback",
                               *vcam.linux_modprobe_options(label=label, video_nr=video_nr)]), None))
    for path, content in vcam.linux_persistence_files(label=label, video_nr=video_nr).items():
        steps.append((_privileged(["tee", path]), content))
    for argv, stdin_text in steps:
        print("+", " ".join(argv))
        result = subprocess.run(argv, input=stdin_text, text=True,
                                stdout=subprocess.DEVNULL if stdin_text is not None else None)
        if result.returncode != 0:
            print(f"Failed (exit status {result.returncode}): {' '.join(argv)}. See the steps above to finish by hand.")
            return 1
    others = [p for p in Path("/etc/modprobe.d").glob("*.conf")
              if "facemimic" not in p.name and "v4l2loopback" in p.read_text(errors="replace")]
    if others:
        print("Note: other files also set v4l2loopback options and may conflict at boot: "
              + ", ".join(str(p) for p in others))
    return check(system="Linux", sysfs_root=sysfs_root, label=label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help='report whether a "FaceMimic Camera" device exists')
    parser.add_argument("--yes", action="store_true", help="Linux: run the steps without asking")
    parser.add_argument("--video-nr", type=int, default=vcam.LINUX_VIDEO_NR, help="Linux: /dev/videoN number to use")
    parser.add_argument("--label", default=vcam.DEVICE_LABEL, help=argparse.SUPPRESS)
    parser.add_argument("--sysfs-root", default=vcam.DEFAULT_SYSFS_ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--system", default=platform.system(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.check:
        return check(system=args.system, sysfs_root=args.sysfs_root, label=args.label)

    if args.system == "Linux":
        print(vcam.linux_setup_text(label=args.label, video_nr=args.video_nr))
        try:
            path = vcam.find_loopback_device(label=args.label, sysfs_root=args.sysfs_root)
        except DeviceError:
            path = None
        if path is not None:
            print(f'\nAlready set up: "{args.label}" is {path}.')
            return 0
        if not args.yes:
            if not sys.stdin.isatty():
                print("\nNot run (no terminal to ask for consent): re-run with --yes to do steps 2 and 3.")
                return 0
            answer = input("\nRun steps 2 and 3 now with sudo? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                print("Nothing changed.")
                return 0
        return linux_apply(label=args.label, video_nr=args.video_nr, sysfs_root=args.sysfs_root)

    print(vcam.setup_text(system=args.system))
    return 0


if __name__ == "__main__":
    sys.exit(main())
