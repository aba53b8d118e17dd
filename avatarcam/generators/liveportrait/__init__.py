"""LivePortrait (KwaiVGI, 2024; MIT code and weights) as a FaceMimic generator: FaceMimic's own implementation of
the five networks (model.py), a strict loader for the published weights folder (checkpoint.py), the keypoint
arithmetic of the original pipeline (motion.py), a plugin-free volumetric sampler for TensorRT (sampler.py), ONNX
export split by cost (export.py) and the live reenactor (reenactor.py).

Importing this package is cheap: torch is imported by the submodules that need it.
"""
