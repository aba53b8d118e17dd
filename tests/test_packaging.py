"""The package definition: pyproject.toml and the requirements files agree, the `facemimic` command is run.py, the
tools import the installed package, and the installer imports none of it (it runs before the package exists)."""

from __future__ import annotations

import ast
import tomllib

from tests.conftest import ROOT


def _requirements(name: str) -> list[str]:
    """The requirement lines of one file, with the files it includes (-r) expanded in place."""
    found: list[str] = []
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            found += _requirements(line[2:].strip())
        elif line:
            found.append(line)
    return found


def _extra(name: str) -> list[str]:
    """A requirements-*.txt as a pyproject extra: what it adds to the base dependencies."""
    base = _requirements("requirements.txt")
    return [line for line in _requirements(name) if line not in base]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _strip(spec: str) -> str:
    return spec.split("#")[0].strip()


def test_dependencies_and_extras_match_the_requirements_files():
    project = _pyproject()["project"]
    assert [_strip(d) for d in project["dependencies"]] == _requirements("requirements.txt")
    for extra in ("torch", "web", "dev", "gpu", "triton"):
        assert project["optional-dependencies"][extra] == _extra(f"requirements-{extra}.txt"), extra
    assert project["optional-dependencies"]["torch"] == ["torch==2.13.0"], "torch stays pinned exactly"


def test_the_facemimic_command_is_run_py():
    assert _pyproject()["project"]["scripts"] == {"facemimic": "avatarcam.cli:main"}
    run_py = ast.parse((ROOT / "run.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(run_py) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("avatarcam.cli", "main") in imported


# gpu_check.py runs on a borrowed GPU machine where the tree is copied but nothing is pip-installed (no network,
# no build step), so it alone puts the checkout on sys.path.
RUNS_UNINSTALLED = {"gpu_check.py", "gpu_check_liveportrait.py"}


def test_tools_import_the_installed_package_and_the_installer_imports_none_of_it():
    for path in sorted((ROOT / "tools").glob("*.py")):
        if path.name in RUNS_UNINSTALLED:
            continue
        inserted = [line for line in path.read_text().splitlines() if "sys.path.insert" in line or "sys.path.append" in line]
        # A user's own checkout of another project (tools/fomm_original.py: first-order-model) may go on sys.path;
        # this repository's root may not.
        assert not [line for line in inserted if "ROOT" in line or "parent" in line], \
            f"{path.name} puts the repository on sys.path: import the installed package instead"
    installer = ast.parse((ROOT / "tools" / "install.py").read_text())
    names = {a.name for n in ast.walk(installer) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(installer) if isinstance(n, ast.ImportFrom)}
    assert not [n for n in names if n.split(".")[0] == "avatarcam"], "tools/install.py must run before avatarcam"
