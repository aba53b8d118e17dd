"""Quality of the built-in generator read by a detector it was not built on: dlib's 68-point landmarks.

tests/test_quality.py reads the output with MediaPipe, the model whose landmarks drove the warp, which flatters it.
Here dlib (HOG detector, 68-point shape predictor; no MediaPipe) reads driver and output, and the output must
follow the driver with the driver's amplitude (gain), in step (no lag), and close its eyes on d14's closed-eye
frames. Numbers are printed with -s; the README's table comes from ../shared/judge/judge.py on more pairs.
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


@pytest.mark.parametrize("signal, min_concordance, gains", [
    ("mouth", 0.85, (0.8, 1.3)),
    # d12 has only a few quick blinks behind glasses (concordance ~0.7 on dlib's noisy reading); on d14 it is ~0.95.
    # Eyes that close part way are caught by the gain and by test_eyes_close_on_the_closed_eye_frames_of_d14.
    ("eyes", 0.65, (0.75, 1.35)),
    # dlib reads d12's big turns (15-20 degrees, glasses) at ~0.65 of MediaPipe's reading of the same driver frames,
    # so the output, which turns as MediaPipe saw, reads up to ~1.8x on d12; the floor is what the avatar must reach.
    ("turn", 0.75, (0.8, 1.9)),
])
def test_output_follows_the_driver_with_its_amplitude(judged, signal, min_concordance, gains):
    if signal not in judged["informative"]:
        pytest.skip(f"{judged['driver']} hardly moves its {signal}")
    a, b = judged["informative"][signal]
    assert concordance(a, b) >= min_concordance, (signal, concordance(a, b), gain(a, b))
    assert gains[0] <= gain(a, b) <= gains[1], (signal, concordance(a, b), gain(a, b))


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
