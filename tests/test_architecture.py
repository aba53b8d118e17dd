"""Import rules: the package imports on a bare CPU machine, imports flow one way, and no two modules import each
other, counting every import (module level, inside functions, importlib.import_module and "pkg.mod:func"
registry strings)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "avatarcam"
REGISTRY_STRING = re.compile(r"avatarcam(\.\w+)+:\w+")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _module_imports(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:  # module level only: imports inside functions are the lazy ones
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def all_imports(path: Path, *, modules=None) -> set[str]:
    """Every module path imports: `import`/`from` at any depth, import_module("literal"), "pkg.mod:func" strings.

    `from package import name` counts as importing package.name when that is a module of `modules`.
    """
    modules = MODULES if modules is None else modules
    module = next(name for name, p in modules.items() if p == path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
            names.add(str(node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and REGISTRY_STRING.fullmatch(node.value):
            names.add(node.value.partition(":")[0])
    return names


def import_circles(modules: dict[str, Path]) -> list[list[str]]:
    """Groups of package modules that reach each other through imports (Tarjan's strongly connected components)."""
    graph = {m: {i for i in all_imports(p, modules=modules) if i in modules and i != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_package_imports_without_gpu_display_or_heavy_frameworks():
    blocked = ["tensorrt", "torch", "onnxruntime", "onnx", "pynput", "pyvirtualcam", "cuda"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "import avatarcam, avatarcam.app, avatarcam.cli, avatarcam.pipeline, avatarcam.backends, "
              "avatarcam.vcam, avatarcam.hotkeys, avatarcam.preview, avatarcam.generators, "
              "avatarcam.generators.mesh.reenactor, avatarcam.generators.fomm.reenactor\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# Modules that define torch networks import torch at load; everything else reaches them only lazily.
TORCH_MODULES = {"avatarcam.generators.fomm.model", "avatarcam.generators.fomm.checkpoint",
                 "avatarcam.generators.mesh.torch_warp", "avatarcam.generators.fomm.export",
                 "avatarcam.generators.fomm.fast",
                 "avatarcam.generators.liveportrait.model", "avatarcam.generators.liveportrait.export"}


def test_imports_flow_one_way():
    heavy = {"tensorrt", "torch", "onnxruntime", "pynput", "pyvirtualcam"}
    for path in PACKAGE.rglob("*.py"):
        imports = _module_imports(path)
        every = all_imports(path)
        module = _module_name(path)
        assert not any(i == "tools" or i.startswith("tools.") for i in every), f"{module} imports tools/"
        roots = {i.split(".")[0] for i in imports}
        if module in TORCH_MODULES:
            roots -= {"torch"}
        assert not (heavy & roots), f"{module} imports a heavy framework at load"
        for torch_module in TORCH_MODULES - {module}:
            if module not in TORCH_MODULES:
                assert torch_module not in imports, f"{module} imports {torch_module} (torch) at load"
        if module in ("avatarcam.types", "avatarcam.errors"):
            assert not [i for i in every if i.startswith("avatarcam")], f"{module} must import nothing of ours"
        if module not in ("avatarcam.cli",):
            assert "avatarcam.cli" not in every, f"{module} imports the CLI"
        if module not in ("avatarcam.cli", "avatarcam.app"):
            assert "avatarcam.app" not in every, f"{module} imports the composition root"


def test_no_import_circles():
    circles = import_circles(MODULES)
    assert not circles, "modules that import each other (move the shared part into one of them or a third): " + \
        "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_sees_lazy_importlib_and_registry_imports(tmp_path):
    # The three kinds of import the module-level reader missed, each closing a circle of its own.
    package = tmp_path / "avatarcam"
    package.mkdir()
    files = {
        "a.py": "def f():\n    from avatarcam import b\n",
        "b.py": "import avatarcam.a\n",
        "c.py": "import importlib\nX = importlib.import_module('avatarcam.d')\n",
        "d.py": "from avatarcam.c import X\n",
        "e.py": "REGISTRY = {'f': 'avatarcam.f:make'}\n",
        "f.py": "from avatarcam import e\n",
        "g.py": "from avatarcam import a\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    modules = {f"avatarcam.{p.stem}": p for p in package.glob("*.py")}
    assert sorted(import_circles(modules)) == [["avatarcam.a", "avatarcam.b"], ["avatarcam.c", "avatarcam.d"],
                                              ["avatarcam.e", "avatarcam.f"]]


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_import_of_the_package_names_something_that_exists():
    """A moved module leaves no stale import behind in the package, the tools or the tests, lazy ones included
    (a function-level import of a module that is gone only fails when that function runs)."""
    stale = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py"), *(ROOT / "tests").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                stale += [f"{path.name}: import {a.name}" for a in node.names
                          if a.name.startswith("avatarcam") and a.name not in MODULES]
            elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("avatarcam"):
                module = node.module or ""
                if module not in MODULES:
                    stale.append(f"{path.name}: from {module} import ...")
                    continue
                defined = _top_level_names(MODULES[module])
                stale += [f"{path.name}: from {module} import {a.name}" for a in node.names
                          if f"{module}.{a.name}" not in MODULES and a.name not in defined and a.name != "*"]
    assert not stale, "imports of modules or names that do not exist:\n" + "\n".join(stale)
