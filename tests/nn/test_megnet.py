"""MEGNet (deepergat.nn.megnet): it pools by the mean, and trains when a batch would hold one
crystal."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from deepergat.cli import main
from deepergat.nn.registry import make_model


def test_megnet_pools_by_the_mean() -> None:
    with pytest.raises(ValueError, match="MEGNet pools by the mean"):
        make_model("megnet", pool="max")
    assert make_model("megnet", layers=1, pool="mean").pool_kind == "mean"


@pytest.mark.slow
def test_megnet_trains_when_the_last_batch_holds_one_crystal(tiny_store: Path,
                                                             tmp_path: Path) -> None:
    # 60 structures, 54 to train: batches of 53 leave one crystal, which BatchNorm over
    # crystals cannot normalize alone; it joins the batch before
    args = ["train", "--data", str(tiny_store), "--target", "heat_ref", "--arch", "megnet",
            "--layers", "1", "--epochs", "1", "--batch-size", "53", "--out",
            str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
