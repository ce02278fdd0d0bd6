"""The architectures by name (deepergat.nn.registry): ``--arch`` choices, the paper's parameter
counts, and training through the command line with an architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deepergat.architectures import (
    ARCH_DEFAULTS,
    ARCHITECTURES,
    PAPER_UNUSED,
    architecture_name,
    check_architecture,
)
from deepergat.cli import main
from deepergat.nn.cgcnn import CGCNN
from deepergat.nn.checkpoint import load_checkpoint
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.megnet import MEGNet
from deepergat.nn.mpnn import MPNN
from deepergat.nn.registry import NETS, count_parameters, make_model, model_class
from deepergat.nn.schnet import SchNet

#: The paper's parameter counts (Omee et al. 2022): name, arch, deeper, layers, count.
PAPER_COUNTS = [
    ("SchNet", "schnet", False, 15, 1_102_401),
    ("SchNet", "schnet", False, 20, 1_455_901),
    ("CGCNN", "cgcnn", False, 25, 1_337_101),
    ("CGCNN", "cgcnn", False, 30, 1_590_101),
    ("MEGNet", "megnet", False, 25, 4_857_201),
    ("GATGNN", "gatgnn", False, 25, 863_370),
    ("GATGNN", "gatgnn", False, 30, 1_030_770),
    ("DeeperSchNet", "schnet", True, 15, 1_144_401),
    ("DeeperCGCNN", "cgcnn", True, 15, 873_101),
    ("DeeperMEGNet", "megnet", True, 15, 3_185_201),
    ("DeeperGATGNN", "deepergatgnn", False, 30, 1_089_906),
]


@pytest.mark.parametrize(("name", "arch", "deeper", "layers", "paper"), PAPER_COUNTS)
def test_parameter_counts_are_the_papers(name: str, arch: str, deeper: bool, layers: int,
                                         paper: int) -> None:
    model = make_model(arch, deeper=deeper, layers=layers)
    assert architecture_name(model.config) == name
    fixed, per_layer = PAPER_UNUSED.get(name, (0, 0))
    # the paper counted modules its code builds but never calls (PAPER_UNUSED says which)
    assert count_parameters(model) == paper - fixed - per_layer * layers


def test_names_defaults_and_refusals() -> None:
    assert ARCHITECTURES == ("deepergatgnn", "gatgnn", "cgcnn", "schnet", "megnet", "mpnn")
    assert set(ARCH_DEFAULTS) == set(ARCHITECTURES)
    with pytest.raises(ValueError, match="architecture 'gcn' is not one of deepergatgnn"):
        check_architecture("gcn")
    with pytest.raises(ValueError, match="unknown architecture 'gcn'"):
        model_class({"arch": "gcn"})
    assert architecture_name(make_model("gatgnn", deeper=True).config) == "DeeperGATGNN"
    assert architecture_name(make_model("gatgnn").config) == "GATGNN"
    assert architecture_name({"dgn": False, "skip": False}) == "GATGNN (no norm)"
    assert architecture_name({"dgn": False, "skip": True, "batch_norm": True}) == \
        "GATGNN+BatchNorm+skip"
    assert architecture_name(make_model("mpnn", deeper=True, layers=1).config) == "DeeperMPNN"
    assert {name: model_class({"arch": name}) for name in NETS} == {
        "cgcnn": CGCNN, "schnet": SchNet, "mpnn": MPNN, "megnet": MEGNet}
    assert model_class({}) is model_class({"arch": None}) is DeeperGATGNN


@pytest.mark.slow
def test_train_cli_with_an_architecture(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_store), "--target", "heat_ref", "--arch", "cgcnn",
            "--deeper", "--layers", "2", "--epochs", "2", "--batch-size", "16", "--out",
            str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(out / "best.ckpt")
    assert type(ck.model).__name__ == "CGCNN" and ck.model.config["deeper"] is True
    assert ck.model.config["layers"] == 2
    saved = (out / "config.yaml").read_text()
    assert "arch: cgcnn" in saved and "lr: 0.002" in saved  # the paper's CGCNN rate
    info = CliRunner().invoke(main, ["info", str(out / "best.ckpt"), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["metadata"]["architecture"] == "DeeperCGCNN"
    bad = CliRunner().invoke(main, [*args[:6], "gcn", *args[7:]])
    assert bad.exit_code == 2 and "'gcn' is not one of" in bad.output
    # --resume without --arch/--deeper continues the saved architecture
    again = [a for a in args if a not in ("--arch", "cgcnn", "--deeper")]
    again[again.index("--epochs") + 1] = "3"
    resumed = CliRunner().invoke(main, [*again, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    ck = load_checkpoint(out / "best.ckpt")
    assert type(ck.model).__name__ == "CGCNN" and ck.model.config["deeper"] is True
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + 3
