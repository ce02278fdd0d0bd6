"""`ScreenOptions`: the settings by name, grouped by concern, checked with messages that name
the setting (the screen command writes its flag: tests/cli/test_screen_cli.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from deepergat.errors import SettingError
from deepergat.screening.options import (
    Files,
    PredictorSettings,
    Ranking,
    RunControl,
    ScreenOptions,
    StructureChecks,
    default_output,
)


def test_create_puts_every_setting_in_its_group() -> None:
    opts = ScreenOptions.create(
        "c.h5", output="o.h5", embeddings=True, model="m.onnx", device="cpu", trust=True,
        max_atoms=50, overlap_threshold=0.3, top=7, top_order="desc", rank_by="upper",
        rank_k=2.0, chunk_size=10, workers=3, shard="1/4", resume=False, merge_only=True,
        batch_atoms=64, batch_edges=640,
    )
    assert opts.files == Files(Path("c.h5"), Path("o.h5"), True)
    assert opts.predictor == PredictorSettings("m.onnx", "cpu", True)
    assert opts.checks == StructureChecks(50, 0.3)
    assert opts.ranking == Ranking(7, "desc", "upper", 2.0)
    assert opts.control == RunControl(10, 3, "1/4", False, True, 64, 640)
    # every keyword of `create` is a setting, and `settings` gives them all back
    params = [p for p in inspect.signature(ScreenOptions.create).parameters if p != "cls"]
    assert sorted(opts.settings()) == sorted(params)
    assert ScreenOptions.create(**opts.settings()) == opts


def test_defaults_and_the_default_output() -> None:
    opts = ScreenOptions.create("/d/cands.h5")
    assert opts.files.output_path == default_output("/d/cands.h5") == Path(
        "/d/cands.predictions.h5")
    assert opts.control.resume and not opts.control.merge_only and opts.ranking.top is None
    opts.check()
    with pytest.raises(AttributeError):
        opts.checks.max_atoms = 5  # type: ignore[misc]


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("max_atoms", 0, "max_atoms must be at least 1, got 0"),
    ("overlap_threshold", float("nan"), "overlap_threshold must be ≥ 0 Å, got nan"),
    ("top", 0, "top must be at least 1, got 0"),
    ("top_order", "up", "top_order 'up': choose asc or desc"),
    ("rank_by", "median", "rank_by 'median': choose mean, lower or upper"),
    ("rank_k", float("inf"), "rank_k must be a finite number ≥ 0, got inf"),
    ("workers", -1, "workers must be ≥ 0, got -1"),
    ("chunk_size", 0, "chunk_size must be at least 1, got 0"),
])
def test_check_names_the_setting(setting: str, value: object, message: str) -> None:
    opts = ScreenOptions.create("c.h5", **{setting: value})  # type: ignore[arg-type]
    with pytest.raises(SettingError) as e:
        opts.check()
    assert str(e.value) == message
    assert e.value.settings == [setting]
    flag = "--" + setting.replace("_", "-")
    assert e.value.render({setting: flag}) == flag + message[len(setting):]
