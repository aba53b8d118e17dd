"""The built-in landmark-driven generator: a dense warp of the avatar driven by MediaPipe landmarks.

model.py (MeshGenerator: the numpy/cv2 warp), torch_warp.py (the same warp as a torch module for ONNX Runtime,
torch and TensorRT), reenactor.py (motion transfer + warp behind generators.base.Reenactor).
"""

from __future__ import annotations

from typing import Any

from avatarcam.generators.base import GeneratorFamily, GeneratorSections


def _build(sections: GeneratorSections) -> Any:
    from avatarcam.generators.mesh.reenactor import build_mesh_reenactor

    return build_mesh_reenactor(sections)


FAMILY = GeneratorFamily(
    name="mesh",
    summary="built-in landmark warp (CPU, nothing to download)",
    build=_build,
    exports={"mesh_warp": "avatarcam.generators.mesh.torch_warp:export_recipe"},
)
