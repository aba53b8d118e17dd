"""An exported ONNX file checked against its torch module: both run on the same inputs, outputs compared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from avatarcam.backends.base import shape_text
from avatarcam.backends.export import ExportedModel, export_fix, module_device_args, ordered_inputs
from avatarcam.backends.onnxruntime_runner import OnnxRuntimeRunner
from avatarcam.errors import EngineError


def verify_onnx(
    exported: ExportedModel, module: Any, inputs: Mapping[str, Any], *, atol: float = 1e-4
) -> dict[str, float]:
    """Run exported on ONNX Runtime CPU and module on torch; return max abs error per output, EngineError past atol."""
    import torch

    feed = {
        name: (value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
        for name, value in inputs.items()
    }
    with OnnxRuntimeRunner(onnx_path=exported.onnx_path, device="cpu") as runner:
        got = {k: np.array(v) for k, v in runner.run(feed).items()}  # copy: runner outputs may be reused buffers
    args = module_device_args(module, ordered_inputs(feed, exported.io.input_names))
    with torch.inference_mode():
        expected = module(*args)
    if isinstance(expected, torch.Tensor):
        expected = (expected,)
    expected_np = [t.detach().cpu().numpy() for t in expected]
    if len(expected_np) != len(exported.io.outputs):
        raise EngineError(
            f"module returns {len(expected_np)} tensors but {exported.onnx_path.name} has "
            f"{len(exported.io.outputs)} outputs: {export_fix(exported.onnx_path)}"
        )
    errors: dict[str, float] = {}
    for spec, want in zip(exported.io.outputs, expected_np):
        have = got[spec.name]
        if have.shape != want.shape:
            raise EngineError(
                f"output {spec.name!r} of {exported.onnx_path.name} has shape {shape_text(have.shape)} on ONNX "
                f"Runtime but {shape_text(want.shape)} on torch: {export_fix(exported.onnx_path)}"
            )
        diff = np.abs(have.astype(np.float64) - want.astype(np.float64))
        errors[spec.name] = float(diff.max()) if diff.size else 0.0
    worst = max(errors, key=errors.__getitem__, default=None)
    if worst is not None and not errors[worst] <= atol:
        detail = ", ".join(f"{k}={v:.3g}" for k, v in errors.items())
        raise EngineError(
            f"{exported.onnx_path.name} differs from torch: max abs error of {worst!r} is {errors[worst]:.3g} but at "
            f"most {atol:g} was expected ({detail}): check the module for ops the exporter approximates"
        )
    return errors
