"""The core install: without PyTorch, ONNX or onnxscript, every command a screening node needs
works — pack, screen, predict, info, report, extract, evaluate with an exported model and the
notebook API — and the commands that need an extra say which, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: What a core install lacks (the `[train]` and `[test]` extras).
BLOCKED = ("torch", "torch_geometric", "onnx", "onnxscript")

_SITE = '''
import importlib.abc, os, sys

class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            with open(os.environ["DEEPERGAT_BLOCK_MARKER"], "a") as fh:
                fh.write(f"{{os.getpid()}} {{name}}\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
'''


@pytest.fixture
def core(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import the extras' packages."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITE.format(blocked=BLOCKED))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PMI_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["DEEPERGAT_BLOCK_MARKER"] = str(tmp_path / "blocked.txt")
    return env


def run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepergat.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_screening_node_needs_no_pytorch(core: dict[str, str], tmp_path: Path) -> None:
    from pymatgen.core import Lattice, Structure

    frac = [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]]
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for k, (a, b) in enumerate([("Sr", "Ti"), ("Ba", "Ti"), ("K", "Nb"), ("Ca", "Zr")]):
        Structure(Lattice.cubic(3.9 + 0.05 * k), [a, b, "O", "O", "O"], frac).to(
            filename=str(cifs / f"{a}{b}O3.cif"))
    model = "perovskite-heat-single"
    steps = [
        ["pack", str(cifs), "-o", "c.h5"],
        ["screen", "--input", "c.h5", "--top", "3", "--workers", "0"],
        ["predict", model, "c.h5", str(cifs / "SrTiO3.cif"), "--csv", "p.csv"],
        ["info", "c.predictions.h5"],
        ["info", "c.h5"],
        ["report", "c.predictions.h5"],
        ["extract", "c.predictions.h5", "--top", "2", "-o", "short"],
    ]
    for args in steps:
        r = run(core, *args, cwd=tmp_path)
        assert r.returncode == 0, f"{args}: {r.stderr[-2000:]}"
    assert (tmp_path / "c.predictions.top.csv").is_file()
    assert (tmp_path / "short" / "selection.csv").is_file()
    code = ("import deepergat; from pymatgen.core import Structure; "
            f"s = Structure.from_file({str(cifs / 'SrTiO3.cif')!r}); "
            f"print(deepergat.load({model!r}).predict([s]).to_csv(index=False))")
    r = subprocess.run([sys.executable, "-c", code], env=core, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "SrTiO3" in r.stdout, r.stderr[-2000:]
    # nothing reached for a blocked package on these paths
    marker = Path(core["DEEPERGAT_BLOCK_MARKER"])
    assert not marker.exists(), marker.read_text()


def test_commands_that_need_an_extra_say_which(core: dict[str, str], tmp_path: Path) -> None:
    ckpt = Path(__file__).resolve().parents[1] / "data" / "legacy" / "deepergatgnn.ckpt"
    for args in (["export", "perovskite-heat-single", "-o", "exported"],
                 ["info", str(ckpt)],
                 ["predict", str(ckpt), "x.cif"]):
        r = run(core, *args, cwd=tmp_path)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2, r.stderr[-2000:]
        assert len(lines) == 1 and "pip install 'deepergat[train]'" in lines[0], r.stderr
    r = run(core, "train", "--data", "x.h5", "--target", "t", "--out", "run", cwd=tmp_path)
    assert r.returncode == 2
    (tmp_path / "samples.pt").write_bytes(b"PK\x03\x04 not read")
    r = run(core, "pack", "samples.pt", "-o", "g.h5", cwd=tmp_path)
    assert r.returncode == 2 and "deepergat[train]" in r.stderr, r.stderr
    assert not (tmp_path / "g.h5").exists()
