"""Measure the float32 noise behind every parity bound of the test suite, across the settings a machine can differ in.

    python tools/measure_float_noise.py                  # every configuration; a table of worst cases on stdout
    python tools/measure_float_noise.py --json noise.json

Why: a parity bound must sit well above the noise of legitimate fp32 variations (other CPUs take other SIMD paths
in oneDNN, in reductions and in ONNX Runtime's kernels) and far below the error of a wrong answer. This machine
cannot be another CPU, but it can vary what another machine varies: the SIMD instruction set torch's kernels and
oneDNN use (capped by environment variables), the thread count (how reductions are split),
oneDNN on or off (another convolution implementation), torch's deterministic algorithms, the input memory layout
(FOMM's own demo hands its convolutions channels-last tensors), and ONNX Runtime's thread count and graph
optimisation level (fused or unfused kernels). Rerun this script on any machine to see its own noise.

What runs, each configuration in its own process (thread pools and oneDNN settle at first use):
- torch configurations: threads 1/2/4 x oneDNN on/off x deterministic off/on, plus channels-last inputs at 2 threads
  with oneDNN on and off, plus other SIMD paths (ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA capped at AVX2 and at
  SSE4.1) x oneDNN on/off x channels-last off/on. Each runs the FOMM port on the parity fixture (tests/fixtures/fomm, both align_corners
  variants, the per-frame sequence of FOMM's demo and a batch of 4 frames), the three FOMM export modules, the mesh
  warp (MeshWarp) and the backends contract's conv + grid_sample module on fixed feeds.
- ONNX Runtime configurations: intra-op threads 1/2/4 x graph optimisation disabled/basic/all, on the same feeds
  through graphs exported once, plus FOMM's relative-motion chain run entirely on ONNX Runtime.
Then every comparison a test makes is evaluated over every pair of configurations; the worst case is reported per
quantity, with the magnitude of the reference values (so bounds can be stated relative to it).

Exit status 0; it measures, it does not judge. tests/tolerances.py holds the bounds set from these numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FOMM_FIXTURES = ROOT / "tests" / "fixtures" / "fomm"
PORTRAIT = ROOT / "tests" / "fixtures" / "source" / "lp_s42.jpg"
TORCH_CONFIGS = [
    {"threads": t, "mkldnn": m, "deterministic": d, "channels_last": False, "isa": "native"}
    for t, m, d in itertools.product((1, 2, 4), (True, False), (False, True))
] + [{"threads": 2, "mkldnn": m, "deterministic": False, "channels_last": True, "isa": "native"} for m in (True, False)]
# Other CPUs' SIMD paths, emulated: ATen's kernel dispatch and oneDNN's code generation capped at AVX2 or at SSE4.1
# (a CPU without AVX-512, or a very old one). AVX2 reproduces the other machine's keypoint errors to 3 digits.
ISA_ENVIRONMENT = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "sse41": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
TORCH_CONFIGS += [
    {"threads": 2, "mkldnn": m, "deterministic": False, "channels_last": c, "isa": isa}
    for isa, m, c in itertools.product(("avx2", "sse41"), (True, False), (False, True))
]
ORT_CONFIGS = [{"threads": t, "optimization": o} for t, o in itertools.product((1, 2, 4), ("disable", "basic", "all"))]
MESH_POSES = {  # (shift_px, scale, yaw_deg, mouth drop px): the poses tests/test_mesh_torch.py warps
    "turned": ((14.0, -9.0), 1.0, 12.0, 0.0),
    "turned_open_mouth": ((-10.0, 6.0), 1.05, -15.0, 35.0),
    "big_turn": ((30.0, 0.0), 1.1, 30.0, 0.0),
    "extreme": ((120.0, 80.0), 1.4, 60.0, 0.0),  # folds the field: Newton cannot converge there
}
SMALL_WARP_SIZE = 64


# ---------------------------------------------------------------------------------------------- shared set-up


def _small_warp_module():
    """The backends contract's module (tests/test_backends.py TinyWarp): a conv-predicted flow and grid_sample."""
    import torch

    class SmallWarp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flow = torch.nn.Conv2d(3, 2, kernel_size=3, padding=1)
            self.pool = torch.nn.Conv2d(3, 4, kernel_size=3, padding=1)

        def forward(self, source, grid):
            offset = torch.tanh(self.flow(source)).permute(0, 2, 3, 1)
            sampled = torch.nn.functional.grid_sample(source, torch.clamp(grid + 0.1 * offset, -1.0, 1.0),
                                                      align_corners=False)
            return sampled, self.pool(source).mean(dim=(2, 3))

    torch.manual_seed(0)
    return SmallWarp().eval()


