"""Load LivePortrait's published weights (a `pretrained_weights/liveportrait/` folder) safely and strictly.

Layout (as published by KwaiVGI, and as `tools/install.py --liveportrait` writes it):

    <folder>/base_models/appearance_feature_extractor.pth   bare state dict (F)
    <folder>/base_models/motion_extractor.pth               bare state dict (M)
    <folder>/base_models/warping_module.pth                 bare state dict (W)
    <folder>/base_models/spade_generator.pth                bare state dict (G)
    <folder>/retargeting_models/stitching_retargeting_module.pth
                                                            {retarget_shoulder, retarget_mouth, retarget_eye}: the
                                                            stitching, lip and eye MLPs' state dicts (keys may carry
                                                            DDP's `module.`)

Each file may instead be `.safetensors` with the same stem (community mirrors publish the same tensors that way; the
retargeting file is then flat, `<entry>.<key>` or `<entry>_<key>`). `.pth` files are read with
`torch.load(..., weights_only=True)` only, so they can hold tensors and plain containers but never code.

Widths come from the tensors' shapes (model.infer_*_config); then every file must match the modules built from them
key for key and shape for shape, and the five must agree with each other (keypoint count, feature channels, depth,
generator width). Every failure is a ModelFileError naming the file, the first offending keys and the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from avatarcam.errors import ModelFileError

__all__ = [
    "BASE_MODELS",
    "LivePortraitModels",
    "RETARGETING_ENTRIES",
    "find_weight_file",
    "load_liveportrait",
    "read_state_dict",
    "resolve_folder",
]

BASE_MODELS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
RETARGETING_FILE = "stitching_retargeting_module"
RETARGETING_ENTRIES = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}
"""Our name -> the published file's top-level entry."""
EXTENSIONS = (".pth", ".safetensors")
_MAX_LISTED = 5
KEY_CHARS = 16

FIX_DOWNLOAD = (
    "download the official weights with `python tools/install.py --liveportrait` (or copy LivePortrait's "
    "pretrained_weights/liveportrait folder) and point --checkpoint at that folder"
)
NOT_SHIPPED = "FaceMimic never ships LivePortrait weights (MIT-licensed, published by KwaiVGI on Hugging Face)"


def resolve_folder(value: str | os.PathLike[str] | None) -> Path:
    """The weights folder from generator.checkpoint: `.../liveportrait` itself, or a folder holding `liveportrait/`."""
    if value is None or not str(value).strip():
        raise ModelFileError(
            "generator.model is liveportrait but generator.checkpoint is not set: point it at the weights folder, "
            f"e.g. `--checkpoint pretrained_weights/liveportrait`. {NOT_SHIPPED}; {FIX_DOWNLOAD}"
        )
    folder = Path(value).expanduser()
    if not (folder / "base_models").is_dir() and (folder / "liveportrait" / "base_models").is_dir():
        folder = folder / "liveportrait"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ModelFileError(f"LivePortrait weights folder {folder} {what}: {FIX_DOWNLOAD}. {NOT_SHIPPED}")
    return folder


def find_weight_file(folder: Path, sub: str, stem: str) -> Path:
    """<folder>/<sub>/<stem>.pth or .safetensors; ModelFileError naming both candidates when neither exists."""
    candidates = [folder / sub / f"{stem}{ext}" for ext in EXTENSIONS]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelFileError(
        f"LivePortrait weight file missing: neither {candidates[0]} nor {candidates[1].name} exists in "
        f"{candidates[0].parent}: {FIX_DOWNLOAD}"
    )


