"""Sidecar JSON files next to every exported model and built engine, and the file hashing they rely on."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avatarcam.errors import ModelFileError

_CHUNK_BYTES = 1 << 20


def sidecar_path(model_path: Path) -> Path:
    """engines/NAME.onnx -> engines/NAME.json; engines/NAME.<key>.plan -> engines/NAME.<key>.json."""
    return Path(model_path).with_suffix(".json")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large models do not sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write a file via a temporary name and rename, so a crash never leaves a half-written model behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def write_sidecar(path: Path, data: Mapping[str, Any]) -> None:
    """Write a sidecar JSON atomically, keys sorted so diffs stay readable."""
    text = json.dumps(dict(data), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(Path(path), text.encode("utf-8"))


def read_sidecar(path: Path, *, fix: str) -> dict[str, Any]:
    """Read a sidecar JSON; a missing or unreadable one is a ModelFileError that ends with `fix`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} is missing (every model file needs its sidecar JSON): {fix}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not readable JSON ({exc}): {fix}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} holds a {type(data).__name__} but a JSON object was expected: {fix}")
    return data