def _mesh_pose_inputs(generator, prepared, pose) -> np.ndarray:
    """Control displacements of the portrait turned, shifted and scaled rigidly, the lower lip dropped."""
    from avatarcam import landmarks as lm
    from avatarcam.motion import DrivenFace, neutral_driven

    (dx, dy), scale, yaw_deg, mouth_px = pose
    angle = np.radians(yaw_deg)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float32)
    rest = neutral_driven(prepared.face)
    posed = DrivenFace(points=rest.points, rotation=rotation, scale=scale, shift_px=np.array([dx, dy], np.float32),
                       pivot=prepared.face.pivot)
    points = posed.transform_rigid(prepared.face.points).copy()
    if mouth_px:
        below_lip = points[:468, 1] > points[lm.INNER_LIP_LOWER_MID, 1] - 1
        points[:468][below_lip, 1] += mouth_px
    driven = DrivenFace(points=points, rotation=rotation, scale=scale, shift_px=posed.shift_px, pivot=posed.pivot)
    return generator.control_displacements(prepared, driven), generator.generate(prepared, driven)


def prepare(folder: Path) -> dict[str, str]:
    """Export every graph once and write the feeds every configuration runs; returns name -> path."""
    import torch

    from avatarcam.avatars import load_avatar
    from avatarcam.generators import export_registered
    from avatarcam.backends.export import export_onnx
    from avatarcam.generators.fomm import export as fx
    from avatarcam.generators.mesh.model import MeshGenerator, MeshSettings
    from avatarcam.generators.mesh.torch_warp import image_to_input, random_inputs
    from avatarcam.landmarks import DEFAULT_MODEL_PATH, FaceLandmarker

    torch.set_num_threads(2)
    with np.load(FOMM_FIXTURES / "parity.npz") as data:
        parity = {name: data[name] for name in data.files}
    models = fx.load_fomm_models(FOMM_FIXTURES / "tiny-checkpoint.pth.tar")
    paths = {name: str(path) for name, path in fx.ensure_exported(models, engines_dir=folder).items()}
    recipes = fx.recipes_for(models)
    with torch.no_grad():
        features = models.generator.encode_source(torch.from_numpy(parity["source"])).numpy()
    feeds: dict[str, np.ndarray] = {}
    frames = [parity["source"]] + [parity["driving"][i : i + 1] for i in range(4)]
    for i, frame in enumerate(frames):
        feeds[f"{fx.KP_DETECTOR}/real{i}/image"] = frame
    feeds[f"{fx.SOURCE_ENCODER}/real0/source_image"] = parity["source"]
    for i in range(4):
        real = {"source_image": parity["source"], "source_features": features,
                "kp_source_value": parity["kp_source_value"], "kp_source_jacobian": parity["kp_source_jacobian"],
                "kp_driving_value": parity["kp_norm_value"][i : i + 1],
                "kp_driving_jacobian": parity["kp_norm_jacobian"][i : i + 1]}
        feeds.update({f"{fx.FRAME_GENERATOR}/real{i}/{k}": v for k, v in real.items()})
    for name in fx.MODEL_NAMES:
        for seed in (11, 12, 13):
            for key, value in recipes[name].sample_inputs(np.random.default_rng(seed)).items():
                feeds[f"{name}/random{seed}/{key}"] = value

    result, _ = export_registered("mesh_warp", out_dir=folder, seed=0)
    paths["mesh_warp"] = str(result.onnx_path)
    for seed in (0, 1):
        for key, value in random_inputs(np.random.default_rng(seed)).items():
            feeds[f"mesh_warp/random{seed}/{key}"] = value
    with FaceLandmarker(model_path=DEFAULT_MODEL_PATH, mode="image") as landmarker:
        avatar = load_avatar(PORTRAIT, landmarker, 512)
    generator = MeshGenerator(MeshSettings(mouth_interior=False))
    prepared = generator.prepare(avatar.canvas_bgr, avatar.points)
    for pose_name, pose in MESH_POSES.items():
        displacements, cv2_bgr = _mesh_pose_inputs(generator, prepared, pose)
        feeds[f"mesh_warp/{pose_name}/image"] = image_to_input(prepared.image_bgr)
        feeds[f"mesh_warp/{pose_name}/weights"] = prepared.weights
        feeds[f"mesh_warp/{pose_name}/displacements"] = displacements
        feeds[f"cv2_path/{pose_name}"] = cv2_bgr

    small = _small_warp_module()
    shapes = {"source": (1, 3, SMALL_WARP_SIZE, SMALL_WARP_SIZE), "grid": (1, SMALL_WARP_SIZE, SMALL_WARP_SIZE, 2)}
    exported = export_onnx(small, {k: np.zeros(s, np.float32) for k, s in shapes.items()}, folder / "small_warp.onnx",
                           input_names=["source", "grid"], output_names=["warped", "pooled"])
    paths["small_warp"] = str(exported.onnx_path)
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        for key, shape in shapes.items():
            feeds[f"small_warp/random{seed}/{key}"] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    np.savez(folder / "feeds.npz", **feeds)
    paths["feeds"] = str(folder / "feeds.npz")
    return paths


