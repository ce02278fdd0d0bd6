"""The screening driver in one process with the session's exported model: statuses and flags,
chunk-size invariance, resume, refusal to mix runs, shards with the last-task merge,
``--merge-only``, ``--top`` and ``--embeddings``, and file-level errors before any work."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from screen_helpers import (
    SPECIAL,
    agree,
    assert_same_predictions,
    read_predictions,
    run_inprocess,
)
from structure_helpers import damaged_store

from deepergat.contract import MAX_Z
from deepergat.errors import DeepergatError
from deepergat.screening.merge import MissingChunksError
from deepergat.screening.parts import PartsDir
from deepergat.screening.run import ScreenOptions, default_output, merge_only, top_csv_path


def no_parts_left(output: Path) -> bool:
    parts = PartsDir(output)
    return not parts.committed() and not parts.manifest_path.exists()


def test_statuses_flags_and_schema(reference_predictions: Path, small_model: dict[str, Any],
                                   screen_store: Path) -> None:
    p = read_predictions(reference_predictions)
    assert len(p["ids"]) == 300
    np.testing.assert_array_equal(p["index"], np.arange(300))
    pos = {sid: k for k, sid in enumerate(p["ids"])}
    pred = p["predictions"]["heat_ref"]
    for sid, (_, status, flags) in SPECIAL.items():
        k = pos[sid]
        assert (p["status"][k], p["flags"][k]) == (status, flags), sid
        assert np.isnan(pred[k]) == (status != 0), sid
    assert np.isfinite(pred[p["status"] == 0]).all()
    assert set(np.unique(p["status"]).tolist()) == {0, 1, 2, 3, 4, 5, 6}
    assert p["units"] == {"heat_ref": "eV"}
    attrs = p["attrs"]
    assert attrs["format"] == "deepergat-predictions"
    assert attrs["model"] == str(Path(small_model["onnx"]).resolve())
    assert attrs["input"] == str(screen_store.resolve())
    assert len(attrs["model_sha256"]) == 64 and len(attrs["input_digest"]) == 64
    assert "embeddings" not in p
    assert no_parts_left(reference_predictions)


@pytest.mark.parametrize("chunk_size", [7, 1000])
def test_chunk_size_does_not_change_the_file(tmp_path: Path, screen_store: Path,
                                             small_model: dict[str, Any],
                                             reference_predictions: Path,
                                             chunk_size: int) -> None:
    out = tmp_path / "p.h5"
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=chunk_size)
    assert result.outcome == "merged" and result.structures == 300
    assert result.merge.status.sum() == 300
    assert_same_predictions(reference_predictions, out, small_model["std"])


def test_embeddings_and_top(tmp_path: Path, screen_store: Path, small_model: dict[str, Any],
                            reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    result = run_inprocess(screen_store, small_model["onnx"], out, embeddings=True, top=5,
                           top_order="desc", group=False)
    assert result.top_csv == top_csv_path(out) == tmp_path / "p.top.csv"
    p = read_predictions(out)
    ok = p["status"] == 0
    assert p["embeddings"].shape == (300, 64)
    assert np.isfinite(p["embeddings"][ok]).all() and np.isnan(p["embeddings"][~ok]).all()
    with open(result.top_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    values = p["predictions"]["heat_ref"]
    best = np.sort(values[ok])[::-1][:5]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert list(rows[0]) == ["rank", "index", "id", "formula", "heat_ref", "flags",
                             "group_size", "known"]
    np.testing.assert_allclose([float(r["heat_ref"]) for r in rows], best)
    from deepergat.elements import formula
    from deepergat.io.store import Store

    with Store(screen_store) as store:
        for r in rows:
            k = int(r["index"])
            assert p["ids"][k] == r["id"] and int(r["flags"]) == p["flags"][k]
            assert r["formula"] == formula(store.atomic_numbers(k, k + 1)) != ""
    ref = read_predictions(reference_predictions)["predictions"]["heat_ref"]
    np.testing.assert_array_equal(np.isnan(ref), np.isnan(values))
    np.testing.assert_allclose(values[ok], ref[ok], rtol=0, atol=1e-5 * small_model["std"] + 1e-6)


def test_an_ensemble_screens_with_its_spread(tmp_path: Path, screen_store: Path,
                                             small_ensemble: dict[str, Any]) -> None:
    """The std group beside predictions, equal to the checkpoint's, the same whatever the
    chunk size, and a top-K ranked by a confidence bound."""
    from deepergat.export import load

    out = tmp_path / "e.h5"
    result = run_inprocess(screen_store, small_ensemble["onnx"], out, chunk_size=64, top=5,
                           rank_by="upper", rank_k=2.0, group=False)
    p = read_predictions(out)
    ok = p["status"] == 0
    pred, std = p["predictions"]["heat_ref"], p["std"]["heat_ref"]
    assert std.dtype == np.float32 and np.isfinite(std[ok]).all() and (std[ok] > 0).all()
    assert np.isnan(std[~ok]).all()
    with h5py.File(out, "r") as f:
        assert f["std/heat_ref"].attrs["units"] == "eV"
    again = tmp_path / "e2.h5"
    run_inprocess(screen_store, small_ensemble["onnx"], again, chunk_size=7)
    q = read_predictions(again)
    np.testing.assert_array_equal(q["status"], p["status"])
    assert agree(q["std"]["heat_ref"][ok], std[ok], small_ensemble["std"])
    # the checkpoint, in eager torch, gives the same numbers for a few structures
    from deepergat.graphs import build_inputs
    from deepergat.io.store import Store

    with Store(screen_store) as s:
        batch = s.read(0, 40)
    g = build_inputs(batch, max_z=MAX_Z, max_atoms=1000)
    eager = load(small_ensemble["checkpoint"], device="cpu").predict(g.inputs)
    np.testing.assert_array_equal(np.flatnonzero(ok[:40]), g.rows)
    assert agree(eager.std[:, 0], std[:40][g.rows], small_ensemble["std"])
    assert agree(eager.prediction[:, 0], pred[:40][g.rows], small_ensemble["std"])
    with open(result.top_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "index", "id", "formula", "heat_ref", "heat_ref_std",
                             "flags", "group_size", "known"]
    bound = np.where(ok, pred.astype(np.float64) + 2.0 * std, np.inf)
    assert [int(r["index"]) for r in rows] == np.argsort(bound, kind="stable")[:5].tolist()


def test_resume_computes_only_missing_chunks(tmp_path: Path, screen_store: Path,
                                             small_model: dict[str, Any],
                                             reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    first = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="1/3")
    assert first.outcome == "shard-done" and not out.exists()
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32)
    assert result.outcome == "merged"
    assert result.skipped == first.structures and result.structures == 300 - first.structures
    assert_same_predictions(reference_predictions, out, small_model["std"])
    # Already complete: nothing to do, exit 0.
    again = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32)
    assert again.outcome == "already-merged" and again.structures == 0


def test_refuses_to_mix_runs(tmp_path: Path, screen_store: Path,
                             small_model: dict[str, Any]) -> None:
    out = tmp_path / "p.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="0/2")
    for change, key in [({"chunk_size": 16}, "chunk_size"), ({"max_atoms": 500}, "max_atoms"),
                        ({"overlap_threshold": 0.2}, "overlap_threshold"),
                        ({"embeddings": True}, "embeddings")]:
        with pytest.raises(DeepergatError, match=key):
            run_inprocess(screen_store, small_model["onnx"], out,
                          **{"chunk_size": 32, "shard": "1/2", **change})
    other = tmp_path / "other.h5"
    shutil.copy(screen_store, other)
    with h5py.File(other, "a") as f:  # the same digest recorded, other content: another input
        f["positions"][0] = f["positions"][0] + 0.01
    with pytest.raises(DeepergatError, match="input_digest"):
        run_inprocess(other, small_model["onnx"], out, chunk_size=32)
    with h5py.File(other, "a") as f:  # another digest recorded, the same content: the same
        f["positions"][0] = f["positions"][0] - 0.01
        f.attrs["content_digest"] = "0" * 64
    done = run_inprocess(other, small_model["onnx"], out, chunk_size=32, shard="1/2")
    assert done.outcome == "merged"  # with shard 0's parts: the same input
    # --no-resume starts clean under the new settings.
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=16, resume=False)
    assert result.outcome == "merged" and result.skipped == 0


def test_output_of_another_run_is_an_error_before_work(tmp_path: Path, screen_store: Path,
                                                       small_model: dict[str, Any],
                                                       reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    shutil.copy(reference_predictions, out)
    with pytest.raises(DeepergatError, match="belongs to another run"):
        run_inprocess(screen_store, small_model["onnx"], out, max_atoms=30)
    assert not PartsDir(out).path.exists()
    result = run_inprocess(screen_store, small_model["onnx"], out, max_atoms=30, resume=False)
    assert result.outcome == "merged"
    assert (read_predictions(out)["status"] == 2).sum() > 1


def test_shards_and_last_task_merge(tmp_path: Path, screen_store: Path,
                                    small_model: dict[str, Any],
                                    reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    outcomes = [run_inprocess(screen_store, small_model["onnx"], out, chunk_size=16,
                              shard=f"{i}/3") for i in (2, 0, 1)]
    assert [r.outcome for r in outcomes] == ["shard-done", "shard-done", "merged"]
    assert sum(r.structures for r in outcomes) == 300
    assert outcomes[-1].merge.n_structures == 300
    assert_same_predictions(reference_predictions, out, small_model["std"])
    assert no_parts_left(out)


@pytest.mark.parametrize("when", ["before its look at the parts", "before its claim"])
def test_a_task_that_finishes_as_another_merges_ends_without_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, screen_store: Path,
        small_model: dict[str, Any], reference_predictions: Path, when: str) -> None:
    """Two array tasks finish together: the other one merges (output written, parts and its
    claim removed) between this task's last commit and its look at the parts, or between that
    look and its claim. This task must report the merge as the other's, not fail on missing
    parts (a CI failure under SLURM)."""
    from deepergat.screening import compute
    from deepergat.screening.run import _merge_manifest
    from deepergat.system.launch import claim_token

    out = tmp_path / "p.h5"
    first = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=40, shard="0/2")
    assert first.outcome == "shard-done"
    merged: list[str] = []

    def other_task_merges() -> None:  # what the other task's `_finish` does
        if not merged:
            merged.append("claiming")
            other = PartsDir(out)
            assert other.claim_merge(claim_token())
            merged[0] = _merge_manifest(other, other.read_manifest(), None).outcome

    if when == "before its claim":
        real_claim = PartsDir.claim_merge

        def claim(self: PartsDir, token: str) -> bool:
            other_task_merges()
            return real_claim(self, token)

        monkeypatch.setattr(PartsDir, "claim_merge", claim)
    else:
        real_result = compute._rank_result

        def rank_result(*args: Any) -> Any:
            other_task_merges()
            return real_result(*args)

        monkeypatch.setattr(compute, "_rank_result", rank_result)
    late = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=40, shard="1/2")
    assert merged == ["merged"]
    assert late.outcome == "merge-claimed" and not late.missing
    assert_same_predictions(reference_predictions, out, small_model["std"])
    assert no_parts_left(out) and not list(PartsDir(out).path.glob("merge-claim-*"))


def claim_in_a_process_that_dies(parts: PartsDir, token: str) -> None:
    """The merge claim of a process that is gone (killed while merging)."""
    import subprocess
    import sys

    code = ("import sys; from deepergat.screening.parts import PartsDir; "
            f"assert PartsDir({str(parts.output)!r}).claim_merge({token!r})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_merge_only(tmp_path: Path, screen_store: Path, small_model: dict[str, Any],
                    reference_predictions: Path) -> None:
    out = tmp_path / "p.h5"
    opts = ScreenOptions.create(screen_store, model=str(small_model["onnx"]), output=out,
                                merge_only=True, top=3)
    with pytest.raises(DeepergatError, match="nothing to merge"):
        merge_only(opts)
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=40, shard="0/2")
    with pytest.raises(MissingChunksError) as err:
        merge_only(opts)
    missing = err.value.missing
    assert missing and "chunks" in str(err.value) and "[" in str(err.value)
    assert not out.exists()
    # The other task finds every chunk committed and the merge claimed by a task that was
    # killed while merging: it takes the claim over and merges (never exits without output).
    claim_in_a_process_that_dies(PartsDir(out), "local")
    second = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=40, shard="1/2",
                           top=3)
    assert second.outcome == "merged" and second.merge.n_structures == 300
    assert top_csv_path(out).exists()
    assert_same_predictions(reference_predictions, out, small_model["std"])
    assert merge_only(opts).outcome == "already-merged"
    # Another model's output: not "already merged".
    wrong = ScreenOptions.create(screen_store, model=str(small_model["checkpoint"]), output=out,
                                 merge_only=True)
    with pytest.raises(DeepergatError, match="another run"):
        merge_only(wrong)


def test_file_level_errors_before_any_work(tmp_path: Path, screen_store: Path,
                                           small_model: dict[str, Any]) -> None:
    onnx = small_model["onnx"]
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not a model")
    cases = [
        (tmp_path / "absent.h5", onnx, tmp_path / "o1.h5", "no such file"),
        (junk, onnx, tmp_path / "o2.h5", "junk.h5"),
        (screen_store, tmp_path / "absent.onnx", tmp_path / "o3.h5", "absent.onnx"),
        (screen_store, bad_model, tmp_path / "o4.h5", "bad.onnx"),
        (screen_store, onnx, screen_store, "input store"),
    ]
    for store, model, out, match in cases:
        with pytest.raises(DeepergatError, match=match):
            run_inprocess(store, model, out)
        assert not PartsDir(out).path.exists()
    with pytest.raises(DeepergatError, match=r"^top must be at least 1"):
        run_inprocess(screen_store, onnx, tmp_path / "o5.h5", top=0)


def test_shard_from_slurm_array(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                screen_store: Path, small_model: dict[str, Any]) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    out = tmp_path / "p.h5"
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=50)
    assert result.shard == (0, 2) and result.outcome == "shard-done"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "9")
    with pytest.raises(DeepergatError, match="--shard"):
        run_inprocess(screen_store, small_model["onnx"], out, chunk_size=50)
    # --shard wins over the environment
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=50, shard="1/2")
    assert result.outcome == "merged"


def test_default_output_and_top_paths() -> None:
    assert default_output("/d/cands.h5") == Path("/d/cands.predictions.h5")
    assert top_csv_path("/d/cands.predictions.h5") == Path("/d/cands.predictions.top.csv")


def test_same_numbers_as_deepergat_predict(screen_store: Path, small_model: dict[str, Any],
                                           reference_predictions: Path) -> None:
    from deepergat.api.predict import predict_inputs

    _, rows = predict_inputs(small_model["checkpoint"], [screen_store])
    rows = list(rows)
    p = read_predictions(reference_predictions)
    assert [r.id for r in rows] == p["ids"]
    assert [r.status for r in rows] == p["status"].tolist()
    ok = p["status"] == 0
    values = np.array([r.values[0] for r in rows])
    pred = p["predictions"]["heat_ref"]
    assert agree(values[ok], pred[ok], small_model["std"]), np.abs(values[ok] - pred[ok]).max()


def test_everything_screened_out(tmp_path: Path, screen_store: Path,
                                 small_model: dict[str, Any]) -> None:
    out = tmp_path / "p.h5"
    result = run_inprocess(screen_store, small_model["onnx"], out, max_atoms=1, top=5)
    assert result.outcome == "merged"
    p = read_predictions(out)
    assert set(np.unique(p["status"]).tolist()) <= {1, 2, 3, 4, 5}
    assert np.isnan(p["predictions"]["heat_ref"]).all()
    assert top_csv_path(out).read_text().strip() == (
        "rank,index,id,formula,heat_ref,flags,group_size,known")


def test_empty_store(tmp_path: Path, small_model: dict[str, Any]) -> None:
    from deepergat.io.store import StoreWriter

    store = tmp_path / "empty.h5"
    with StoreWriter(store):
        pass
    out = tmp_path / "p.h5"
    result = run_inprocess(store, small_model["onnx"], out, top=3, embeddings=True)
    assert result.outcome == "merged" and result.merge.n_structures == 0
    p = read_predictions(out)
    assert p["ids"] == [] and p["embeddings"].shape == (0, 64)


# ------------------------------------------- expected failures on the command line (issue 10)


def _cli_lines(stderr: str) -> list[str]:
    """stderr without progress-bar frames (tqdm writes them with carriage returns)."""
    frames = stderr.replace("\r", "\n").splitlines()
    return [x for x in frames if x.strip() and not x.startswith("screening (")]


@pytest.mark.parametrize("dataset", ["positions", "lattice", "atomic_numbers", "ids"])
def test_a_damaged_store_block_is_one_line_without_a_traceback(
        tmp_path: Path, screen_store: Path, small_model: dict[str, Any], dataset: str) -> None:
    """An expected failure met while working (here a damaged block of the input store) is one
    line naming the store and the dataset, exit 2 — not "ERROR: rank 0 failed" and a
    traceback first. With -vv the traceback is there for whoever debugs."""
    from click.testing import CliRunner

    from deepergat.cli.screen import screen

    store = damaged_store(screen_store, tmp_path / "damaged.h5", dataset)
    args = ["--input", str(store), "--model", str(small_model["onnx"]), "--output",
            str(tmp_path / "o.h5"), "--workers", "0"]
    r = CliRunner().invoke(screen, args)
    assert r.exit_code == 2, r.output
    lines = _cli_lines(r.stderr)
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "damaged.h5: damaged structure store" in lines[0] and dataset in lines[0], lines[0]
    assert r.stdout == ""
    if dataset == "positions":
        r = CliRunner().invoke(screen, [*args, "-vv"])
        assert r.exit_code == 2 and "Traceback" in r.stderr
        assert _cli_lines(r.stderr)[-1] == lines[0]


def test_an_unexpected_failure_keeps_its_traceback(
        tmp_path: Path, screen_store: Path, small_model: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A bug is not the user's to fix: it is logged with its traceback and raised as it is."""
    from click.testing import CliRunner

    from deepergat.cli.screen import screen
    from deepergat.screening import pipeline

    def run(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline.Pipeline, "run", run)
    with caplog.at_level("ERROR", logger="deepergat"):
        r = CliRunner().invoke(screen, ["--input", str(screen_store), "--model",
                                        str(small_model["onnx"]), "--output",
                                        str(tmp_path / "o.h5"), "--workers", "0"])
    assert isinstance(r.exception, ZeroDivisionError)
    assert "rank 0 failed" in caplog.text and "ZeroDivisionError" in caplog.text