def _load_raw(path: Path) -> Mapping[str, Any]:
    """The file's top-level mapping (tensors on the CPU), or ModelFileError for a damaged or unsafe file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ModelFileError(
                f"{path} is a .safetensors file but the safetensors package is not installed: "
                "`pip install safetensors` (it is in requirements.txt)"
            ) from error
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises SafetensorError, OSError, ... for damaged files
            raise ModelFileError(f"{path} is not a readable safetensors file ({error}): {FIX_DOWNLOAD}") from error
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ... for damaged or unsafe files
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsafe:
            raise ModelFileError(
                f"{path} stores a Python object ({unsafe.group(1)}) besides tensors; FaceMimic loads weights with "
                f"torch.load(weights_only=True) only, because unpickling objects can run code: {FIX_DOWNLOAD}"
            ) from error
        raise ModelFileError(f"{path} is damaged or not a PyTorch file ({message}): {FIX_DOWNLOAD}") from error
    if not isinstance(data, Mapping):
        raise ModelFileError(
            f"{path} holds a {type(data).__name__}, expected a state dict (a mapping of names to tensors): "
            f"{FIX_DOWNLOAD}"
        )
    return data


def _strip_ddp(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove every `module.` (LivePortrait's remove_ddp_dumplicate_key deletes each occurrence, not only a prefix)."""
    return {k.replace("module.", ""): v for k, v in state.items()}


def read_state_dict(path: Path) -> dict[str, Any]:
    """A base-model file's state dict (tensors only, CPU)."""
    data = _load_raw(path)
    bad = [k for k, v in data.items() if not hasattr(v, "shape")]
    if bad:
        raise ModelFileError(
            f"{path} is not a bare state dict: entries {bad[:_MAX_LISTED]} are not tensors "
            f"(expected the published base-model file): {FIX_DOWNLOAD}"
        )
    return dict(data)


def read_retargeting(path: Path) -> dict[str, dict[str, Any]]:
    """{'stitching', 'lip', 'eye'} -> prefix-free state dicts from the published retargeting file (.pth or flat)."""
    data = _load_raw(path)
    out: dict[str, dict[str, Any]] = {}
    for ours, entry in RETARGETING_ENTRIES.items():
        if entry in data and isinstance(data[entry], Mapping):
            out[ours] = _strip_ddp(data[entry])
            continue
        flat = {k[len(entry) + 1:]: v for k, v in data.items() if k.startswith((entry + ".", entry + "_"))}
        if not flat:
            raise ModelFileError(
                f"{path} has no {entry!r} entry (the {ours} network); it has {sorted(data)[:_MAX_LISTED]}: expected "
                f"LivePortrait's stitching_retargeting_module with {', '.join(RETARGETING_ENTRIES.values())}: "
                f"{FIX_DOWNLOAD}"
            )
        out[ours] = _strip_ddp(flat)
    return out


def _check_match(path: Path, label: str, module: Any, state: Mapping[str, Any]) -> None:
    """ModelFileError naming the first missing, unexpected and mis-shaped keys, if any."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, first {missing[:_MAX_LISTED]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, first {unexpected[:_MAX_LISTED]}")
    if shapes:
        problems.append(f"{len(shapes)} keys of the wrong shape, first {shapes[:_MAX_LISTED]}")
    if problems:
        raise ModelFileError(
            f"{path} does not hold LivePortrait's {label}: {'; '.join(problems)}. Is it the right file (or a file of "
            f"another LivePortrait variant, e.g. the animal model)? {FIX_DOWNLOAD}"
        )


@dataclass(frozen=True)
class LivePortraitModels:
    """The five networks in eval mode (torch, CPU, float32), where they came from, and a weights hash."""

    appearance: Any
    motion: Any
    warping: Any
    generator: Any
    stitching: Any
    eye: Any
    lip: Any
    folder: Path
    files: dict[str, Path]
    key: str
    """First 16 hex digits of a hash over every tensor: names the ONNX export folder."""

    @property
    def num_kp(self) -> int:
        return self.motion.config.num_kp

    def without_modules(self) -> LivePortraitModels:
        """The same description without the torch modules, so their memory (520 MB published) can be freed."""
        return replace(self, appearance=None, motion=None, warping=None, generator=None, stitching=None, eye=None,
                       lip=None)


def _weights_key(models: Mapping[str, Any]) -> str:
    """First 16 hex digits of sha256 over every network's export.source_hash (weights and model code)."""
    from avatarcam.backends.export import source_hash

    digest = hashlib.sha256()
    for name, module in models.items():
        digest.update(name.encode())
        digest.update(source_hash(module).encode())
    return digest.hexdigest()[:KEY_CHARS]


