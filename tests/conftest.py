"""Shared fixtures: the landmark model, fixture clips and portraits, and prepared avatars (built once)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
D12 = FIXTURES / "driving" / "d12.mp4"
D14 = FIXTURES / "driving" / "d14.mp4"
PORTRAIT = FIXTURES / "source" / "lp_s42.jpg"
ASTRONAUT = FIXTURES / "source" / "astronaut.png"

# MediaPipe and torch each start thread pools; keep them from oversubscribing the two CI cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# The first-start notice's state lives in a temporary config folder, marked as seen, so no test (nor a run.py it
# starts) writes to the user's own ~/.config; tests of the notice pass their own folder.
_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="facemimic-test-config-"))
(_CONFIG_DIR / "notice.json").write_text(json.dumps({"notice_version": 1}), encoding="utf-8")
os.environ["FACEMIMIC_CONFIG_DIR"] = str(_CONFIG_DIR)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The verified face landmark model; fails with the install command when it is missing."""
    from avatarcam.errors import ModelFileError
    from avatarcam.landmarks import DEFAULT_MODEL_PATH, verify_model_file

    try:
        return verify_model_file(DEFAULT_MODEL_PATH)
    except ModelFileError as exc:
        pytest.fail(f"{exc}. The test suite needs it: run `python tools/install.py --dev` first.")


@pytest.fixture(scope="session")
def image_landmarker(model_path):
    """A real MediaPipe Face Landmarker in image mode, shared by the session."""
    from avatarcam.landmarks import FaceLandmarker

    landmarker = FaceLandmarker(model_path=model_path, mode="image")
    yield landmarker
    landmarker.close()


@pytest.fixture(scope="session")
def portrait_avatar(image_landmarker):
    """The frontal portrait fixture as an Avatar on a 512 canvas."""
    from avatarcam.avatars import load_avatar

    return load_avatar(PORTRAIT, image_landmarker, 512)


@pytest.fixture(scope="session")
def astronaut_avatar(image_landmarker):
    """The astronaut (small face, busy scene) as an Avatar on a 512 canvas."""
    from avatarcam.avatars import load_avatar

    return load_avatar(ASTRONAUT, image_landmarker, 512)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one thread: with MediaPipe or other work on the second core, two OpenMP threads turn every
    small op's barrier into a scheduler wait (the tiny FOMM model then runs 30x slower); restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parity():
    """The FOMM parity fixture: the original implementation's inputs and outputs (tests/fixtures/fomm/)."""
    import numpy as np

    with np.load(FIXTURES / "fomm" / "parity.npz") as data:
        return {name: data[name] for name in data.files}


@pytest.fixture(scope="module")
def display():
    """A private Xvfb display (':N') for the window and hotkey tests; skips with the reason without Xvfb/xdotool."""
    from tests import xvfb_util

    reason = xvfb_util.xvfb_missing_reason()
    if reason:
        pytest.skip(reason)
    with xvfb_util.xvfb_display() as name:
        yield name
