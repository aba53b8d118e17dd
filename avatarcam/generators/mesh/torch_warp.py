"""The mesh generator's per-frame warp as static tensor ops (MeshWarp), and a runner for it on any backend.

MeshWarp reproduces `MeshGenerator.backward_maps` + `cv2.resize` + `cv2.remap` of `MeshGenerator.generate` (the
eyelids and the mouth interior stay on the CPU in numpy, after the warp): field = weights @ displacements; the same
unfold passes (fold mask from the same finite differences as `np.gradient`, cv2's Gaussian taps); Newton inversion
with bilinear sampling by `grid_sample`; the residual blend; a bilinear upsample to the canvas; one `grid_sample` of
the avatar. The numpy path's data-dependent exits (`if not folded.any(): break`, `if bad.any()`) become fixed passes
whose blend weight is exactly zero when nothing folds, so the graph is static and the result the same.

Conventions, chosen so that the cv2 path's numbers come out:
- Canvas pixel coordinates have pixel centres at integers (cv2.remap). A canvas x is the grid_sample coordinate
  u = (2x + 1) / S - 1 with align_corners=False, which unnormalises to x on the (S, S) image and to
  (x + 0.5) * G / S - 0.5 on the (G, G) grid: the very coordinates model.py hands cv2.remap, so one normalisation
  serves both resolutions. padding_mode="border" clamps to the edge pixels = cv2.BORDER_REPLICATE for bilinear.
- F.interpolate(bilinear, align_corners=False) has cv2.resize INTER_LINEAR's half-pixel centres and edge clamp.
- Gaussian blurs are (G, G) matrices holding cv2.getGaussianKernel's taps with BORDER_REFLECT_101 folded in.
- Gradients are a (G, G) difference matrix equal to np.gradient's stencils, one-sided ends included (bit for bit
  when canvas / grid is a power of two, as for every default size).
- Positions are carried as offsets from the grid points (float64-made identity added once, in normalised units):
  absolute pixel positions up to 512 carry float32 rounding of 3e-5 px, which on a noise image alone is 0.01 grey.

Where it differs from the cv2 path. grid_sample interpolates at the exact float position; cv2.remap of uint8 blends
in fixed point, and OpenCV 4.x also rounds positions to 1/32 px (the 5.0 installed here interpolates float images
at the exact position). That 1/32 rounding is deliberately not emulated: ONNX Runtime and torch would then differ by
a whole 1/32 px wherever float noise straddles a rounding boundary. Measured on the portrait fixture
(tests/test_mesh_torch.py) with head turns up to 30 degrees and an open mouth: mean 0.00005 grey levels, 99th
percentile 0, max 1 (rounding ties). Thresholds (fold mask, Newton's det > 0.05, the residual check) decide per
grid point, so where the field folds so much that Newton cannot converge (yaw 60, scale 1.4) float summation
order matters: there ONNX Runtime and torch differ by up to a few grey levels in ~0.2% of pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from avatarcam import landmarks as lm
from avatarcam.backends.base import ModelIO, Runner, TensorSpec
from avatarcam.backends.buffers import StagingBuffers, StagingSlot
from avatarcam.backends.hardware import HardwareFacts, detect_hardware
from avatarcam.backends.models import ExportRecipe
from avatarcam.backends.selection import BACKEND_CHOICES, ModelSpec, open_backend
from avatarcam.errors import ConfigError, EngineError, ModelFileError
from avatarcam.generators.mesh.model import FACE_CONTROL, FOLD_DET, UNFOLD_PASSES, MeshSettings, PreparedMesh
from avatarcam.paths import ENGINES_DIR

_LOG = logging.getLogger("avatarcam.generators")

MODEL_NAME = "mesh_warp"
BORDER_POINTS = 4 * 9 - 4
"""Fixed canvas-border control points of MeshGenerator.prepare: 9 per side, corners shared."""
NUM_CONTROL_POINTS = len(FACE_CONTROL) + 2 * len(lm.FACE_OVAL) + BORDER_POINTS
"""N of PreparedMesh.weights: face points, head ring and outer ring (one point per oval point each), border."""
INPUT_NAMES = ("image", "weights", "displacements")
OUTPUT_NAMES = ("warped",)
NEWTON_MIN_DET = 0.05
"""Newton steps are taken only where the sampled Jacobian's determinant exceeds this (as in model.py)."""
UNFOLD_KERNEL = 9
RESIDUAL_KERNEL = 7


