"""Fetch LivePortrait's published weights (MIT licence) into a `liveportrait/` folder, sha256-verified.

The files are KwaiVGI's on Hugging Face (repository KwaiVGI/LivePortrait, folder liveportrait/). Their sha256 values
are not pinned here (the real files could not be reached when this was written); they come from the hub's own
record: the model-tree API lists each Git-LFS file with `lfs.oid`, the sha256 of its content, and its size. Every
file is streamed to `<name>.part`, hashed, compared with that record and only then renamed into place; a file that
is already present and matches is not fetched again.

Tested against a local HTTP server that serves the same API shape (tests/test_liveportrait_download.py); NOT tested
against huggingface.co itself, which this machine cannot reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from avatarcam.errors import ModelFileError

__all__ = ["HUB_API", "HUB_FILES", "HUB_RESOLVE", "RemoteFile", "download_liveportrait", "download_verified",
           "hub_manifest"]

HUB_REPO = "KwaiVGI/LivePortrait"
HUB_API = f"https://huggingface.co/api/models/{HUB_REPO}/tree/main"
HUB_RESOLVE = f"https://huggingface.co/{HUB_REPO}/resolve/main"
HUB_FILES = (
    "liveportrait/base_models/appearance_feature_extractor.pth",
    "liveportrait/base_models/motion_extractor.pth",
    "liveportrait/base_models/warping_module.pth",
    "liveportrait/base_models/spade_generator.pth",
    "liveportrait/retargeting_models/stitching_retargeting_module.pth",
)
"""The five files FaceMimic needs, as paths in the hub repository (the published pretrained_weights layout)."""
CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of the hub repository: path, sha256 of its content (Git-LFS oid) and size in bytes."""

    path: str
    sha256: str
    size: int


def _get_json(url: str, timeout: float) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https or a test's local server)
        return json.loads(response.read().decode("utf-8"))


def hub_manifest(paths: tuple[str, ...] = HUB_FILES, *, api: str = HUB_API,
                 timeout: float = 30.0) -> dict[str, RemoteFile]:
    """path -> RemoteFile from the hub's tree listing of each file's folder; ModelFileError if a file is not listed."""
    found: dict[str, RemoteFile] = {}
    for folder in sorted({p.rsplit("/", 1)[0] for p in paths}):
        url = f"{api}/{urllib.parse.quote(folder)}"
        try:
            listing = _get_json(url, timeout)
        except (OSError, ValueError) as error:
            raise ModelFileError(
                f"cannot read the LivePortrait file list {url} ({error}): check the network, or download the "
                f"{HUB_REPO} files by hand into engines/pretrained_weights/liveportrait (or any folder: --checkpoint "
                "names it)"
            ) from error
        for entry in listing if isinstance(listing, list) else []:
            lfs = entry.get("lfs") if isinstance(entry, dict) else None
            if isinstance(lfs, dict) and entry.get("path") in paths:
                found[entry["path"]] = RemoteFile(entry["path"], str(lfs["oid"]), int(lfs.get("size", entry["size"])))
    missing = [p for p in paths if p not in found]
    if missing:
        raise ModelFileError(
            f"{api} does not list {missing} with an LFS sha256: the repository layout changed; download the files "
            f"by hand from https://huggingface.co/{HUB_REPO} into engines/pretrained_weights/liveportrait (or any "
            "folder: --checkpoint names it)"
        )
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download_verified(url: str, target: Path, sha256: str, *, size: int | None = None, timeout: float = 60.0,
                      progress: Callable[[str], None] = print) -> Path:
    """Stream url to target (via target.part), check its sha256 (and size), then rename; skip a verified file."""
    target = Path(target)
    if target.is_file() and _sha256(target) == sha256:
        progress(f"{target.name}: present, sha256 verified")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:  # noqa: S310
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                digest.update(block)
                received += len(block)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ModelFileError(f"downloading {url} failed ({error}): check the network and run the command again") \
            from error
    seen = digest.hexdigest()
    if seen != sha256 or (size is not None and received != size):
        partial.unlink(missing_ok=True)
        raise ModelFileError(
            f"{url} gave {received} bytes with sha256 {seen}, expected {size if size is not None else '?'} bytes "
            f"with sha256 {sha256}: the download was damaged or the file changed; run the command again"
        )
    os.replace(partial, target)
    progress(f"{target.name}: downloaded {received / 2**20:.1f} MB, sha256 verified")
    return target


def download_liveportrait(dest: Path | str, *, api: str = HUB_API, resolve: str = HUB_RESOLVE,
                          progress: Callable[[str], None] = print) -> Path:
    """Fetch the five files into dest/liveportrait/... (the published layout) and return dest/liveportrait."""
    dest = Path(dest)
    manifest = hub_manifest(api=api)
    for path in HUB_FILES:
        remote = manifest[path]
        download_verified(f"{resolve}/{urllib.parse.quote(path)}", dest / path, remote.sha256, size=remote.size,
                          progress=progress)
    return dest / "liveportrait"
