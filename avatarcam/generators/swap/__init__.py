"""Face swap: the camera picture itself, with the current avatar's face mapped onto every face in it.

geometry.py (the avatar's face-mesh triangles onto the user's: one dense backward map per face; the avatar's face
shape on the user's, both turned to the camera), colour.py (Lab mean and spread matched to the user's lighting,
smoothed over time), occlusion.py (a per-triangle model of the user's own face: where something covers it, the
swap fades out), reenactor.py (per-face map, colour, feathered blend behind generators.base.Reenactor). CPU only
(numpy/cv2), nothing to download.
"""

from __future__ import annotations

from typing import Any

from avatarcam.generators.base import GeneratorFamily, GeneratorSections


def _build(sections: GeneratorSections) -> Any:
    from avatarcam.generators.swap.reenactor import build_swap_reenactor

    return build_swap_reenactor(sections)


FAMILY = GeneratorFamily(
    name="swap",
    summary="face swap: your camera picture with the avatar's face on yours (CPU, nothing to download)",
    build=_build,
    draws_on_frame=True,
    multi_face=True,
)