def model_io(*, settings: MeshSettings) -> ModelIO:
    """Input/output tensors of MeshWarp for these settings (all dims fixed)."""
    size, grid = settings.canvas_size, settings.grid_size
    return ModelIO(
        inputs=(
            TensorSpec(name="image", shape=(1, 3, size, size), dtype="float32"),
            TensorSpec(name="weights", shape=(grid * grid, NUM_CONTROL_POINTS), dtype="float32"),
            TensorSpec(name="displacements", shape=(NUM_CONTROL_POINTS, 2), dtype="float32"),
        ),
        outputs=(TensorSpec(name="warped", shape=(1, 3, size, size), dtype="float32"),),
    )


def image_to_input(image_bgr: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """(S, S, 3) uint8 BGR -> MeshWarp's (1, 3, S, S) float32 BGR in [0, 255]; written into `out` when given."""
    if out is None:
        out = np.empty((1, 3, *image_bgr.shape[:2]), np.float32)
    np.copyto(out[0], image_bgr.transpose(2, 0, 1), casting="safe")
    return out


def _blur_matrix(ksize: int, length: int) -> torch.Tensor:
    """(L, L) matrix M with M @ x = cv2.GaussianBlur(ksize, sigma 0) of x along one axis, border reflect-101.

    Two small matmuls per blur replace pad + two convolutions: fewer, larger kernels on every runtime, and no
    reflect-mode Pad in the graph.
    """
    # cv2.GaussianBlur(ksize, sigma=0) uses exactly these taps (its fixed small-kernel table for 7 and 9).
    taps = cv2.getGaussianKernel(ksize, 0, ktype=cv2.CV_32F).reshape(-1)
    radius = ksize // 2
    matrix = np.zeros((length, length), np.float32)
    for i in range(length):
        for k, tap in enumerate(taps):
            j = abs(i + k - radius)  # reflect-101 below 0 ...
            j = 2 * (length - 1) - j if j > length - 1 else j  # ... and past the end
            matrix[i, j] += tap
    return torch.from_numpy(matrix)


def _difference_matrix(length: int, step: float) -> torch.Tensor:
    """(L, L) matrix D with D @ f = np.gradient(f, step) along one axis: central inside, one-sided at the ends.

    Its entries are +-1/(2 step) and +-1/step; for the usual step of 4 px (canvas / grid) they are powers of two, so
    the products are exact and the result is bit for bit np.gradient's.
    """
    matrix = np.zeros((length, length), np.float64)
    for i in range(1, length - 1):
        matrix[i, i + 1], matrix[i, i - 1] = 0.5 / step, -0.5 / step
    matrix[0, 1], matrix[0, 0] = 1.0 / step, -1.0 / step
    matrix[-1, -1], matrix[-1, -2] = 1.0 / step, -1.0 / step
    return torch.from_numpy(matrix.astype(np.float32))


class MeshWarp(torch.nn.Module):
    """The per-frame mesh warp: (image, weights, displacements) -> warped image; static graph, exportable.

    image: (1, 3, S, S) float32, any channel order (BGR here), values in [0, 255].
    weights: (G*G, N) float32 PreparedMesh.weights. displacements: (N, 2) float32 canvas pixels (x, y).
    Returns warped: (1, 3, S, S) float32, same channel order and range as image, not rounded.
    """

    def __init__(self, *, settings: MeshSettings | None = None) -> None:
        super().__init__()
        settings = settings or MeshSettings()
        size, grid = settings.canvas_size, settings.grid_size
        self.canvas_size = size
        self.grid_size = grid
        self.newton_steps = settings.newton_steps
        self.step_px = size / grid
        # The numpy path carries absolute pixel positions (up to S, float32 ulp 3e-5 px at 512); this module carries
        # offsets from the grid points instead and adds the identity once, in grid_sample's normalised coordinates,
        # from constants computed in float64. Two runtimes then round small numbers differently, not large ones:
        # ONNX Runtime's coarse maps stay within ~3e-5 px of torch's on the fixture poses (~1e-4 px before).
        centers = (np.arange(grid, dtype=np.float64) + 0.5) * size / grid - 0.5
        identity = np.stack(np.meshgrid(centers, centers))[None]  # (1, 2, G, G): x, y canvas pixels
        blurred_identity = cv2.GaussianBlur(identity[0].transpose(1, 2, 0), (RESIDUAL_KERNEL, RESIDUAL_KERNEL), 0)
        # cv2.resize of an absolute map upsamples the identity too: linear inside, clamped to the first and last
        # grid centre within half a grid step of the canvas edge, so the same upsampled identity is added here.
        fine = np.clip((np.arange(size, dtype=np.float64) + 0.5) * grid / size - 0.5, 0.0, grid - 1.0)
        fine = (fine + 0.5) * size / grid - 0.5
        fine_identity = np.stack(np.meshgrid(fine, fine), -1)[None]  # (1, S, S, 2)
        self.register_buffer("coarse_grid", _normalised(identity.transpose(0, 2, 3, 1), size))
        self.register_buffer("fine_grid", _normalised(fine_identity, size))
        self.register_buffer(
            "identity_blur_excess",
            torch.from_numpy((blurred_identity.transpose(2, 0, 1)[None] - identity).astype(np.float32)),
        )
        self.register_buffer("difference", _difference_matrix(grid, size / grid))
        self.register_buffer("unfold_blur", _blur_matrix(UNFOLD_KERNEL, grid))
        self.register_buffer("residual_blur", _blur_matrix(RESIDUAL_KERNEL, grid))
        # Not used by forward(): it puts the graph-shaping constants into the state dict, so that
        # backends.source_hash() (and with it the staleness check of an exported file) changes with them.
        self.register_buffer(
            "constants",
            torch.tensor([size, grid, settings.newton_steps, UNFOLD_PASSES, FOLD_DET, NEWTON_MIN_DET],
                         dtype=torch.float64),
        )

    def _blur(self, planes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of (1, C, G, G) planes by a (G, G) blur matrix (see _blur_matrix)."""
        return torch.matmul(torch.matmul(rows, planes), rows.t())

    def _gradients(self, field: torch.Tensor) -> torch.Tensor:
        """(1, 4, G, G) dfx/dx, dfx/dy, dfy/dx, dfy/dy of a (1, 2, G, G) field, as np.gradient(f, step)."""
        d_dx = torch.matmul(field, self.difference.t())
        d_dy = torch.matmul(self.difference, field)
        return torch.cat([d_dx[:, 0:1], d_dy[:, 0:1], d_dx[:, 1:2], d_dy[:, 1:2]], 1)

    def _sample(self, planes: torch.Tensor, grid: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """Bilinear samples of (1, C, H, W) planes at grid (1, h, w, 2) + offset (1, 2, h, w) px, edges replicated."""
        position = grid + offset.permute(0, 2, 3, 1) * (2.0 / self.canvas_size)
        return F.grid_sample(planes, position, mode="bilinear", padding_mode="border", align_corners=False)

    def _unfold(self, field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        jac = self._gradients(field)
        for _ in range(UNFOLD_PASSES):
            det = (1.0 + jac[:, 0:1]) * (1.0 + jac[:, 3:4]) - jac[:, 1:2] * jac[:, 2:3]
            folded = (det < FOLD_DET).to(field.dtype)
            blurred = self._blur(torch.cat([folded, field], 1), self.unfold_blur)  # one blur for mask and field
            # Where nothing folds the weight is exactly 0 and the pass changes nothing (numpy breaks instead).
            weight = torch.clamp(blurred[:, 0:1] * 4.0, max=1.0)
            field = field + weight * (blurred[:, 1:3] - field)
            jac = self._gradients(field)
        return field, jac

    def backward_offsets(self, weights: torch.Tensor, displacements: torch.Tensor) -> torch.Tensor:
        """(1, 2, G, G) offset from each coarse output grid point to the avatar pixel it samples (x, y px)."""
        grid = self.grid_size
        field = torch.matmul(weights, displacements).reshape(1, grid, grid, 2).permute(0, 3, 1, 2)
        field, jac = self._unfold(field)
        offset = -field
        planes = torch.cat([field, jac], 1)  # one grid_sample per Newton step reads all six planes
        for _ in range(self.newton_steps):
            sampled = self._sample(planes, self.coarse_grid, offset)
            residual = offset + sampled[:, 0:2]  # = position + field(position) - target
            rx, ry = residual[:, 0:1], residual[:, 1:2]
            a11 = 1.0 + sampled[:, 2:3]
            a12 = sampled[:, 3:4]
            a21 = sampled[:, 4:5]
            a22 = 1.0 + sampled[:, 5:6]
            det = a11 * a22 - a12 * a21
            ok = det > NEWTON_MIN_DET  # where the forward map folds or collapses, keep the damped estimate
            inv_det = torch.where(ok, 1.0 / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
            step_x = (a22 * rx - a12 * ry) * inv_det
            step_y = (a11 * ry - a21 * rx) * inv_det
            offset = offset - torch.where(ok, torch.cat([step_x, step_y], 1), 0.5 * residual)
        # Where the forward map folds, Newton cannot converge: blend towards the blurred map there (as model.py).
        residual = offset + self._sample(field, self.coarse_grid, offset)
        limit = (0.5 * self.step_px) ** 2
        bad = (residual[:, 0:1] * residual[:, 0:1] + residual[:, 1:2] * residual[:, 1:2]) > limit
        blurred = self._blur(torch.cat([bad.to(offset.dtype), offset], 1), self.residual_blur)
        weight = torch.clamp(blurred[:, 0:1] * 3.0, max=1.0)
        return offset + weight * (blurred[:, 1:3] + self.identity_blur_excess - offset)

    def forward(self, image: torch.Tensor, weights: torch.Tensor, displacements: torch.Tensor) -> torch.Tensor:
        """Warp image (1, 3, S, S) by the spline field weights @ displacements; returns (1, 3, S, S)."""
        size = self.canvas_size
        offsets = self.backward_offsets(weights, displacements)
        full = F.interpolate(offsets, size=(size, size), mode="bilinear", align_corners=False)
        return self._sample(image, self.fine_grid, full)

    def backward_maps(self, weights: torch.Tensor, displacements: torch.Tensor) -> torch.Tensor:
        """(1, 2, G, G) absolute avatar-pixel x, y per coarse grid point, as MeshGenerator.backward_maps (tests)."""
        size = self.canvas_size
        return (self.coarse_grid.permute(0, 3, 1, 2) + 1.0) * (size / 2.0) - 0.5 + self.backward_offsets(
            weights, displacements
        )


def _normalised(pixels: np.ndarray, size: int) -> torch.Tensor:
    """Canvas pixel coordinates -> grid_sample coordinates (align_corners=False), computed in float64."""
    return torch.from_numpy(((2.0 * pixels + 1.0) / size - 1.0).astype(np.float32))


def random_inputs(rng: np.random.Generator, *, settings: MeshSettings | None = None,
                  max_shift_px: float = 60.0) -> dict[str, np.ndarray]:
    """Fresh valid inputs: a random image, smooth random spline-like weights and random control displacements.

    The weights are a normalised Gaussian partition of unity over random control positions, so the field is smooth
    like a real spline's; eight controls get shifts of up to max_shift_px, which folds the field in a few places
    so that the unfold passes have work to do.
    """
    settings = settings or MeshSettings()
    size, grid, n = settings.canvas_size, settings.grid_size, NUM_CONTROL_POINTS
    centers = (np.arange(grid, dtype=np.float32) + 0.5) / grid
    gx, gy = np.meshgrid(centers, centers)
    points = np.stack([gx.ravel(), gy.ravel()], 1)
    controls = rng.uniform(0.0, 1.0, (n, 2)).astype(np.float32)
    # |p - c|^2 expanded, so no (G*G, N, 2) temporary is made.
    d2 = (points**2).sum(1)[:, None] + (controls**2).sum(1)[None, :] - 2.0 * points @ controls.T
    kernel = np.exp(np.maximum(d2, 0.0) * (-0.5 / 0.03**2))
    kernel[kernel < 1e-9] = 0.0  # float32 denormals would make every matmul ~10x slower, unlike real weights
    weights = (kernel / kernel.sum(1, keepdims=True)).astype(np.float32)
    displacements = rng.normal(0.0, 4.0, (n, 2))
    displacements[rng.choice(n, 8, replace=False)] = rng.uniform(-max_shift_px, max_shift_px, (8, 2))
    image = rng.uniform(0.0, 255.0, (1, 3, size, size)).astype(np.float32)
    return {"image": image, "weights": weights, "displacements": displacements.astype(np.float32)}


VERIFY_ATOL = 1e-3 * 255.0
"""Export check, ONNX Runtime vs torch, in grey levels: 1e-3 of full scale, about 20x the worst float noise measured
across CPUs and runtimes (0.0113; tools/measure_float_noise.py), so a first export does not fail on another CPU."""


def export_recipe(*, settings: MeshSettings | None = None) -> ExportRecipe:
    """The registry recipe for mesh_warp at fixed shapes (default 512 canvas, 128 grid, N = NUM_CONTROL_POINTS)."""
    settings = settings or MeshSettings()
    io = model_io(settings=settings)
    return ExportRecipe(
        module=MeshWarp(settings=settings).eval(),
        example_inputs={s.name: np.zeros(cast(tuple[int, ...], s.shape), np.float32) for s in io.inputs},
        output_names=OUTPUT_NAMES,
        make_inputs=lambda rng: random_inputs(rng, settings=settings),
        atol=VERIFY_ATOL,
    )


def model_name(*, settings: MeshSettings) -> str:
    """mesh_warp for the default shapes (the registered export), mesh_warp_<S>px_g<G>_n<steps> otherwise."""
    default = MeshSettings()
    key = (settings.canvas_size, settings.grid_size, settings.newton_steps)
    if key == (default.canvas_size, default.grid_size, default.newton_steps):
        return MODEL_NAME
    return f"{MODEL_NAME}_{settings.canvas_size}px_g{settings.grid_size}_n{settings.newton_steps}"


def mesh_warp_backend(requested: str, *, hardware: HardwareFacts) -> str | None:
    """The backend MeshGenerator should give MeshWarpRunner, or None for the numpy/cv2 path (fastest on CPU)."""
    if requested not in BACKEND_CHOICES:
        raise ConfigError(f"unknown backend {requested!r}: valid backends are {', '.join(BACKEND_CHOICES)}")
    if requested != "auto":
        return requested
    gpu_runtime = hardware.cuda_available and (
        (hardware.tensorrt_version is not None and hardware.torch_cuda) or hardware.onnxruntime_cuda
        or hardware.torch_cuda
    )
    # Measured with tools/bench_backends.py --threads 1 (ms p50 at 256 / 512 px): cv2 path 1.9 / 7.0, torch
    # 4.9 / 21.4, ONNX Runtime 10.8 / 44.8 (its CPU GridSample alone takes ~40 ms at 512). With each runtime's
    # default threads on a busy 2-core machine the order is the same and torch's spread is far wider.
    return "auto" if gpu_runtime else None


class MeshWarpRunner:
    """Runs MeshWarp on the requested backend and writes uint8 canvases; exports the ONNX on first use if needed.

    Per avatar the image is converted once into a preallocated input and the avatar's weights are passed as they
    are; per frame only the displacements are staged (StagingBuffers) and the output is rounded into the caller's
    canvas through a staged float scratch. The runner must be driven by one thread (the render worker).
    With requested 'auto' the backends layer tries TensorRT, ONNX Runtime CUDA, torch CUDA, then the CPU runtimes;
    a CPU runtime is slower than MeshGenerator's own numpy path, so check `device` after open() (or decide with
    mesh_warp_backend() first). The eyelids and the mouth interior are not drawn here: MeshGenerator.generate draws
    them after warp().
    """

    def __init__(
        self,
        *,
        requested: str = "auto",
        settings: MeshSettings | None = None,
        engines_dir: Path | str = ENGINES_DIR,
        hardware: HardwareFacts | None = None,
        cpu_runtime: str = "torch",
        precision: str = "fp32",
        intra_op_threads: int | None = None,
        log: Callable[[str], None] = _LOG.info,
    ) -> None:
        if requested not in BACKEND_CHOICES:
            raise ConfigError(f"unknown backend {requested!r}: valid backends are {', '.join(BACKEND_CHOICES)}")
        self._requested = requested
        self._settings = settings or MeshSettings()
        self._engines_dir = Path(engines_dir)
        self._hardware = hardware
        self._cpu_runtime = cpu_runtime  # torch: 2x faster than ONNX Runtime on CPU here (see mesh_warp_backend)
        # fp32 by default: fp16 resolves grid_sample coordinates near +-1 to 1/2048 (1/8 px at 512) and the spline
        # weights to 3 digits, which the Newton residual test (0.5 grid step) and the pixels would both show.
        self._precision = precision
        self._intra_op_threads = intra_op_threads
        self._log = log
        self._name = model_name(settings=self._settings)
        self._io = model_io(settings=self._settings)
        self._runner: Runner | None = None
        self._staging: StagingBuffers | None = None
        self._image: np.ndarray | None = None
        self._feeds: list[dict[str, np.ndarray]] = []
        self._avatar: PreparedMesh | None = None
        self._avatar_uploads = 0
        self._exported = False

    @property
    def onnx_path(self) -> Path:
        """engines_dir/NAME.onnx, exported on first use by any backend but 'torch'."""
        return self._engines_dir / f"{self._name}.onnx"

    @property
    def exported(self) -> bool:
        """True when open() had to (re-)export the ONNX file because it was missing or stale."""
        return self._exported

    @property
    def label(self) -> str:
        """The runtime in use, e.g. 'onnxruntime-cpu' (open only)."""
        return self._require_runner().label

    @property
    def device(self) -> str:
        """'cpu' or 'cuda' of the runtime in use (open only)."""
        return self._require_runner().device

    @property
    def allocations(self) -> int:
        """Staging buffers allocated so far (this runner's and the runtime's); constant per frame in steady state."""
        own = 0 if self._staging is None else self._staging.allocations
        runtime_staging = getattr(self._runner, "staging", None)
        return own + (0 if runtime_staging is None else runtime_staging.allocations)

    @property
    def avatar_uploads(self) -> int:
        """How many times an avatar's image was converted into the model input (once per avatar switch)."""
        return self._avatar_uploads

    def open(self) -> MeshWarpRunner:
        """Export if missing or stale (not for 'torch'), open the runtime and allocate the buffers; returns self."""
        if self._runner is not None:
            return self
        module = MeshWarp(settings=self._settings).eval()
        expected_hash = None
        if self._requested != "torch":
            expected_hash = self._ensure_exported(module)
        spec = ModelSpec(
            name=self._name,
            onnx_path=self.onnx_path,
            torch_module=lambda: module,
            io=self._io,
            cpu_runtime=self._cpu_runtime,
            precision=self._precision,
            engines_dir=self._engines_dir,
            intra_op_threads=self._intra_op_threads,
            source_hash=expected_hash,
        )
        hardware = detect_hardware() if self._hardware is None else self._hardware
        self._runner = open_backend(self._requested, spec, hardware, self._log)
        size = self._settings.canvas_size
        # Host side of every frame: the displacements in, the transposed, rounded canvas out. The runtime's own
        # staging (ONNX Runtime, TensorRT) holds the model's inputs and outputs.
        self._staging = StagingBuffers(
            inputs=(self._io.inputs[2],),
            outputs=(TensorSpec(name="canvas_bgr", shape=(size, size, 3), dtype="float32"),),
            device="cpu",
            name=self._name,
        )
        self._image = np.zeros((1, 3, size, size), np.float32)
        return self

    def _ensure_exported(self, module: Any) -> str:
        from avatarcam.backends.export import export_mismatch, export_onnx, load_exported, source_hash
        from avatarcam.backends.verify import verify_onnx

        expected = source_hash(module)
        try:
            load_exported(self.onnx_path, expected_source_hash=expected)
            # The code hash does not see the control-point count, which the mesh model (not this module) sets.
            problem = export_mismatch(self.onnx_path, self._io)
            if problem is None:
                return expected
            self._log(f"{self._name}: exporting {self.onnx_path} ({problem})")
        except ModelFileError as exc:
            self._log(f"{self._name}: exporting {self.onnx_path} ({exc})")
        exported = export_onnx(
            module,
            {s.name: np.zeros(s.shape, np.float32) for s in self._io.inputs},
            self.onnx_path,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
        )
        errors = verify_onnx(exported, module, random_inputs(np.random.default_rng(0), settings=self._settings),
                             atol=VERIFY_ATOL)
        self._log(f"{self._name}: exported {self.onnx_path.name}; max abs error vs torch {errors['warped']:.2e}")
        self._exported = True
        return expected

    def _require_runner(self) -> Runner:
        if self._runner is None:
            raise EngineError(f"{self._name} runner is not open: call open() or use it in `with`")
        return self._runner

    def _use_avatar(self, prepared: PreparedMesh) -> None:
        assert self._image is not None and self._staging is not None
        expected = self._io.inputs[1].shape
        if prepared.weights.shape != expected or prepared.image_bgr.shape != (*self._image.shape[2:], 3):
            raise EngineError(
                f"prepared avatar has weights {prepared.weights.shape} and canvas {prepared.image_bgr.shape} but "
                f"{self._name} runs weights {expected} on a {self._image.shape[2]} canvas: prepare the avatar with "
                f"the same MeshSettings as the runner"
            )
        image_to_input(prepared.image_bgr, out=self._image)
        weights = np.ascontiguousarray(prepared.weights, dtype=np.float32)  # already so: no copy
        self._feeds = [
            {"image": self._image, "weights": weights, "displacements": slot.host_inputs["displacements"]}
            for slot in self._staging.slots
        ]
        self._avatar = prepared
        self._avatar_uploads += 1

    def _compute(self, slot: StagingSlot) -> None:
        warped = self._require_runner().run(self._feeds[slot.index])["warped"]
        # Transpose and round into the slot's scratch now: runtime outputs are reused two runs later.
        np.rint(warped[0].transpose(1, 2, 0), out=slot.host_outputs["canvas_bgr"])

    def warp(self, *, prepared: PreparedMesh, displacements: np.ndarray, out_bgr_uint8: np.ndarray) -> np.ndarray:
        """Write the (S, S, 3) uint8 BGR avatar warped by (N, 2) float32 control displacements into out; return it."""
        self._require_runner()
        assert self._staging is not None
        size = self._settings.canvas_size
        if out_bgr_uint8.shape != (size, size, 3) or out_bgr_uint8.dtype != np.uint8:
            raise EngineError(
                f"unexpected canvas {out_bgr_uint8.shape} {out_bgr_uint8.dtype} != ({size}, {size}, 3) uint8: "
                f"pass a canvas of the runner's canvas size"
            )
        if displacements.shape != (NUM_CONTROL_POINTS, 2) or displacements.dtype != np.float32:
            raise EngineError(
                f"unexpected displacements {displacements.shape} {displacements.dtype} != ({NUM_CONTROL_POINTS}, 2) "
                f"float32: pass MeshGenerator.control_displacements(prepared, driven)"
            )
        if prepared is not self._avatar:
            self._use_avatar(prepared)
        slot = self._staging.submit({"displacements": displacements}, self._compute)
        scratch = self._staging.collect(slot)["canvas_bgr"]
        np.clip(scratch, 0.0, 255.0, out=scratch)
        np.copyto(out_bgr_uint8, scratch, casting="unsafe")  # exact: whole numbers in [0, 255]
        return out_bgr_uint8

    def close(self) -> None:
        """Close the runtime and drop the buffers; safe to call more than once."""
        runner, self._runner = self._runner, None
        if self._staging is not None:
            self._staging.close()
            self._staging = None
        self._feeds = []
        self._avatar = None
        self._image = None
        if runner is not None:
            runner.close()

    def __enter__(self) -> MeshWarpRunner:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._runner.label if self._runner is not None else "closed"
        return f"<MeshWarpRunner {self._name!r} requested={self._requested!r} {state}>"
