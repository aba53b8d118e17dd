"""LivePortrait (KwaiVGI, 2024; MIT code and weights) as a FaceMimic generator: FaceMimic's own implementation of
the five networks (model.py), a strict loader for the published weights folder (checkpoint.py), the keypoint
arithmetic of the original pipeline (motion.py), a plugin-free volumetric sampler for TensorRT (sampler.py), ONNX
export split by cost (export.py) and the live reenactor (reenactor.py).

Importing this package is cheap: torch is imported by the submodules that need it.
"""

from __future__ import annotations

from typing import Any

from avatarcam.generators.base import GeneratorFamily, GeneratorSections, require_torch


def _build(sections: GeneratorSections) -> Any:
    require_torch("--model liveportrait")
    from avatarcam.generators.liveportrait.reenactor import build_liveportrait_reenactor

    return build_liveportrait_reenactor(sections)


FAMILY = GeneratorFamily(
    name="liveportrait",
    summary="LivePortrait (KwaiVGI, MIT) from its weights folder",
    build=_build,
    exports={
        "lp_appearance": "avatarcam.generators.liveportrait.export:appearance_recipe",
        "lp_motion": "avatarcam.generators.liveportrait.export:motion_recipe",
        "lp_warp_generate": "avatarcam.generators.liveportrait.export:warp_generate_recipe",
        "lp_stitching": "avatarcam.generators.liveportrait.export:stitching_recipe",
        "lp_retargeting": "avatarcam.generators.liveportrait.export:retargeting_recipe",
    },
)
