"""App-level commands that need no display: snapshot, reload of the avatars folder."""

from __future__ import annotations

import shutil
import time

import cv2
import numpy as np

from avatarcam.app import App
from avatarcam.capture import iter_frames
from avatarcam.commands import Command
from avatarcam.config import load_config
from avatarcam.generators import build_reenactor
from avatarcam.landmarks import FaceLandmarker
from avatarcam.pipeline import AvatarStore, Rendered
from avatarcam.types import Frame
from tests.conftest import ASTRONAUT, D12, PORTRAIT


def test_snapshot_saves_driver_landmarks_and_output(tmp_path, image_landmarker):
    app = App(load_config(None, {"output.snapshot_dir": str(tmp_path)}))
    assert app.snapshot() == []  # nothing rendered yet: nothing saved, no error
    frame = next(iter_frames(str(D12)))
    face = image_landmarker.detect(frame)
    canvas = np.full((512, 512, 3), 77, np.uint8)
    app._last = Rendered(canvas_bgr=canvas, frame=Frame(frame, 0, 0.0), face=face, stage_ms={}, latency_ms=1.0,
                         avatar_name="x", calibration="calibrated", seq=1)
    app.handle(Command.SNAPSHOT)
    files = sorted(tmp_path.iterdir())
    kinds = sorted(p.name.split("-")[-1] for p in files)
    assert kinds == ["avatar.png", "driver.png", "landmarks.png"]
    driver = cv2.imread(str(next(p for p in files if p.name.endswith("driver.png"))))
    marked = cv2.imread(str(next(p for p in files if p.name.endswith("landmarks.png"))))
    avatar = cv2.imread(str(next(p for p in files if p.name.endswith("avatar.png"))))
    assert np.array_equal(driver, frame) and (avatar == 77).all()
    assert (np.abs(marked.astype(int) - driver.astype(int)).sum(axis=2) > 0).sum() > 300  # landmarks drawn


def test_reload_picks_up_added_and_removed_images(tmp_path, model_path):
    shutil.copy(ASTRONAUT, tmp_path / "a.png")
    config = load_config(None)
    reenactor = build_reenactor(config.generator, config.motion)
    store = AvatarStore(tmp_path, lambda: FaceLandmarker(model_path=model_path, mode="image"), reenactor)
    store.reload()
    assert store.loaded.wait(30)
    assert [a.name for a, _ in store.entries()] == ["a"]
    shutil.copy(PORTRAIT, tmp_path / "b.jpg")
    time.sleep(0.01)
    store.reload()
    assert store.loaded.wait(30)
    assert [a.name for a, _ in store.entries()] == ["a", "b"]
    (tmp_path / "a.png").unlink()
    store.reload()
    assert store.loaded.wait(30)
    assert [a.name for a, _ in store.entries()] == ["b"]