def _grouped_feeds(feeds: dict[str, np.ndarray], model: str) -> dict[str, dict[str, np.ndarray]]:
    """'model/case/input' keys -> {case: {input: array}} for one model."""
    cases: dict[str, dict[str, np.ndarray]] = {}
    for key, value in feeds.items():
        parts = key.split("/")
        if parts[0] == model and len(parts) == 3:
            cases.setdefault(parts[1], {})[parts[2]] = value
    return cases


# ---------------------------------------------------------------------------------------------- workers


def torch_worker(config: dict, paths: dict[str, str], out: Path) -> None:
    """Run every torch computation under one configuration and save the outputs."""
    import torch

    torch.set_num_threads(config["threads"])
    torch.backends.mkldnn.enabled = config["mkldnn"]
    torch.use_deterministic_algorithms(config["deterministic"])
    from fomm_parity import run_sequence  # a sibling tool: a script runs with its own folder importable

    from avatarcam.generators.fomm import export as fx
    from avatarcam.generators.fomm.checkpoint import load_fomm_checkpoint
    from avatarcam.generators.fomm.model import FommConfig
    from avatarcam.generators.mesh.torch_warp import MeshWarp

    def layout(array: np.ndarray) -> np.ndarray:
        """The same values; NHWC memory under an NCHW view when channels_last (what FOMM's demo feeds)."""
        if not config["channels_last"] or array.ndim != 4:
            return array
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

    with np.load(FOMM_FIXTURES / "parity.npz") as data:
        parity = {name: data[name] for name in data.files}
    with np.load(paths["feeds"]) as data:
        feeds = {name: data[name] for name in data.files}
    config_json = json.loads((FOMM_FIXTURES / "tiny-config.json").read_text())["model_params"]
    saved: dict[str, np.ndarray] = {}
    for align_corners in (False, True):
        fomm_config = FommConfig.from_model_params(config_json, align_corners=align_corners)
        kp_detector, generator = load_fomm_checkpoint(FOMM_FIXTURES / "tiny-checkpoint.pth.tar", fomm_config)
        ours = run_sequence(kp_detector, generator, layout(parity["source"]), layout(parity["driving"]))
        suffix = "_align_corners_true" if align_corners else ""
        saved.update({f"seq/{name}{suffix}": value for name, value in ours.items()})
        if not align_corners:  # a batch of the 4 frames with a repeated source (test_batched_frames_...)
            source = torch.from_numpy(layout(parity["source"])).expand(4, -1, -1, -1)
            with torch.no_grad():
                batched = generator(source, generator.encode_source(source),
                                    torch.from_numpy(ours["kp_source_value"]).expand(4, -1, -1),
                                    torch.from_numpy(ours["kp_source_jacobian"]).expand(4, -1, -1, -1),
                                    torch.from_numpy(ours["kp_norm_value"]),
                                    torch.from_numpy(ours["kp_norm_jacobian"]))[0]
            saved["batched/prediction_relative"] = batched.numpy()

    models = fx.load_fomm_models(FOMM_FIXTURES / "tiny-checkpoint.pth.tar")
    recipes = fx.recipes_for(models)
    modules = {name: recipes[name].module for name in fx.MODEL_NAMES}
    modules["mesh_warp"] = MeshWarp().eval()
    modules["small_warp"] = _small_warp_module()
    output_names = {name: recipes[name].output_names for name in fx.MODEL_NAMES}
    output_names.update(mesh_warp=("warped",), small_warp=("warped", "pooled"))
    for model, module in modules.items():
        for case, feed in _grouped_feeds(feeds, model).items():
            input_names = {"mesh_warp": ("image", "weights", "displacements"), "small_warp": ("source", "grid")}
            session_inputs = recipes[model].input_names if model in recipes else input_names[model]
            args = [torch.from_numpy(layout(feed[name])) for name in session_inputs]
            with torch.inference_mode():
                result = module(*args)
            result = (result,) if isinstance(result, torch.Tensor) else result
            for name, tensor in zip(output_names[model], result, strict=True):
                saved[f"{model}/{case}/{name}"] = tensor.numpy()
    np.savez(out, **saved)


