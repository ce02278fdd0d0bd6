"""`deepergat.api.info` and `deepergat info`: a file recognised by its content, described as
JSON-ready data and as text, for a store, a predictions file, a checkpoint and exported models.

The model and predictions files are the small fixtures in tests/data/legacy/ (an ensemble's
checkpoint, its ONNX and ``.pt2`` exports and a screen with it; tests/data/README.md). The
exact text the starting commit printed for each is checked by tests/test_legacy_files.py; here,
what the description says about the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from deepergat.api.info import describe, file_kind, format_text
from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.io.store import Store, StoreWriter

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
KINDS = {
    "store.h5": "deepergat-structures",
    "predictions.h5": "deepergat-predictions",
    "ensemble.ckpt": "deepergat-checkpoint",
    "cgcnn.ckpt": "deepergat-checkpoint",
    "exported/model.onnx": "deepergat-onnx",
    "exported/model.pt2": "deepergat-pt2",
}


@pytest.mark.parametrize(("name", "kind"), list(KINDS.items()))
def test_each_kind_is_recognised_by_content_and_described_as_json(name: str, kind: str,
                                                                   tmp_path: Path) -> None:
    assert file_kind(LEGACY / name) == kind
    info = describe(LEGACY / name)
    assert info["format"] == kind
    json.dumps(info)  # plain values that --json can print (no numpy scalars or arrays)
    # a misleading name changes nothing: the content decides
    renamed = tmp_path / "renamed.bin"
    shutil.copy(LEGACY / name, renamed)
    assert file_kind(renamed) == kind


def test_hdf5_files_by_their_format_attribute(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "plain.h5", "w"):
        pass
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "somebody-else"
    with h5py.File(tmp_path / "ub.h5", "w", userblock_size=512) as f:
        f.attrs["format"] = "deepergat-structures"
    (tmp_path / "notes.txt").write_text("hello")
    assert file_kind(tmp_path / "plain.h5") == "hdf5"
    assert file_kind(tmp_path / "other.h5") == "somebody-else"
    assert file_kind(tmp_path / "ub.h5") == "deepergat-structures"  # after a user block
    assert file_kind(tmp_path / "notes.txt") == "unknown"


def test_store_description_counts_what_the_store_holds() -> None:
    info = describe(LEGACY / "store.h5")
    with Store(LEGACY / "store.h5") as store:
        n = store.n_atoms
        batch = store.read(0, len(store))
        y = store.target("heat_ref")
        digest = store.content_digest
    assert info["n_structures"] == len(n) == 20
    assert info["n_atoms_total"] == int(n.sum())
    assert info["atoms_per_structure"] == {"min": int(n.min()), "median": float(np.median(n)),
                                           "max": int(n.max())}
    from ase.data import chemical_symbols

    zs = sorted(set(batch.atomic_numbers.tolist()))
    assert info["elements"] == [chemical_symbols[z] if z < len(chemical_symbols) else f"Z{z}"
                                for z in zs]
    assert info["elements"][-1] == "Z120"  # outside the periodic table, still listed
    ok = y[~np.isnan(y)]
    assert info["targets"]["heat_ref"] == pytest.approx(
        {"units": "eV", "count": len(ok), "mean": ok.mean(), "std": ok.std(), "min": ok.min(),
         "max": ok.max()})
    assert info["content_digest"] == digest and info["digest_verified"] is True


def test_a_store_edited_after_packing_is_described_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    shutil.copy(LEGACY / "store.h5", path)
    with h5py.File(path, "a") as f:
        positions = f["positions"]
        first = positions[0]
        positions[0] = first + 0.5
    info = describe(path)
    assert info["digest_verified"] is False
    last = format_text(info, path).splitlines()[-1]
    assert last.split()[:3] == ["content", "digest", info["content_digest"]]
    assert "DOES NOT MATCH the arrays" in last
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 0 and "DOES NOT MATCH" in r.stdout  # described, not refused


def test_an_empty_store(tmp_path: Path) -> None:
    with StoreWriter(tmp_path / "empty.h5", targets={"gap": "eV"}):
        pass
    info = describe(tmp_path / "empty.h5")
    assert info["n_structures"] == info["n_atoms_total"] == 0
    assert info["atoms_per_structure"] == {"min": None, "median": None, "max": None}
    assert info["elements"] == [] and info["targets"]["gap"]["count"] == 0
    text = format_text(info, "empty.h5")
    assert "atoms            0 (per structure: min -, median -, max -)" in text
    assert "elements (0)     -" in text and "gap [eV]: 0 values, mean -" in text


def test_predictions_description_counts_statuses_flags_and_values() -> None:
    info = describe(LEGACY / "predictions.h5")
    with h5py.File(LEGACY / "predictions.h5", "r") as f:
        status = f["status"][:]
        flags = f["flags"][:]
        y = f["predictions/heat_ref"][:].astype(np.float64)
        s = f["std/heat_ref"][:].astype(np.float64)
        dim = f["embeddings"].shape[1]
        digest = f.attrs["input_digest"]
    assert info["n_structures"] == len(status)
    assert info["status"] == {int(c): int((status == c).sum()) for c in np.unique(status)}
    assert info["flags"] == {"unseen_element": int((flags & 1).sum())}
    target = info["targets"]["heat_ref"]
    ok = ~np.isnan(y)
    assert target["units"] == "eV" and target["count"] == int(ok.sum())
    assert target["mean"] == pytest.approx(y[ok].mean())
    assert target["std_stats"]["min"] == pytest.approx(s[ok].min())
    assert info["embeddings"] == dim and info["input_digest"] == digest
    lines = format_text(info, "p.h5").splitlines()
    assert lines[0] == "p.h5: deepergat predictions"
    assert f"  structures       {len(status)}" in lines
    assert f"  status           0 ok: {int((status == 0).sum())}" in lines
    assert "                   6 two atoms closer than --overlap-threshold: 1" in lines
    assert any("heat_ref ensemble spread (calibrated σ)" in line for line in lines)
    assert f"  embeddings       {dim} wide" in lines


def test_checkpoint_description_carries_its_metadata() -> None:
    torch = pytest.importorskip("torch")
    path = LEGACY / "ensemble.ckpt"
    info = describe(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    meta = info["metadata"]
    assert info["size"] == path.stat().st_size
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["kind"] == "deepergat-checkpoint" and meta["format"] == 2
    assert meta["model"] == data["model"] and meta["elements"] == data["elements"]
    assert meta["calibration"] == data["calibration"]
    assert [t["name"] for t in meta["targets"]] == data["targets"]
    text = format_text(info, "e.ckpt").splitlines()
    assert text[0] == f"e.ckpt: deepergat checkpoint (checkpoint format 2, " \
                      f"{path.stat().st_size / 1e6:.2f} MB)"
    assert text[1] == "  architecture     DeeperGATGNN, 2 layers, 2 members"
    assert any("local error term: out-of-fold errors of 84 reference structures" in line
               for line in text)
    assert f"  sha256           {info['sha256']}" in text
    assert not any(line.startswith("  parity") for line in text)  # checkpoints have none
    cgcnn = format_text(describe(LEGACY / "cgcnn.ckpt"), "c.ckpt").splitlines()
    assert "checkpoint format 3" in cgcnn[0] and cgcnn[1] == "  architecture     CGCNN, 2 layers"


@pytest.mark.parametrize(("name", "title"), [("exported/model.onnx", "deepergat ONNX model"),
                                             ("exported/model.pt2",
                                              "deepergat torch.export program")])
def test_exported_file_description_names_its_checkpoint_and_parity(name: str,
                                                                   title: str) -> None:
    path = LEGACY / name
    info = describe(path)
    meta = info["metadata"]
    source = hashlib.sha256((LEGACY / "ensemble.ckpt").read_bytes()).hexdigest()
    assert meta["source_sha256"] == source and meta["checkpoint_format"] == 2
    assert meta["outputs"] == ["prediction", "embedding", "std"]
    assert meta["parity"]["passed"] is True
    text = format_text(info, name).splitlines()
    assert text[0].startswith(f"{name}: {title} (exported-file format 1, ")
    assert f"  source checkpoint {source}" in text
    assert any(line.startswith("  parity           passed: ") for line in text)
    assert text[-1] == f"  sha256           {hashlib.sha256(path.read_bytes()).hexdigest()}"


def test_an_unknown_description_is_printed_as_json() -> None:
    info = {"format": "deepergat-something-new", "n": 3}
    assert json.loads(format_text(info, "x")) == info


@pytest.mark.parametrize("name", ["store.h5", "predictions.h5", "ensemble.ckpt",
                                  "exported/model.onnx"])
def test_the_command_prints_the_description(name: str) -> None:
    info = describe(LEGACY / name)
    r = CliRunner().invoke(main, ["info", str(LEGACY / name)])
    assert r.exit_code == 0, r.output
    assert r.stdout == format_text(info, str(LEGACY / name)) + "\n"
    r = CliRunner().invoke(main, ["info", "--json", str(LEGACY / name)])
    assert r.exit_code == 0 and json.loads(r.stdout) == json.loads(json.dumps(info))


def test_what_info_refuses(tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match="is a folder"):
        describe(tmp_path)
    with h5py.File(tmp_path / "plain.h5", "w"):
        pass
    with pytest.raises(DeepergatError, match=r"an HDF5 file without a format; deepergat info "
                                             r"describes: .*deepergat-structures"):
        describe(tmp_path / "plain.h5")
    for args, needle in (([str(tmp_path)], "is a folder, not a file"),
                         ([str(tmp_path / "plain.h5")], "an HDF5 file without a format")):
        r = CliRunner().invoke(main, ["info", *args])
        assert r.exit_code == 2
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {args[0]}: {needle}"), lines


def _hostile_store(path: Path, how: str) -> None:
    """Copy the legacy store to ``path`` and make it declare what it does not hold."""
    shutil.copy(LEGACY / "store.h5", path)
    with h5py.File(path, "a") as f:
        if how == "rows":  # 10^12 structures, no data written for them
            for name in ("ids", "n_atoms", "atom_offset", "lattice", "pbc", "targets/heat_ref"):
                f[name].resize(10**12, axis=0)
            f.attrs["n_structures"] = 10**12
        elif how == "atoms":  # 10^12 atoms, the last structure claiming them
            n = f["positions"].shape[0]
            for name in ("atomic_numbers", "positions"):
                f[name].resize(10**12, axis=0)
            counts = f["n_atoms"][:].astype(np.int64)
            counts[-1] += 10**12 - n
            del f["n_atoms"]
            f["n_atoms"] = counts
            f.attrs["n_atoms_total"] = 10**12
        elif how == "string lattice":
            m = f["lattice"].shape[0]
            del f["lattice"]
            f["lattice"] = np.full((m, 3, 3), "1.0", dtype="S8")
        elif how == "format array":
            f.attrs["format"] = np.array(["deepergat-structures"] * 1000,
                                         dtype=h5py.string_dtype())


@pytest.mark.parametrize(("how", "needle"), [
    ("rows", "'ids' declares 1000000000000 rows"),
    ("atoms", "'atomic_numbers' declares 1000000000000 rows"),
    ("string lattice", "'lattice' holds strings, not floating-point numbers"),
    ("format array", "root 'format' attribute is not one text"),
])
def test_info_on_a_hostile_store_is_one_line_at_once(tmp_path: Path, how: str,
                                                     needle: str) -> None:
    """A few-KB store that declares 10^12 rows or atoms, or a mistyped one: `deepergat info`
    answers with one line and exit 2 (it used to allocate terabytes, or re-hash 10^12 empty
    rows for hours) — every command opens stores the same way (`Store`)."""
    path = tmp_path / "hostile.h5"
    _hostile_store(path, how)
    assert path.stat().st_size < 1 << 20
    r = CliRunner().invoke(main, ["info", str(path)])
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and needle in lines[0]
