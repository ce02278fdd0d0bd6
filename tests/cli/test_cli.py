"""The `deepergat` command line: help, version, pack and info, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from structure_helpers import nacl_structure, random_structures, triclinic_structure

from deepergat._version import __version__
from deepergat.cli import main
from deepergat.cli.base import DeepergatGroup, report_errors
from deepergat.errors import DeepergatError
from deepergat.io.store import StructureBatch, write_store

STORE_KEYS = [
    "format",
    "n_structures",
    "n_atoms_total",
    "atoms_per_structure",
    "elements",
    "targets",
    "content_digest",
    "digest_verified",
]


def _run(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0]


@pytest.fixture
def cif_dir(tmp_path: Path) -> Path:
    from pymatgen.io.cif import CifWriter

    d = tmp_path / "cifs"
    d.mkdir()
    (d / "nacl.cif").write_text(str(CifWriter(nacl_structure())))
    (d / "tri.cif").write_text(str(CifWriter(triclinic_structure())))
    return d


def test_version_and_help() -> None:
    r = _run("--version")
    assert r.exit_code == 0 and __version__ in r.stdout
    r = _run("--help")
    assert r.exit_code == 0
    assert "Examples:" in r.stdout and "pack" in r.stdout and "info" in r.stdout
    r = _run("pack", "--help")
    assert r.exit_code == 0 and "--skip-bad" in r.stdout and "Examples:" in r.stdout
    assert "Examples:" in _run("info", "--help").stdout


def test_cli_import_does_not_load_heavy_modules() -> None:
    code = (
        "import sys, deepergat.cli; "
        "heavy = [m for m in ('torch', 'pymatgen', 'ase', 'tqdm') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pack_then_info(tmp_path: Path, cif_dir: Path) -> None:
    out = tmp_path / "s.h5"
    r = _run("pack", cif_dir, "-o", out, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert f"packed 2 structures (11 atoms) from 2 inputs into {out}" in r.stdout
    assert "content digest" in r.stdout

    r = _run("info", out, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert list(info) == STORE_KEYS
    assert info["format"] == "deepergat-structures"
    assert info["n_structures"] == 2 and info["n_atoms_total"] == 11
    assert info["atoms_per_structure"] == {"min": 3, "median": 5.5, "max": 8}
    assert info["elements"] == ["O", "Na", "Si", "Cl", "Ti"]  # by Z
    assert info["targets"] == {}
    assert len(info["content_digest"]) == 64 and info["content_digest"] in r.stdout
    assert info["digest_verified"] is True

    r = _run("info", out)
    assert r.exit_code == 0
    assert "structures       2" in r.stdout and "O Na Si Cl Ti" in r.stdout


def test_info_target_statistics_ignore_nan(tmp_path: Path) -> None:
    data = random_structures(4, seed=5, targets=("y", "empty"))
    for k, v in enumerate([1.0, np.nan, 3.0, 5.0]):
        data[k]["targets"]["y"] = v
        data[k]["targets"]["empty"] = np.nan
    write_store(tmp_path / "s.h5", StructureBatch.from_structures(data), units={"y": "eV"})
    info = json.loads(_run("info", tmp_path / "s.h5", "--json").stdout)
    y = info["targets"]["y"]
    assert y["units"] == "eV" and y["count"] == 3
    assert y["mean"] == pytest.approx(3.0) and y["std"] == pytest.approx(np.std([1, 3, 5]))
    assert (y["min"], y["max"]) == (1.0, 5.0)
    assert info["targets"]["empty"] == {
        "units": "",
        "count": 0,
        "mean": None,
        "std": None,
        "min": None,
        "max": None,
    }
    assert "empty: 0 values" in _run("info", tmp_path / "s.h5").stdout


def test_info_errors(tmp_path: Path, cif_dir: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    _assert_one_line_error(_run("info", text), str(text), "not a deepergat file")
    _assert_one_line_error(_run("info", tmp_path / "missing.h5"), "missing.h5", "no such file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "somebody-else"
    _assert_one_line_error(_run("info", other), str(other), "'somebody-else'")
    store = tmp_path / "s.h5"
    assert _run("pack", cif_dir, "-o", store, "--workers", "1").exit_code == 0
    with h5py.File(store, "a") as f:
        f.attrs["version"] = 7
    _assert_one_line_error(_run("info", store), str(store), "version 7")
    cut = tmp_path / "cut.h5"
    with h5py.File(store, "a") as f:
        f.attrs["version"] = 1
    cut.write_bytes(store.read_bytes()[:1000])
    _assert_one_line_error(_run("info", cut), str(cut))


def test_pack_errors_leave_no_output(tmp_path: Path, cif_dir: Path) -> None:
    out = tmp_path / "o.h5"
    (cif_dir / "broken.cif").write_text("data_x\nloop_\n_atom_site_label\nA\n")
    r = _run("pack", cif_dir, "-o", out, "--workers", "1")
    _assert_one_line_error(r, "broken.cif", "--skip-bad")
    assert not out.exists() and not Path(f"{out}.tmp").exists()

    r = _run("pack", cif_dir, "-o", out, "--workers", "1", "--skip-bad")
    assert r.exit_code == 0, r.output
    assert "skipped 1: 1 unreadable (listed in" in r.stderr
    assert "packed 2 structures" in r.stdout
    assert (tmp_path / "o.skipped.csv").read_text().startswith("source,reason")

    csv_file = tmp_path / "t.csv"
    csv_file.write_text("material_id,cif\n")
    r = _run("pack", csv_file, "-o", out, "--target", "heat_ref:eV")
    _assert_one_line_error(r, str(csv_file), "'heat_ref'")


def test_error_exit_status_in_a_real_process(tmp_path: Path) -> None:
    """The installed entry point: exit status 2 and one line on stderr, no traceback."""
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"\x00" * 64)
    p = subprocess.run(
        [sys.executable, "-m", "deepergat.cli", "info", str(bad)], capture_output=True, text=True
    )
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"error: {bad}: not a deepergat file; deepergat info describes: ")
    assert "deepergat-structures" in lines[0]


def test_error_handling_is_reusable() -> None:
    @click.group(cls=DeepergatGroup)
    def group() -> None:
        pass

    @group.command()
    def boom() -> None:
        raise DeepergatError("first line\n  second line")

    @click.command()
    @report_errors
    def alone() -> None:
        raise DeepergatError("alone failed")

    r = CliRunner().invoke(group, ["boom"])
    _assert_one_line_error(r)
    assert r.stderr == "error: first line second line\n"
    r = CliRunner().invoke(alone, [])
    _assert_one_line_error(r, "alone failed")


def test_verbose_logging_goes_to_stderr(tmp_path: Path, cif_dir: Path) -> None:
    (cif_dir / "notes.txt").write_text("x")
    r = _run("-v", "pack", cif_dir, "-o", tmp_path / "o.h5", "--workers", "1")
    assert r.exit_code == 0
    assert "WARNING" in r.stderr and "notes.txt" in r.stderr
    assert "INFO: packing 2 input(s)" in r.stderr
    assert "WARNING" not in r.stdout


def test_unwritable_outputs_are_one_line(small_model: dict, tmp_path: Path) -> None:
    """Writing where the user may not (here /sys, refused even to root): one line, exit 2."""
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    store = tmp_path / "s.h5"
    write_store(store, parity_structures(5))
    for args in (["predict", str(small_model["checkpoint"]), str(store), "--csv",
                  "/sys/deepergat.csv"],
                 ["export", str(small_model["checkpoint"]), "-o", "/sys/deepergat-export"],
                 ["screen", "--input", str(store), "--model", str(small_model["onnx"]),
                  "--output", "/sys/deepergat.h5"]):
        r = _run(*args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "/sys/deepergat" in lines[0], (args, r.stderr)
        assert "Traceback" not in r.output


def test_environment_errors_name_the_file_and_the_fix() -> None:
    import errno

    from deepergat.errors import environment_error

    full = environment_error(OSError(errno.ENOSPC, "No space left on device", "/tmp/x.h5"))
    assert full is not None and "cannot write /tmp/x.h5: no space left" in str(full)
    assert "MB free there" in str(full) and "run the same command again" in str(full)
    ro = environment_error(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/p.h5"))
    assert ro is not None and "read-only" in str(ro)
    assert environment_error(OSError(errno.EPIPE, "Broken pipe")) is None


# ------------------------------------------------ a full disk as h5py reports it (issue 10)


def _h5py_full_disk(path: Path | str) -> RuntimeError:
    """What h5py raises when HDF5 flushes or closes a file on a full disk: a RuntimeError
    with the errno and the file only in its text."""
    return RuntimeError(
        "Can't decrement id ref count (file write failed: time = Mon Nov 30 17:52:52 2026\n"
        f", filename = '{path}', file descriptor = 3, errno = 28, error message = 'No space "
        "left on device', buf = 0x5557c9cf0ee0, total write size = 95240, bytes this "
        "sub-write = 95240, offset = 49152)"
    )


def _error_lines(result: Result) -> list[str]:
    """stderr without progress-bar frames (tqdm writes them with carriage returns)."""
    frames = result.stderr.replace("\r", "\n").splitlines()
    return [x for x in frames if x.strip() and not x.startswith("screening (")]


def _assert_full_disk_line(result: Result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "ERROR" not in result.output, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "no space left on the device" in lines[0] and "MB free there" in lines[0], lines[0]
    assert "run the same command again" in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_h5py_full_disk_errors_are_recognised() -> None:
    import errno

    from deepergat.errors import environment_error, is_full_disk, user_error

    e = _h5py_full_disk("/tmp/out.h5.tmp")
    assert is_full_disk(e)
    err = environment_error(e, needed=42e6)
    assert err is not None
    # the file the user asked for, not the temporary one that is gone by now
    assert str(err).startswith("cannot write /tmp/out.h5: no space left on the device (")
    assert "MB free there; needs ~42 MB)" in str(err)
    assert environment_error(RuntimeError("Can't synchronously read data")) is None
    assert user_error(ValueError("x")) is None
    # a one-line error raised from a full disk reads like the bare failure
    full = OSError(errno.ENOSPC, "No space left on device", "/tmp/o.csv")
    try:
        raise DeepergatError("o.csv: writing failed") from full
    except DeepergatError as wrapped:
        assert "no space left on the device" in str(user_error(wrapped))
    plain = DeepergatError("plain")
    assert user_error(plain) is plain


def test_pack_on_a_full_disk_is_one_line(tmp_path: Path, cif_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """h5py reports a failed flush as RuntimeError: pack says "no space left" on one line,
    exit 2, and leaves no store (it printed a 38-line traceback, exit 1)."""
    from deepergat.io.store import StoreWriter

    def close(self: StoreWriter) -> str:
        raise _h5py_full_disk(self.path.with_name(self.path.name + ".tmp"))

    monkeypatch.setattr(StoreWriter, "close", close)
    out = tmp_path / "o.h5"
    r = _run("pack", cif_dir, "-o", out, "--workers", "1")
    _assert_full_disk_line(r, str(out))
    assert not out.exists()


def _cif(path: Path) -> Path:
    from pymatgen.io.cif import CifWriter

    path.write_text(str(CifWriter(nacl_structure())))
    return path


def test_predict_csv_on_a_full_disk_is_one_line_and_keeps_out(
        small_model: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Structure files are packed into a temporary store first: a full temporary folder is
    named with TMPDIR; a full disk under --csv names OUT. Either way OUT is untouched and no
    temporary file stays beside it."""
    from deepergat.io.store import StoreWriter

    cif = _cif(tmp_path / "nacl.cif")
    out = tmp_path / "p.csv"
    out.write_text("earlier results\n")
    real_close = StoreWriter.close

    def close(self: StoreWriter) -> str:
        raise _h5py_full_disk(self.path.with_name(self.path.name + ".tmp"))

    monkeypatch.setattr(StoreWriter, "close", close)
    r = _run("predict", small_model["onnx"], cif, "--csv", out)
    _assert_full_disk_line(r, "TMPDIR")
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nacl.cif", "p.csv"]

    monkeypatch.setattr(StoreWriter, "close", real_close)

    def replace(src: object, dst: object) -> None:
        import errno

        if Path(dst) == out:  # the rows' file fails as it is put into place
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", replace)
    r = _run("predict", small_model["onnx"], cif, "--csv", out)
    _assert_full_disk_line(r, str(out))
    assert out.read_text() == "earlier results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nacl.cif", "p.csv"]


