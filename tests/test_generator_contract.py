"""Every registered generator family, driven only through generators.base.Reenactor (FOMM on the tiny checkpoint).

A new family added to GENERATORS runs through these tests without a line changed here; one that needs an input
this machine cannot provide adds it to CONTRACT_OVERRIDES below.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from avatarcam.capture import iter_frames
from avatarcam.cli import build_parser
from avatarcam.config import GeneratorConfig, load_config
from avatarcam.errors import ConfigError
from avatarcam.generators import EXPORTABLE_MODELS, GENERATORS, build_reenactor, family, output_shape
from avatarcam.motion import MotionSettings
from avatarcam.types import Frame, Observed
from tests.conftest import D12, FIXTURES

TINY_FOMM = FIXTURES / "fomm" / "tiny-checkpoint.pth.tar"
TINY_LIVEPORTRAIT = FIXTURES / "liveportrait" / "tiny-weights"

# What each family needs beyond the defaults to run here: torch keeps FOMM from exporting into engines/.
CONTRACT_OVERRIDES = {
    "mesh": {"generator.backend": "auto"},
    "fomm": {"generator.checkpoint": str(TINY_FOMM), "generator.backend": "torch"},
    "liveportrait": {"generator.checkpoint": str(TINY_LIVEPORTRAIT), "generator.backend": "torch"},
}


@pytest.fixture(scope="module")
def driver_observations(model_path):
    """The first 12 frames of the d12 clip with their landmarks: a calibration window and moving frames."""
    from avatarcam.landmarks import FaceLandmarker

    observed = []
    with FaceLandmarker(model_path=model_path, mode="video") as landmarker:
        for i, frame in enumerate(itertools.islice(iter_frames(str(D12)), 12)):
            face = landmarker.detect(frame, i * 40)
            observed.append(Observed(frame=Frame(frame, i, i / 25.0), face=face))
    assert sum(o.face is not None for o in observed) >= 10, "the fixture clip should show a face"
    return observed


@pytest.fixture(scope="module", params=sorted(GENERATORS))
def reenactor(request, one_torch_thread):
    name = request.param
    config = load_config(None, {"generator.model": name, **CONTRACT_OVERRIDES.get(name, {})})
    built = build_reenactor(config.generator, config.motion)
    yield built
    built.close()


def test_identity_members(reenactor):
    assert reenactor.name in GENERATORS
    assert reenactor.canvas_size == GeneratorConfig().canvas_size
    assert isinstance(reenactor.runtime, str) and reenactor.runtime
    assert isinstance(reenactor.needs_landmarks, bool)


def test_render_draws_into_the_given_canvas_before_and_after_calibration(reenactor, portrait_avatar,
                                                                         driver_observations):
    size = reenactor.canvas_size
    prepared = reenactor.prepare(portrait_avatar)
    frame_shape = driver_observations[0].frame.image_bgr.shape
    shape = output_shape(reenactor, frame_shape)
    # The square canvas, or (a family that draws on the driver frame) the frame's own size.
    assert shape == (frame_shape if family(reenactor.name).draws_on_frame else (size, size, 3))
    out = np.zeros(shape, np.uint8)
    result = reenactor.render(prepared, driver_observations[0], None, 0.0, out)
    assert result is out and out.dtype == np.uint8 and out.shape == shape
    assert out.std() > 10, "an uncalibrated render shows the avatar at rest, not a blank canvas"

    neutral = reenactor.neutral_from(driver_observations[:3])
    reenactor.reset()
    frames = []
    for observed in driver_observations[3:]:
        timings: dict[str, float] = {}
        reenactor.render(prepared, observed, neutral, observed.frame.capture_time_s, out, timings)
        assert timings and all(v >= 0 for v in timings.values()), "stage durations in ms are reported"
        frames.append(out.copy())
    # The driver moves across these frames, so the avatar does too.
    assert max(float(np.abs(f.astype(int) - frames[0].astype(int)).mean()) for f in frames[1:]) > 0.05

    lost = reenactor.render(prepared, None, neutral, 1.0, out)  # no observation at all: a picture, never an error
    assert lost is out and out.std() > 10


def test_motion_settings_change_while_running(reenactor):
    settings = reenactor.motion.settings
    assert isinstance(settings, MotionSettings)
    stronger = settings.with_intensity_step(0.1)
    reenactor.motion.update_settings(stronger)
    assert reenactor.motion.settings == stronger
    reenactor.motion.update_settings(settings)


def test_an_avatar_matches_itself_best(reenactor, portrait_avatar, astronaut_avatar, image_landmarker):
    prepared = [reenactor.prepare(astronaut_avatar), reenactor.prepare(portrait_avatar)]
    canvas = portrait_avatar.canvas_bgr
    observed = Observed(frame=Frame(canvas.copy(), 0, 0.0), face=image_landmarker.detect(canvas))
    assert reenactor.best_match(prepared, observed) == 1
    assert reenactor.best_match([], observed) is None


def test_close_twice(reenactor):
    reenactor.close()
    reenactor.close()


def test_names_come_from_the_registry_everywhere():
    config_choices = GeneratorConfig.__dataclass_fields__["model"].metadata["choices"]
    assert tuple(config_choices) == tuple(GENERATORS)
    model_flag = next(a for a in build_parser()._actions if "--model" in a.option_strings)
    assert tuple(model_flag.choices) == tuple(GENERATORS)
    assert set(EXPORTABLE_MODELS) == {m for f in GENERATORS.values() for m in f.exports}
    assert all(ref.startswith(f"avatarcam.generators.{f.name}.") for f in GENERATORS.values()
               for ref in f.exports.values())


def test_an_unknown_generator_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="'morph' is not one of mesh, fomm, liveportrait, swap"):
        family("morph")
    with pytest.raises(ConfigError, match="generator.model"):
        load_config(None, {"generator.model": "morph"})
