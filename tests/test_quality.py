"""Quality of the built-in generator on the real fixture clips, measured with the real landmark detector.

The detector runs on the driver and on the output; the output's mouth openness, eye openness and head yaw/pitch
must follow the driver's. Correlations reached (smoothing at its default) are printed with -s and listed in the
README; the bounds below sit a little under them.
"""

from __future__ import annotations

import numpy as np
import pytest

from avatarcam.generators import build_reenactor
from avatarcam.capture import iter_frames
from avatarcam.config import load_config
from avatarcam.landmarks import FaceLandmarker
from avatarcam.motion import face_size
from avatarcam.quality import compare, face_mask, frame_jumps, psnr, video_signals
from avatarcam.types import Frame, Observed
from tests.conftest import D12, D14

FPS = 25.0


def _render(driver, avatar, model_path):
    """Raw output canvases (no video encoding) for every driver frame, neutral = frame 0."""
    config = load_config(None)
    reenactor = build_reenactor(config.generator, config.motion)
    prepared = reenactor.prepare(avatar)
    frames = list(iter_frames(str(driver)))
    outputs, faces = [], []
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        neutral = None
        for t, frame in enumerate(frames):
            face = landmarker.detect(frame, int(t * 1000 / FPS))
            faces.append(face)
            observed = Observed(frame=Frame(frame, t, t / FPS), face=face)
            if neutral is None:
                neutral = reenactor.neutral_from([observed])
            out = np.empty((512, 512, 3), np.uint8)
            outputs.append(reenactor.render(prepared, observed, neutral, t / FPS, out))
    return frames, outputs, faces


@pytest.fixture(scope="module", params=[("d12", "portrait"), ("d12", "astronaut"), ("d14", "portrait")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def rendered(request, model_path, portrait_avatar, astronaut_avatar):
    driver_name, avatar_name = request.param
    driver = {"d12": D12, "d14": D14}[driver_name]
    avatar = {"portrait": portrait_avatar, "astronaut": astronaut_avatar}[avatar_name]
    frames, outputs, faces = _render(driver, avatar, model_path)
    report = compare(video_signals(frames, model_path, FPS), video_signals(outputs, model_path, FPS))
    print(f"\n{driver_name} -> {avatar_name}: {report}")
    return {"driver": driver_name, "avatar": avatar, "frames": frames, "outputs": outputs, "faces": faces,
            "report": report}


# Minimum correlation per driver clip: (mouth, eyes, yaw, pitch). d12 has wide mouth openings and head turns;
# d14 has long eye closures and little mouth or head motion, so its mouth signal is mostly smiles.
BOUNDS = {"d12": (0.9, 0.8, 0.95, 0.75), "d14": (0.8, 0.85, 0.9, 0.85)}


def test_output_follows_the_driver(rendered):
    r = rendered["report"]
    mouth, eyes, yaw, pitch = BOUNDS[rendered["driver"]]
    assert r.output_faces == r.frames, "the detector lost the avatar's face in some output frames"
    assert r.mouth_corr >= mouth, r
    assert r.eyes_corr >= eyes, r
    assert r.yaw_corr >= yaw, r
    assert r.pitch_corr >= pitch, r


def test_identity_is_kept_at_the_neutral_frame(rendered):
    avatar = rendered["avatar"]
    mask = face_mask(avatar.points, (512, 512))
    assert psnr(rendered["outputs"][0], avatar.canvas_bgr, mask) >= 30.0


def test_no_holes_and_no_jumps_the_driver_does_not_have(rendered):
    avatar_black = int((rendered["avatar"].canvas_bgr.max(axis=2) == 0).sum())
    for out in rendered["outputs"]:
        assert int((out.max(axis=2) == 0).sum()) <= avatar_black + 50  # no empty (black) pixels appear
    # Frame-to-frame change of the output must come from the driver's motion: compare it with how far the
    # driver's landmarks moved (in face sizes), which is blind to the two pictures' different backgrounds.
    faces = rendered["faces"]
    assert all(f is not None for f in faces)
    points = np.array([f.points_px[:, :2] for f in faces])
    speed = np.linalg.norm(np.diff(points, axis=0), axis=2).mean(1) / face_size(points[0])
    out_jumps = frame_jumps(rendered["outputs"])
    assert np.corrcoef(speed, out_jumps)[0, 1] >= 0.7
    big = out_jumps >= np.percentile(out_jumps, 97)
    assert speed[big].min() >= np.median(speed), "the output jumps where the driver hardly moves"
