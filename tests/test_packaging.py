"""The package definition: pyproject.toml and the requirements files agree, the `facemimic` command is run.py, the
tools import the installed package, and the installer imports none of it (it runs before the package exists)."""

from __future__ import annotations

import ast
import tomllib

from tests.conftest import ROOT


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines
            if line.split("#")[0].strip() and not line.startswith("-r")]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _strip(spec: str) -> str:
    return spec.split("#")[0].strip()


def test_dependencies_and_extras_match_the_requirements_files():
    project = _pyproject()["project"]
    assert [_strip(d) for d in project["dependencies"]] == _requirements("requirements.txt")
    assert project["optional-dependencies"]["dev"] == _requirements("requirements-dev.txt")
    assert project["optional-dependencies"]["gpu"] == _requirements("requirements-gpu.txt")
    assert "torch==2.13.0" in project["dependencies"], "torch stays pinned exactly (see requirements.txt)"


def test_the_facemimic_command_is_run_py():
    assert _pyproject()["project"]["scripts"] == {"facemimic": "avatarcam.cli:main"}
    run_py = ast.parse((ROOT / "run.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(run_py) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("avatarcam.cli", "main") in imported


# gpu_check.py runs on a borrowed GPU machine where the tree is copied but nothing is pip-installed (no network,
# no build step), so it alone puts the checkout on sys.path.
RUNS_UNINSTALLED = {"gpu_check.py"}


def test_tools_import_the_installed_package_and_the_installer_imports_none_of_it():
    for path in sorted((ROOT / "tools").glob("*.py")):
        if path.name in RUNS_UNINSTALLED:
            continue
        text = path.read_text()
        assert "sys.path" not in text, f"{path.name} edits sys.path: import the installed package instead"
    installer = ast.parse((ROOT / "tools" / "install.py").read_text())
    names = {a.name for n in ast.walk(installer) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(installer) if isinstance(n, ast.ImportFrom)}
    assert not [n for n in names if n.split(".")[0] == "avatarcam"], "tools/install.py must run before avatarcam"
