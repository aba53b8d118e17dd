"""Well-known locations inside a FaceMimic checkout."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENGINES_DIR = PROJECT_ROOT / "engines"
AVATARS_DIR = PROJECT_ROOT / "avatars"
SAMPLES_DIR = PROJECT_ROOT / "avatarcam" / "samples"
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"
