"""The run folder's files: their exact form, written whole, read back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from deepergat.training.config import TrainConfig
from deepergat.training.outputs import (
    EpochRecord,
    plot_learning_curve,
    read_metrics,
    write_json,
    write_metrics,
    write_run_files,
)
from deepergat.training.splits import RunSplits

ROWS = [EpochRecord(1, 0.005, 0.51234567, 0.4, 1.23456), EpochRecord(2, 0.004, 0.3, math.nan, 2.0)]


def test_metrics_csv_has_the_form_runs_wrote(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_metrics(path, ROWS)
    assert path.read_bytes() == (b"epoch,lr,train_mae,val_mae,seconds\r\n"
                                 b"1,0.005,0.512346,0.4,1.235\r\n"
                                 b"2,0.004,0.3,nan,2.000\r\n")
    back = read_metrics(path)
    assert [(r.epoch, r.lr, r.train_mae) for r in back] == [(1, 0.005, 0.512346), (2, 0.004, 0.3)]
    assert math.isnan(back[1].val_mae)
    assert read_metrics(tmp_path / "missing.csv") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_the_learning_curve_is_a_png_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "learning_curve.png"
    plot_learning_curve(ROWS, path, units="eV")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_learning_curve([r for r in ROWS if math.isnan(r.val_mae)], path)  # no validation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_curve.png"]


def test_config_yaml_and_splits_json(tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict({"data": "perov.h5", "target": "heat_ref", "out": str(tmp_path),
                                 "seed": 3, "trainer": {"epochs": 4}})
    from deepergat.training.data import GraphSet

    g = GraphSet(ids=["a", "b", "c"], status=np.zeros(3, np.uint8), n_atoms=np.ones(3, int),
                 atom_offset=np.arange(3), atomic_numbers=np.ones(3, int),
                 neighbors=np.zeros((3, 1), np.int32), distances=np.zeros((3, 1), np.float32),
                 degree=np.ones(3, np.int32), digest="d", cutoff=8.0, max_neighbors=12)
    splits = RunSplits(train=(g, np.array([2, 0])), val=(g, np.array([1])))
    write_run_files(tmp_path, cfg, splits)
    written = (tmp_path / "config.yaml").read_text()
    assert yaml.safe_load(written) == cfg.to_dict()
    assert written.startswith("data: perov.h5\ntarget: heat_ref\nout: ")  # flat, in run order
    assert "epochs: 4\n" in written and "trainer" not in written
    assert (tmp_path / "splits.json").read_text() == (
        '{"data": "perov.h5", "seed": 3, "train": ["c", "a"], "val": ["b"]}')
    assert TrainConfig.from_dict(yaml.safe_load(written)) == cfg


def test_json_documents_are_indented_and_whole(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"n": 2, "mae": 0.5})
    assert (tmp_path / "m.json").read_text() == '{\n  "n": 2,\n  "mae": 0.5\n}'
    assert json.loads((tmp_path / "m.json").read_text()) == {"n": 2, "mae": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_user_text_is_drawn_as_written(tmp_path: Path) -> None:
    """Units and titles that read as matplotlib mathtext (an unknown command, an unclosed
    brace, a lone superscript) are drawn as written, not parsed."""
    path = tmp_path / "learning_curve.png"
    for units, title in (("$\\notacommand$", ""), ("$x^$", "$\\frac{1$"), ("eV$", "a $b$ c")):
        plot_learning_curve(ROWS, path, units=units, title=title)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
