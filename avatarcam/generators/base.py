"""The generator contract: every member the pipeline, the app, the offline renderer and the tools use.

A generator family is one folder under avatarcam/generators/ whose __init__.py defines FAMILY, a GeneratorFamily;
generators/__init__.py lists the families in GENERATORS. Nobody probes a reenactor with hasattr/getattr: what a
caller needs is here, and tests/test_generator_contract.py drives every registered family through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from avatarcam.avatars import Avatar
    from avatarcam.motion import MotionSettings
    from avatarcam.types import Observed

PreparedT = TypeVar("PreparedT")
NeutralT = TypeVar("NeutralT")


class MotionControls(Protocol):
    """The user's live motion settings (intensity, smoothing, lost-face timing) as a reenactor applies them."""

    @property
    def settings(self) -> MotionSettings:
        """The settings in force."""
        ...

    def update_settings(self, settings: MotionSettings) -> None:
        """Apply new settings from the next frame on (the intensity hotkeys)."""


class Reenactor(Protocol[PreparedT, NeutralT]):
    """One generator: turns (avatar, driver frame, neutral) into an output canvas.

    PreparedT is what prepare() computes once per avatar; NeutralT is the driver's neutral pose from calibration.
    The live pipeline, tools/render.py and the benchmarks drive this protocol only, so all produce the same frames.
    """

    name: str
    """The registry name ("mesh", "fomm")."""
    canvas_size: int
    """Side of the square output canvas in pixels (families that draw on the driver frame: of the avatar canvas
    prepare() is given; their output has the driver frame's size, see GeneratorFamily.draws_on_frame)."""

    @property
    def runtime(self) -> str:
        """Where it runs, for logs and benchmarks, e.g. 'numpy/cv2 (CPU)' or 'onnxruntime-cpu'."""
        ...

    @property
    def needs_landmarks(self) -> bool:
        """False when render() ignores observed.face (then callers may skip the landmark model)."""
        ...

    @property
    def motion(self) -> MotionControls:
        """The user's motion settings (intensity, smoothing) and how to change them while running."""
        ...

    def prepare(self, avatar: Avatar) -> PreparedT:
        """Everything computed once per avatar (may take a second: run it off the render thread)."""
        ...

    def neutral_from(self, window: list[Observed]) -> NeutralT:
        """The driver's neutral pose from a calibration window of observations."""
        ...

    def render(self, prepared: PreparedT, observed: Observed | None, neutral: NeutralT | None, time_s: float,
               out: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Draw the avatar for this driver frame into `out` ((S, S, 3) uint8 BGR, S = canvas_size) and return it.

        A family with draws_on_frame gets `out` of the driver frame's shape (H, W, 3) instead (see output_shape).

        `time_s` is the driver frame's time in seconds (smoothing, lost-face easing); `neutral` None means not
        calibrated yet (the avatar shows at rest). Stage durations in ms are added to `timings` when given.
        """
        ...

    def reset(self) -> None:
        """Forget temporal state (after recalibration or an avatar switch)."""

    def best_match(self, prepared: Sequence[PreparedT], observed: Observed) -> int | None:
        """Index of the prepared avatar that best matches the driver's face in `observed`, or None if none does."""
        ...

    def close(self) -> None:
        """Release runtimes; idempotent."""


@dataclass(frozen=True)
class GeneratorSections:
    """The config sections a generator is built from: `generator` (GeneratorConfig) and `motion` (MotionConfig)."""

    generator: Any
    motion: Any


@dataclass(frozen=True)
class GeneratorFamily:
    """One registered generator family: how to build it and which models it exports to ONNX."""

    name: str
    summary: str
    """One line for config.yaml's documentation of generator.model."""
    build: Callable[[GeneratorSections], Reenactor[Any, Any]]
    """Builds the reenactor from the config sections; imports its heavy modules lazily."""
    exports: Mapping[str, str] = field(default_factory=dict)
    """Model name -> "avatarcam.generators.<family>.<module>:<function>" returning a backends.models.ExportRecipe;
    strings, so that nothing (no torch, no weights) is imported until that model is exported or run on torch."""
    draws_on_frame: bool = False
    """True when the output is the driver frame itself with the avatar drawn on it (face swap): render()'s `out`
    then has the driver frame's (H, W, 3) shape, not (canvas_size, canvas_size, 3). output_shape() says which."""
    multi_face: bool = False
    """True when render() uses every face in Observed.faces (the landmarker then looks for generator.max_faces
    faces); False: the first face only."""


def require_torch(what: str) -> None:
    """Raise ConfigError with the install command when torch (the optional `torch` extra) is missing."""
    import importlib.util

    from avatarcam.errors import ConfigError

    if importlib.util.find_spec("torch") is None:
        raise ConfigError(f"{what} needs torch, which is not installed (the built-in CPU generator does not need "
                          "it): run `python tools/install.py --torch` (or pip install -r requirements-torch.txt)")