def ort_worker(config: dict, paths: dict[str, str], out: Path) -> None:
    """Run every exported graph on ONNX Runtime CPU under one configuration and save the outputs."""
    import onnxruntime as ort
    import torch

    from avatarcam.generators.fomm import export as fx
    from avatarcam.generators.fomm.model import FommKeypoints, movement_scale, normalize_kp

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with np.load(paths["feeds"]) as data:
        feeds = {name: data[name] for name in data.files}
    sessions = {}
    for model in (*fx.MODEL_NAMES, "mesh_warp", "small_warp"):
        options = ort.SessionOptions()
        options.intra_op_num_threads = config["threads"]
        options.graph_optimization_level = levels[config["optimization"]]
        sessions[model] = ort.InferenceSession(paths[model], options, providers=["CPUExecutionProvider"])
    saved: dict[str, np.ndarray] = {}
    for model, session in sessions.items():
        names = [o.name for o in session.get_outputs()]
        for case, feed in _grouped_feeds(feeds, model).items():
            for name, value in zip(names, session.run(None, feed), strict=True):
                saved[f"{model}/{case}/{name}"] = value

    # FOMM's relative sequence with every network on ONNX Runtime (test_torch_and_onnxruntime_render_...).
    with np.load(FOMM_FIXTURES / "parity.npz") as data:
        parity = {name: data[name] for name in data.files}

    def keypoints(image: np.ndarray) -> FommKeypoints:
        value, jacobian = sessions[fx.KP_DETECTOR].run(None, {"image": image})
        return FommKeypoints(torch.from_numpy(value), torch.from_numpy(jacobian))

    source = parity["source"]
    kp_source, kp_initial = keypoints(source), keypoints(parity["driving"][0:1])
    (features,) = sessions[fx.SOURCE_ENCODER].run(None, {"source_image": source})
    scale_value = movement_scale(kp_source.value, kp_initial.value)
    predictions = []
    for i in range(4):
        kp_norm = normalize_kp(kp_source, keypoints(parity["driving"][i : i + 1]), kp_initial)
        feed = {"source_image": source, "source_features": features,
                "kp_source_value": kp_source.value.numpy(), "kp_source_jacobian": kp_source.jacobian.numpy(),
                "kp_driving_value": kp_norm.value.numpy(), "kp_driving_jacobian": kp_norm.jacobian.numpy()}
        predictions.append(sessions[fx.FRAME_GENERATOR].run(None, feed)[0])
    saved["chain/prediction_relative"] = np.concatenate(predictions)
    saved["chain/adapt_movement_scale"] = np.array([scale_value], np.float32)
    np.savez(out, **saved)


