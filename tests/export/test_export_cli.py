"""``deepergat export``: success, a failed parity check leaving nothing behind, errors; and
``deepergat predict`` giving the same numbers for the checkpoint and each exported file."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from click.testing import CliRunner

from deepergat.cli import main


def test_export_cli_torchscript(exported_tiny, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", str(exported_tiny["checkpoint"]),
                                       "--format", "torchscript", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "model.pt" in result.output and "parity max |Δ|" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.pt"]


def test_failed_parity_removes_files_and_exits_2(exported_tiny, tmp_path, monkeypatch):
    from deepergat.export import exporter

    real = exporter._reference

    def skewed(model, cases):
        return [(y + np.float32(1e-3), e) for y, e in real(model, cases)]

    monkeypatch.setattr(exporter, "_reference", skewed)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    result = CliRunner().invoke(main, ["export", str(exported_tiny["checkpoint"]),
                                       "--format", "torchscript", "--format", "pt2",
                                       "-o", str(out)])
    assert result.exit_code == 2
    assert "failed its parity check" in result.output
    assert "torchscript:" in result.output and "first disagreement" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_killed_exports_staging_files_are_removed_by_the_next_export(exported_tiny, tmp_path):
    """kill -9 leaves staging files, their metadata copies, a save folder and the folder's lock;
    the next export into the folder removes them and leaves other files alone."""
    import subprocess
    import sys

    from deepergat.system.lock import OutputLock

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not ours")
    (out / ".deepergat-export-99999.model.onnx").write_bytes(b"half an onnx file")
    (out / "..deepergat-export-99999.model.meta-tmp.pt2").write_bytes(b"half a copy")
    (out / ".deepergat-save-k2j4h1").mkdir()
    (out / ".deepergat-save-k2j4h1" / "model.pt2").write_bytes(b"half an archive")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    corpse = OutputLock(out / ".deepergat-export", "run-dead")
    corpse.holder = corpse.path / f"holder-{corpse.host}-{corpse.node}-{dead.pid}-0"
    corpse.acquire()
    corpse._stop.set()  # killed: no heartbeat, no release
    result = CliRunner().invoke(main, ["export", str(exported_tiny["checkpoint"]),
                                       "--format", "torchscript", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "model.pt"]


def test_two_exports_into_one_folder_never_mix(exported_tiny, tmp_path):
    from deepergat.system.lock import OutputLock, run_token

    out = tmp_path / "out"
    out.mkdir()
    other = OutputLock(out / ".deepergat-export", run_token())
    other.acquire()  # an export writing here right now
    try:
        result = CliRunner().invoke(main, ["export", str(exported_tiny["checkpoint"]),
                                           "--format", "torchscript", "-o", str(out)])
        assert result.exit_code == 2
        assert "another run is writing it" in result.output
        assert "export into another folder" in result.output
        assert sorted(p.name for p in out.iterdir()) == [".deepergat-export.lock"]
    finally:
        other.release()
    assert list(out.iterdir()) == []


def test_export_refuses_an_exported_file(exported_tiny, tmp_path):
    result = CliRunner().invoke(main, ["export", str(exported_tiny["onnx"]), "-o",
                                       str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "export starts from a checkpoint" in result.output


def test_export_unknown_model(tmp_path):
    result = CliRunner().invoke(main, ["export", "no-such-model", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no bundled model of that name" in result.output


def test_export_with_check_data_store(exported_tiny, tmp_path):
    from deepergat.export import export_model
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    store = tmp_path / "check.h5"
    write_store(store, parity_structures(300, seed=11))
    result = export_model(exported_tiny["checkpoint"], tmp_path / "o", formats="torchscript",
                          check_data=store, big_batch=512)
    assert result.check_source == f"300 structures of {store}"
    assert result.files[0].parity.n_structures >= 300


def _cli_rows(model, store):
    result = CliRunner().invoke(main, ["predict", str(model), str(store), "--trust"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["id", "heat_ref", "status", "flags"]
    return {r[0]: (float(r[1]) if r[1] else np.nan, int(r[2])) for r in rows[1:]}


def test_predict_same_numbers_for_checkpoint_and_exported_files(exported_tiny, tmp_path):
    from deepergat.api.predict import predict_inputs
    from deepergat.export import agree
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    structures = parity_structures(40, seed=21)
    structures.atomic_numbers[:2] = 110  # one structure outside the element table: status 3
    store = tmp_path / "s.h5"
    write_store(store, structures)

    def rows(model):
        _, it = predict_inputs(model, [store], batch_size=16, trust=True)
        out = list(it)
        return [r.id for r in out], np.array([r.values for r in out]), [r.status for r in out]

    ids, ref, status = rows(exported_tiny["checkpoint"])
    assert status.count(3) == 1 and status.count(0) == 39
    ok = np.array(status) == 0
    cli_ref = _cli_rows(exported_tiny["checkpoint"], store)
    for fmt in ("onnx", "torchscript", "pt2"):
        got_ids, got, got_status = rows(exported_tiny[fmt])
        assert got_ids == ids and got_status == status
        assert agree(ref[ok], got[ok], [0.8]).all(), fmt
        assert np.isnan(got[~ok]).all()
        cli = _cli_rows(exported_tiny[fmt], store)
        assert cli.keys() == cli_ref.keys()
        for k, (value, st) in cli_ref.items():
            assert cli[k][1] == st
            if st == 0:  # printed with 6 significant digits: at most one step in the last
                assert abs(cli[k][0] - value) <= 1.01e-5 * max(abs(value), 1e-30), (fmt, k)


def test_evaluate_accepts_exported_files(exported_tiny, tmp_path):
    from deepergat.api.evaluate import evaluate
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    structures = parity_structures(30, seed=4)
    structures.targets["heat_ref"] = np.linspace(-2, 0, 30)
    store = tmp_path / "labelled.h5"
    write_store(store, structures, units={"heat_ref": "eV"})
    ref = evaluate(exported_tiny["checkpoint"], store, "heat_ref", cache_dir=tmp_path / "c")
    for fmt in ("onnx", "torchscript", "pt2"):
        got = evaluate(exported_tiny[fmt], store, "heat_ref", cache_dir=tmp_path / "c",
                       trust=True)
        assert got.n == ref.n and got.units == "eV"
        assert got.mae == pytest.approx(ref.mae, abs=1e-5)
