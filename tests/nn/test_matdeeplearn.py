"""The MatDeepLearn frame (deepergat.nn.matdeeplearn): how a Deeper variant counts the identity
of a layer that ends in a residual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from model_helpers import model_inputs as _inputs
from model_helpers import perov_structures

from deepergat.architectures import architecture_name
from deepergat.cli import main
from deepergat.nn.build import build_from_config
from deepergat.nn.checkpoint import load_checkpoint
from deepergat.nn.registry import make_model


@pytest.mark.parametrize("arch", ["cgcnn", "schnet", "megnet"])
def test_single_identity_keeps_deep_states_bounded(arch: str) -> None:
    # the paper's Deeper form adds its skip to a layer that ends in a residual already: the
    # states double with every layer (~2^30 at 30 layers); counted once they stay O(1-100)
    inputs = _inputs(perov_structures(4))
    widths = {}
    for identity in ("doubled", "single"):
        torch.manual_seed(0)
        model = make_model(arch, deeper=True, layers=30, identity=identity).double().eval()
        with torch.no_grad():
            widths[identity] = float(model.forward_inputs(inputs)[1].abs().max())
    assert widths["doubled"] > 1e7 and widths["single"] < 1e3
    assert architecture_name(model.config) == f"Deeper{_NAMES[arch]} (single identity)"
    # the paper's form is the default and leaves no trace in the settings (older files equal)
    assert "identity" not in make_model(arch, deeper=True, layers=1).config
    assert build_from_config(model.config).config == model.config
    with pytest.raises(ValueError, match="applies to the Deeper variants of CGCNN, SchNet"):
        make_model(arch, layers=1, identity="single")
    with pytest.raises(ValueError, match="identity 'twice' is not one of doubled, single"):
        make_model(arch, deeper=True, layers=1, identity="twice")


def test_single_identity_is_refused_where_no_residual_is_doubled() -> None:
    with pytest.raises(ValueError, match="applies to the Deeper variants"):
        make_model("mpnn", deeper=True, layers=1, identity="single")
    for arch in ("deepergatgnn", "gatgnn"):
        with pytest.raises(ValueError, match="GATGNN's layer has none"):
            make_model(arch, layers=1, identity="single")


_NAMES = {"cgcnn": "CGCNN", "schnet": "SchNet", "megnet": "MEGNet"}


@pytest.mark.slow
def test_train_cli_single_identity_from_the_run_yaml(tiny_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  identity: single\n")
    args = ["train", "--data", str(tiny_store), "--target", "heat_ref", "--arch", "schnet",
            "--deeper", "--layers", "2", "--epochs", "1", "--batch-size", "16", "--config",
            str(config), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(tmp_path / "run" / "best.ckpt")
    assert ck.model.config["identity"] == "single" and not ck.model.outer_skip
    info = CliRunner().invoke(main, ["info", str(tmp_path / "run" / "best.ckpt"), "--json"])
    assert json.loads(info.output)["metadata"]["architecture"] == \
        "DeeperSchNet (single identity)"
    # without --deeper the setting means nothing: one line, nothing trained
    plain = [a for a in args if a != "--deeper"]
    plain[plain.index(str(tmp_path / "run"))] = str(tmp_path / "plain")
    refused = CliRunner().invoke(main, plain)
    assert refused.exit_code != 0 and "applies to the Deeper variants" in refused.output
    assert not (tmp_path / "plain" / "best.ckpt").exists()