# ---------------------------------------------------------------------------------------------- comparisons


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def summarise(torch_runs: list[dict[str, np.ndarray]], ort_runs: list[dict[str, np.ndarray]],
              feeds: dict[str, np.ndarray], parity: dict[str, np.ndarray]) -> dict[str, dict]:
    """Quantity -> {'worst': max |diff| over configurations (pairs), 'scale': max |reference|, ...}."""
    table: dict[str, dict] = {}

    def record(quantity: str, errors: list[float], scale: float, **extra) -> None:
        table[quantity] = {"worst": max(errors), "median": float(np.median(errors)), "scale": scale,
                           "cases": len(errors), **extra}

    # (1) The FOMM port against the original code (tests/test_fomm_model.py, tools/fomm_parity.py).
    for key in sorted(torch_runs[0]):
        name = key.removeprefix("seq/")
        if key.startswith("seq/") and name in parity and not name.startswith("adapt_movement_scale"):
            record(f"fomm port vs original: {name}", [_max_abs(run[key], parity[name]) for run in torch_runs],
                   float(np.abs(parity[name]).max()))
    want = float(parity["adapt_movement_scale"][0])
    record("fomm port vs original: adapt_movement_scale (relative)",
           [abs(float(run["seq/adapt_movement_scale"][0]) / want - 1) for run in torch_runs], 1.0)
    record("fomm port: batch of 4 vs frame by frame (prediction)",
           [_max_abs(run["batched/prediction_relative"], run["seq/prediction_relative"]) for run in torch_runs], 1.0)
    record("fomm port: torch config vs torch config (kp_driving_value)",
           [_max_abs(a["seq/kp_driving_value"], b["seq/kp_driving_value"])
            for a, b in itertools.combinations(torch_runs, 2)], 1.0)

    # (2) Exported graphs on ONNX Runtime against torch, every ORT configuration x every torch configuration.
    for key in sorted(ort_runs[0]):
        if key.startswith("chain/"):
            continue
        model, case, output = key.split("/")
        kind = "real" if case.startswith("real") else ("random" if case.startswith("random") else "pose")
        group = f"{model} ONNX Runtime vs torch ({kind} inputs): {output}"
        if model == "mesh_warp" and case == "extreme":
            group = "mesh_warp ONNX Runtime vs torch (extreme pose, folded): warped"
        errors = [_max_abs(o[key], t[key]) for o in ort_runs for t in torch_runs]
        scale = float(np.abs(torch_runs[0][key]).max())
        if group in table:
            errors += [table[group]["worst"]]
            scale = max(scale, table[group]["scale"])
        record(group, errors, scale)
    # Folded region statistics (test_onnx_stays_close_to_torch_where_newton_cannot_converge).
    key = "mesh_warp/extreme/warped"
    diffs = [np.abs(o[key] - t[key]) for o in ort_runs for t in torch_runs]
    table["mesh_warp extreme: fraction beyond 1e-4 of full scale"] = {
        "worst": max(float((d > 1e-4 * 255).mean()) for d in diffs), "scale": 1.0, "cases": len(diffs)}
    table["mesh_warp extreme: mean |diff| (grey levels)"] = {
        "worst": max(float(d.mean()) for d in diffs), "scale": 255.0, "cases": len(diffs)}
    table["mesh_warp extreme: 99.9th percentile |diff| (grey levels)"] = {
        "worst": max(float(np.percentile(d, 99.9)) for d in diffs), "scale": 255.0, "cases": len(diffs)}

    # (3) ONNX Runtime against the original code (test_onnxruntime_reproduces_the_original_code_on_the_fixture).
    driving_kp = [np.concatenate([o[f"fomm_kp_detector/real{i}/kp_value"] for i in range(1, 5)]) for o in ort_runs]
    record("fomm ONNX Runtime vs original: kp_driving_value",
           [_max_abs(v, parity["kp_driving_value"]) for v in driving_kp], 1.0)
    predictions = [np.concatenate([o[f"fomm_frame_generator/real{i}/prediction"] for i in range(4)])
                   for o in ort_runs]
    record("fomm ONNX Runtime vs original: prediction (fixture keypoints)",
           [_max_abs(p, parity["prediction_relative"]) for p in predictions], 1.0)
    record("fomm ONNX Runtime chain vs original: prediction_relative",
           [_max_abs(o["chain/prediction_relative"], parity["prediction_relative"]) for o in ort_runs], 1.0)
    record("fomm ONNX Runtime chain vs torch sequence: prediction_relative",
           [_max_abs(o["chain/prediction_relative"], t["seq/prediction_relative"])
            for o in ort_runs for t in torch_runs], 1.0)

    # (4) The torch mesh warp against the numpy/cv2 path, in uint8 grey levels (test_torch_matches_the_cv2_path).
    for pose in MESH_POSES:
        diffs = [np.abs(np.clip(np.rint(t[f"mesh_warp/{pose}/warped"][0].transpose(1, 2, 0)), 0, 255).astype(int)
                        - feeds[f"cv2_path/{pose}"].astype(int)) for t in torch_runs]
        table[f"mesh_warp torch vs cv2 path ({pose}): max / p99 / mean / share > 1 (grey levels)"] = {
            "worst": max(float(d.max()) for d in diffs), "p99": max(float(np.percentile(d, 99)) for d in diffs),
            "mean": max(float(d.mean()) for d in diffs), "share_over_1": max(float((d > 1).mean()) for d in diffs),
            "scale": 255.0, "cases": len(diffs)}
    return table


