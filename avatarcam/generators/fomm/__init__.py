"""The First Order Motion Model (Avatarify's generator) from the user's own checkpoint.

model.py (keypoint detector and occlusion-aware generator in torch), checkpoint.py (weights_only loading of the
published checkpoints), export.py (the three ONNX exports and their cache), reenactor.py (relative motion, crops and
runtimes behind generators.base.Reenactor).
"""

from __future__ import annotations

from typing import Any

from avatarcam.generators.base import GeneratorFamily, GeneratorSections, require_torch


def _build(sections: GeneratorSections) -> Any:
    require_torch("--model fomm")
    from avatarcam.generators.fomm.reenactor import build_fomm_reenactor

    return build_fomm_reenactor(sections)


FAMILY = GeneratorFamily(
    name="fomm",
    summary="First Order Motion Model from your own checkpoint",
    build=_build,
    exports={
        "fomm_kp_detector": "avatarcam.generators.fomm.export:kp_detector_recipe",
        "fomm_source_encoder": "avatarcam.generators.fomm.export:source_encoder_recipe",
        "fomm_frame_generator": "avatarcam.generators.fomm.export:frame_generator_recipe",
    },
)
