"""The package's layout is its architecture (docs/design.md §2): the layers import only
downward, nothing imports in a cycle, and the tests mirror the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deepergat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(deepergat.__file__).resolve().parent
#: The layers, low to high, as pyproject.toml's import-linter contract writes them.
LAYERS = ("system", "io", "graphs", "nn", "training", "export", "screening", "api", "cli")


def test_import_contracts_hold() -> None:
    """pyproject.toml's contracts: no import goes up a layer (imports inside functions
    included), and no two modules or packages import each other."""
    linter = shutil.which("lint-imports")
    if linter is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    r = subprocess.run([linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "2 kept, 0 broken" in r.stdout


def test_layers_are_the_subpackages() -> None:
    """Every layer is a subpackage with a test folder of its own; nothing else but the shared
    facts sits at the top."""
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert subpackages == sorted(LAYERS)
    for layer in LAYERS:
        assert (ROOT / "tests" / layer).is_dir(), f"tests/{layer}/ mirrors deepergat/{layer}/"
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == ["_version", "architectures", "contract", "elements", "errors", "metadata"]


def test_top_level_import_stays_light() -> None:
    """``import deepergat`` and the screening path's modules import neither torch nor a
    structure library (workers and ranks would pay seconds each)."""
    code = ("import sys, deepergat, deepergat.screening.run, deepergat.export, deepergat.cli; "
            "print(sorted(m for m in ('torch', 'torch_geometric', 'pymatgen', 'ase') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_helper_modules_import_by_name_under_importlib() -> None:
    """Test modules import with ``--import-mode=importlib`` (mirrored folders share basenames
    such as ``test_model.py``), so a helper module imports only from a folder that
    pyproject.toml's ``pythonpath`` lists, and two helpers never share a name."""
    import tomllib

    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--import-mode=importlib" in options["addopts"]
    listed = {(ROOT / p).resolve() for p in options["pythonpath"]}
    helpers = sorted((ROOT / "tests").rglob("*_helpers.py"))
    assert len({h.name for h in helpers}) == len(helpers)
    for helper in helpers:
        where = helper.relative_to(ROOT)
        assert helper.parent.resolve() in listed, f"{where}: add its folder to pythonpath"
