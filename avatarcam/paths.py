"""Well-known locations inside a FaceMimic checkout."""

from __future__ import annotations

from pathlib import Path
from typing import overload

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENGINES_DIR = PROJECT_ROOT / "engines"
AVATARS_DIR = PROJECT_ROOT / "avatars"
SAMPLES_DIR = PROJECT_ROOT / "avatarcam" / "samples"
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"
SAMPLE_DRIVER = SAMPLES_DIR / "driver.mp4"
"""The bundled driving clip used when no webcam can be opened."""


@overload
def project_path(value: str) -> Path: ...
@overload
def project_path(value: None) -> None: ...
def project_path(value: str | None) -> Path | None:
    """A config path: absolute as given, relative to the project folder otherwise; None stays None."""
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