def test_screen_on_a_full_disk_names_the_parts_free_and_needed_space(
        small_model: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A part that cannot be written (h5py: RuntimeError) is one line naming the parts
    folder, the free space there and what the run still needs; no traceback."""
    from deepergat.export.samples import parity_structures
    from deepergat.screening.parts import PartsDir

    store = tmp_path / "s.h5"
    write_store(store, parity_structures(30))

    def commit(self: PartsDir, k: int, *args: object, **kwargs: object) -> None:
        raise _h5py_full_disk(self.path / f".chunk-{k:06d}.h5.tmp")

    monkeypatch.setattr(PartsDir, "commit", commit)
    out = tmp_path / "o.h5"
    r = _run("screen", "--input", store, "--model", small_model["onnx"], "--output", out,
             "--workers", "0", "--chunk-size", "10")
    line = _assert_full_disk_line(r, str(tmp_path / "o.h5.parts"), "MB free there; needs ~",
                                  "--output")
    assert "chunks committed so far are kept" in line
    assert not out.exists()


def test_subset_writes_a_runs_split_as_a_store(tmp_path: Path) -> None:
    """``deepergat subset --split RUN:PART`` gives the structures a run held out, as a store
    to evaluate on; ``--ids`` takes a file of ids; bad choices are one line each."""
    cells = random_structures(12, seed=3, targets=("energy",))
    store = tmp_path / "all.h5"
    write_store(store, StructureBatch.from_structures(cells), units={"energy": "eV/atom"})
    run = tmp_path / "run"
    run.mkdir()
    test_ids = [cells[9]["id"], cells[2]["id"]]
    (run / "splits.json").write_text(json.dumps(
        {"seed": 0, "train": [c["id"] for c in cells[3:9]], "val": [cells[0]["id"]],
         "test": test_ids}))
    r = _run("subset", store, "--split", run, "-o", tmp_path / "test.h5")
    assert r.exit_code == 0, r.output
    assert "wrote 2 structures" in r.output
    from deepergat.io.store import Store

    with Store(tmp_path / "test.h5") as s:
        assert s.ids(0, s.n_structures) == [cells[2]["id"], cells[9]["id"]]
        assert s.targets == {"energy": "eV/atom"}
    r = _run("subset", store, "--split", f"{run}:val", "-o", tmp_path / "val.h5")
    assert r.exit_code == 0 and "wrote 1 structures" in r.output
    (tmp_path / "ids.txt").write_text(f"{cells[5]['id']}\n\n{cells[1]['id']}\n")
    r = _run("subset", store, "--ids", tmp_path / "ids.txt", "-o", tmp_path / "ids.h5")
    assert r.exit_code == 0 and "wrote 2 structures" in r.output
    _assert_one_line_error(_run("subset", store, "--split", f"{run}:seed", "-o",
                                tmp_path / "x.h5"), "no 'seed' split", "train, val, test")
    _assert_one_line_error(_run("subset", store, "-o", tmp_path / "x.h5"), "exactly one")
    _assert_one_line_error(_run("subset", store, "--split", tmp_path, "-o", tmp_path / "x.h5"),
                           "cannot read")
    assert not (tmp_path / "x.h5").exists()
