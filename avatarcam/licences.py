"""The licences of every model FaceMimic uses or loads, for `run.py --check` and the README's ethics section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelLicence:
    """One model: who uses it, under which terms, and where it comes from."""

    name: str
    used_by: str
    """FaceMimic modes that load it."""
    terms: str
    """Licence of the code and of the weights, as their publishers state them."""
    source: str
    obtained: str
    """How it gets onto the machine: fetched by the installer, part of FaceMimic, or the user's own download."""


MODEL_LICENCES: tuple[ModelLicence, ...] = (
    ModelLicence(
        name="MediaPipe Face Landmarker (face_landmarker.task)",
        used_by="every mode (face landmarks, avatar preparation)",
        terms="Apache-2.0 (Google's model card and the MediaPipe repository)",
        source="https://storage.googleapis.com/mediapipe-models/face_landmarker/",
        obtained="fetched by tools/install.py",
    ),
    ModelLicence(
        name="FaceMimic mesh and swap generators",
        used_by="mesh, swap",
        terms="no trained weights: geometry on MediaPipe's landmarks, part of FaceMimic's own code",
        source="avatarcam/generators/mesh, avatarcam/generators/swap",
        obtained="part of FaceMimic",
    ),
    ModelLicence(
        name="First Order Motion Model checkpoints (vox-cpk, vox-adv-cpk)",
        used_by="fomm",
        terms="the repository was CC BY-NC 4.0 (non-commercial) when the checkpoints were published and is MIT "
              "since 2023; treat the checkpoints as non-commercial unless their authors grant more",
        source="https://github.com/AliaksandrSiarohin/first-order-model",
        obtained="you bring it (FaceMimic never downloads it)",
    ),
    ModelLicence(
        name="LivePortrait weights (appearance, motion, warping, SPADE generator, stitching)",
        used_by="liveportrait",
        terms="MIT (code and these weights, KwaiVGI); LivePortrait's InsightFace face detector is non-commercial "
              "research only, and FaceMimic does not load it (it crops with MediaPipe)",
        source="https://github.com/KwaiVGI/LivePortrait, https://huggingface.co/KwaiVGI/LivePortrait",
        obtained="downloaded on request by `python tools/install.py --liveportrait`",
    ),
)
"""Every model, in the order the README lists them."""


def licence_lines() -> list[str]:
    """One line per model: name, modes, terms, and how it gets onto the machine."""
    return [f"{m.name} [{m.used_by}]: {m.terms}; {m.obtained} ({m.source})" for m in MODEL_LICENCES]
