"""Import rules: the package imports on a bare CPU machine, and imports flow one way."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = ROOT / "avatarcam"


def _module_imports(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only: imports inside functions are the lazy ones
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_package_imports_without_gpu_display_or_heavy_frameworks():
    blocked = ["tensorrt", "torch", "onnxruntime", "onnx", "pynput", "pyvirtualcam", "cuda"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "import avatarcam, avatarcam.app, avatarcam.cli, avatarcam.pipeline, avatarcam.backends, "
              "avatarcam.vcam, avatarcam.hotkeys, avatarcam.preview, avatarcam.reenact\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# Modules that define torch networks import torch at load; everything else reaches them only lazily.
TORCH_MODULES = {"avatarcam.generators.fomm_model", "avatarcam.generators.fomm_checkpoint",
                 "avatarcam.generators.mesh_torch", "avatarcam.generators.fomm_export",
                 "avatarcam.generators.fomm_fast"}


def test_imports_flow_one_way():
    heavy = {"tensorrt", "torch", "onnxruntime", "pynput", "pyvirtualcam"}
    for path in PACKAGE.rglob("*.py"):
        imports = _module_imports(path)
        module = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        assert not any(i == "tools" or i.startswith("tools.") for i in imports), f"{module} imports tools/"
        roots = {i.split(".")[0] for i in imports}
        if module in TORCH_MODULES:
            roots -= {"torch"}
        assert not (heavy & roots), f"{module} imports a heavy framework at load"
        for torch_module in TORCH_MODULES - {module}:
            if module not in TORCH_MODULES:
                assert torch_module not in imports, f"{module} imports {torch_module} (torch) at load"
        if module in ("avatarcam.types", "avatarcam.errors"):
            assert not [i for i in imports if i.startswith("avatarcam")], f"{module} must import nothing of ours"
        if module not in ("avatarcam.cli",):
            assert "avatarcam.cli" not in imports, f"{module} imports the CLI"
        if module not in ("avatarcam.cli", "avatarcam.app"):
            assert "avatarcam.app" not in imports, f"{module} imports the composition root"