def main(argv: list[str] | None = None) -> int:
    """Prepare, run every configuration in a subprocess, and print the worst case of every quantity."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument("--keep", type=Path, help="keep exports and outputs in this folder; reuse what is there")
    parser.add_argument("--worker", choices=("torch", "ort"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run = torch_worker if args.worker == "torch" else ort_worker
        run(json.loads(args.config), json.loads(args.paths), args.out)
        return 0

    import onnxruntime
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / "paths.json").is_file():
            paths = json.loads((folder / "paths.json").read_text())
        else:
            paths = prepare(folder)
            (folder / "paths.json").write_text(json.dumps(paths))
        runs: dict[str, list[dict[str, np.ndarray]]] = {"torch": [], "ort": []}
        for kind, configs in (("torch", TORCH_CONFIGS), ("ort", ORT_CONFIGS)):
            for index, config in enumerate(configs):
                out = folder / f"{kind}{index}.npz"
                if not out.is_file():
                    command = [sys.executable, __file__, "--worker", kind, "--config", json.dumps(config),
                               "--paths", json.dumps(paths), "--out", str(out)]
                    environment = {**os.environ, **ISA_ENVIRONMENT[config.get("isa", "native")]}
                    subprocess.run(command, check=True, cwd=ROOT, env=environment)
                    print(f"ran {kind} {config}", file=sys.stderr)
                with np.load(out) as data:
                    runs[kind].append({name: data[name] for name in data.files})
        with np.load(paths["feeds"]) as data:
            feeds = {name: data[name] for name in data.files}
    with np.load(FOMM_FIXTURES / "parity.npz") as data:
        parity = {name: data[name] for name in data.files}
    table = summarise(runs["torch"], runs["ort"], feeds, parity)
    print(f"float noise: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}; "
          f"{len(TORCH_CONFIGS)} torch x {len(ORT_CONFIGS)} ONNX Runtime configurations")
    width = max(map(len, table))
    print(f"{'quantity':<{width}}  {'worst':>10}  {'median':>10}  {'|ref| max':>9}")
    for name, row in table.items():
        median = f"{row['median']:>10.3g}" if "median" in row else " " * 10
        extra = "".join(f"  {k} {row[k]:.3g}" for k in ("p99", "mean", "share_over_1") if k in row)
        print(f"{name:<{width}}  {row['worst']:>10.3g}  {median}  {row['scale']:>9.3g}{extra}")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                                         "torch_configs": TORCH_CONFIGS, "ort_configs": ORT_CONFIGS,
                                         "quantities": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