def build_and_load(label: str, path: Path, state: Mapping[str, Any]) -> Any:
    """Build one network from its state dict's shapes, check the keys and shapes, and load it (eval mode)."""
    from avatarcam.generators.liveportrait import model as m

    builders = {
        "appearance_feature_extractor": (m.infer_appearance_config, m.AppearanceFeatureExtractor),
        "motion_extractor": (m.infer_motion_config, m.MotionExtractor),
        "warping_module": (m.infer_warping_config, m.WarpingNetwork),
        "spade_generator": (m.infer_generator_config, m.SPADEDecoder),
        "stitching": (m.infer_mlp_config, m.StitchingRetargetingNetwork),
        "lip": (m.infer_mlp_config, m.StitchingRetargetingNetwork),
        "eye": (m.infer_mlp_config, m.StitchingRetargetingNetwork),
    }
    infer, cls = builders[label]
    try:
        config = infer(state)
        module = cls(config)
    except (KeyError, IndexError, ValueError, RuntimeError, ZeroDivisionError) as error:
        sample = list(state)[:_MAX_LISTED]
        raise ModelFileError(
            f"{path} does not hold LivePortrait's {label}: cannot read its widths ({type(error).__name__}: {error}); "
            f"its first keys are {sample}: {FIX_DOWNLOAD}"
        ) from error
    _check_match(path, label, module, state)
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def _check_consistent(models: dict[str, Any], files: dict[str, Path]) -> None:
    """The five networks must fit together (keypoints, feature channels, depth, widths)."""
    f, mo, w, g = (models[n].config for n in BASE_MODELS)
    k = mo.num_kp
    checks = [
        ("warping_module", f"keypoints {w.num_kp}", f"{k} (motion extractor)", w.num_kp == k),
        ("warping_module", f"feature channels {w.feature_channel}",
         f"{f.reshape_channel} (appearance extractor)", w.feature_channel == f.reshape_channel),
        ("warping_module", f"depth {w.reshape_depth}", f"{f.reshape_depth} (appearance extractor)",
         w.reshape_depth == f.reshape_depth),
        ("spade_generator", f"input channels {g.input_channels}", f"{w.out_channels} (warping module)",
         g.input_channels == w.out_channels),
        ("stitching", f"input {models['stitching'].mlp[0].in_features}", f"{6 * k} (2 x 3 x {k} keypoints)",
         models["stitching"].mlp[0].in_features == 6 * k),
        ("eye", f"input {models['eye'].mlp[0].in_features}", f"{3 * k + 3}",
         models["eye"].mlp[0].in_features == 3 * k + 3),
        ("lip", f"input {models['lip'].mlp[0].in_features}", f"{3 * k + 2}",
         models["lip"].mlp[0].in_features == 3 * k + 2),
    ]
    for name, seen, expected, ok in checks:
        if not ok:
            raise ModelFileError(
                f"{files[name]}: {name} has {seen}, expected {expected}: the files come from different models; "
                f"{FIX_DOWNLOAD}"
            )


def load_liveportrait(folder: str | os.PathLike[str]) -> LivePortraitModels:
    """Load and check all five networks from a weights folder (see the module docstring for the layout)."""
    root = resolve_folder(folder)
    files: dict[str, Path] = {}
    models: dict[str, Any] = {}
    for name in BASE_MODELS:
        path = find_weight_file(root, "base_models", name)
        state = read_state_dict(path)
        files[name] = path
        models[name] = build_and_load(name, path, state)
    path = find_weight_file(root, "retargeting_models", RETARGETING_FILE)
    for ours, state in read_retargeting(path).items():
        files[ours] = path
        models[ours] = build_and_load(ours, path, state)
    _check_consistent(models, files)
    return LivePortraitModels(
        appearance=models["appearance_feature_extractor"], motion=models["motion_extractor"],
        warping=models["warping_module"], generator=models["spade_generator"], stitching=models["stitching"],
        eye=models["eye"], lip=models["lip"], folder=root, files=files, key=_weights_key(models),
    )
