"""``deepergat train``: a YAML file (flat or sectioned) under the options, the lines it
prints, and its one-line errors, which name flags where the library names settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deepergat.cli import main

TINY = {"dim": 16}


def _train(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["train", *args])
    return r.exit_code, r.output


def test_cli_train_with_config_and_overrides(tiny_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(tiny_store), "target": "heat_ref", "layers": 2, "epochs": 5,
        "batch-size": 16, "model": TINY, "test_fraction": 0.2, "cache_dir": str(tmp_path),
    }))
    out = tmp_path / "run"
    code, output = _train("--config", str(config), "--epochs", "1", "--out", str(out))
    assert code == 0, output
    assert "epoch    1/1" in output and "test MAE" in output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 16 and saved["layers"] == 2
    code, output = _train("--config", str(config), "--target", "nope", "--out",
                          str(tmp_path / "x"))
    assert code == 2 and "no target 'nope'; available: heat_ref" in output
    code, output = _train("--data", str(tiny_store), "--target", "heat_ref")
    assert code == 2 and "--out is required" in output
    code, output = _train("--config", str(config), "--max-time", "soon", "--out",
                          str(tmp_path / "y"))
    assert code == 2 and "HH:MM" in output


def test_a_sectioned_config_file(tiny_store: Path, tmp_path: Path) -> None:
    """Settings in sections count as given: an option left at its default does not override
    them; an option given does."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"data": str(tiny_store), "target": "heat_ref", "test_fraction": 0.2,
                    "cache_dir": str(tmp_path)},
        "network": {"layers": 2, "model": TINY},
        "trainer": {"epochs": 5, "batch_size": 16},
        "run": {"seed": 3},
    }))
    out = tmp_path / "run"
    code, output = _train("--config", str(config), "--epochs", "1", "--out", str(out))
    assert code == 0, output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["epochs"], saved["batch_size"], saved["seed"], saved["layers"]) == (1, 16, 3, 2)
    assert "trainer" not in saved  # runs write the flat form
    config.write_text("trainer:\n  epoch: 3\n")
    code, output = _train("--config", str(config), "--out", str(tmp_path / "x"))
    assert code == 2 and f"error: {config}: unknown setting 'epoch' in section 'trainer'" in output


@pytest.mark.parametrize(("args", "line"), [
    (["--val-fraction", "1.5"], "error: --val-fraction 1.5: must lie in [0, 1)"),
    (["--member", "3", "--ensemble", "2"], "error: --member 3: give 0 to 1 (members of 2)"),
    (["--member", "0"], "error: --member trains one member of --ensemble K or one fold of --cv "
                        "K: give one of them"),
    (["--oof", "x.csv"], "error: --oof gives an ensemble its local error term: give --ensemble K"),
    (["--max-time", "soon"], "error: --max-time 'soon': expected HH:MM, e.g. 23:30"),
    (["--distance-scale", "far"], "error: distance_scale: 'far': give cutoff, data or a length "
                                  "in Å"),
    (["--cv", "1"], "error: --cv 1: need at least 2 folds"),
    (["--cv", "3", "--ensemble", "2"], "error: --cv 3 and --ensemble 2 differ; give one of them"),
    (["--val-fraction", "0"], "error: {store}: no validation structures, but lr_monitor is 'val' "
                              "and keep is 'best'; give --val-fraction > 0 (or --val-data), or "
                              "set lr_monitor: train and keep: last"),
])
def test_mistakes_print_the_lines_they_printed_before(
        tiny_store: Path, tmp_path: Path, args: list[str], line: str) -> None:
    """The lines of the starting commit (4a91ba8) for the same mistakes."""
    code, output = _train("--data", str(tiny_store), "--target", "heat_ref", "--layers", "1",
                          "--device", "cpu", "--cache-dir", str(tmp_path), "--out",
                          str(tmp_path / "run"), *args)
    assert code == 2
    assert output.strip().splitlines()[-1] == line.format(store=tiny_store)


def test_a_config_files_bad_choice_is_named_by_its_key(tiny_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("graph: cubic\n")
    code, output = _train("--config", str(config), "--data", str(tiny_store), "--target",
                          "heat_ref", "--out", str(tmp_path / "run"))
    assert code == 2
    assert output.strip() == "error: graph: 'cubic' is not one of periodic, minimum-image"


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2", "RANK": "0"},
                                 {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}])
def test_a_distributed_launch_whose_ranks_never_start_fails_fast(
    tiny_store: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    """`deepergat train` with a launcher environment but no other ranks: one line, quickly."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SLURM_", "PMI_", "OMPI_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                  "MASTER_"))}
    clean.update(env, DEEPERGAT_RENDEZVOUS_TIMEOUT="3", MASTER_PORT=str(_free_port()))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "deepergat.cli", "train", "--data", str(tiny_store),
                        "--target", "heat_ref", "--epochs", "1", "--layers", "1",
                        "--out", str(tmp_path / "run")], env=clean, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not meet" in lines[0] and "2-process run" in lines[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_diverging_run_exits_2_with_one_line(tiny_store: Path, tmp_path: Path) -> None:
    """``--lr 1e8`` printed NaN metrics, exited 0 and named a best.ckpt it never wrote."""
    out = tmp_path / "run"
    code, output = _train("--data", str(tiny_store), "--target", "heat_ref", "--layers", "1",
                          "--device", "cpu", "--cache-dir", str(tmp_path), "--out", str(out),
                          "--epochs", "2", "--lr", "1e8")
    assert code == 2
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: training diverged in epoch 1")
    assert "(--lr 1e+08)" in last and "start again with a smaller --lr in another --out" in last
    assert "best.ckpt" not in output and "nan" not in output.lower()
    assert not (out / "best.ckpt").exists()


def test_the_summary_names_only_files_that_exist(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data", str(tiny_store), "--target", "heat_ref", "--layers", "1", "--device",
            "cpu", "--cache-dir", str(tmp_path), "--out", str(out), "--epochs", "1"]
    code, output = _train(*args)
    assert code == 0 and f"({out}/best.ckpt)" in output
    (out / "best.ckpt").unlink()  # a finished run resumed after its best.ckpt was moved away
    code, output = _train(*args, "--resume")
    assert code == 0, output
    assert "best.ckpt)" not in output and f"no best.ckpt in {out}" in output