def test_a_worker_death_is_one_line(tmp_path: Path, screen_store: Path,
                                    small_model: dict[str, Any],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's error for a worker process killed by the OOM killer (see
    test_pipeline.py for the real kill) reaches the user as its one line."""
    from concurrent.futures.process import BrokenProcessPool

    from click.testing import CliRunner

    from deepergat.cli.screen import screen
    from deepergat.screening import pipeline

    real = pipeline.Pipeline.run

    def run(self: Any, next_chunk: Any, commit: Any, **kwargs: Any) -> Any:
        def broken() -> int | None:
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")
        return real(self, broken, commit, **kwargs)

    monkeypatch.setattr(pipeline.Pipeline, "run", run)
    r = CliRunner().invoke(screen, ["--input", str(screen_store), "--model",
                                    str(small_model["onnx"]), "--output",
                                    str(tmp_path / "o.h5"), "--workers", "0"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    lines = _cli_lines(r.stderr)
    assert len(lines) == 1 and "a worker process of this rank died" in lines[0], r.stderr


def test_no_resume_discards_parts_of_an_older_deepergat(tmp_path: Path, screen_store: Path,
                                                        small_model: dict[str, Any]) -> None:
    """Parts whose manifest has no run id (an older deepergat's) cannot be resumed (one line
    says why) and --no-resume replaces them (before the fix it failed like resuming)."""
    import json

    out = tmp_path / "p.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="0/2")
    manifest_path = PartsDir(out).manifest_path
    old = json.loads(manifest_path.read_text())
    del old["run"]
    manifest_path.write_text(json.dumps(old))
    with pytest.raises(DeepergatError, match="older deepergat; pass resume"):
        run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="1/2")
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="0/2",
                           resume=False)
    assert result.outcome == "shard-done" and result.skipped == 0
    assert "run" in json.loads(manifest_path.read_text())
