"""Graph sets: batches equal the shared neighbor search, the cache is keyed by the store's
content and the graph settings, reused when the key matches and rebuilt otherwise."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from model_helpers import perov_structures

from deepergat.graphs import build_inputs
from deepergat.io.store import StructureBatch, write_store
from deepergat.training import data
from deepergat.training.data import (
    CACHE_VERSION,
    GraphSet,
    cache_key,
    cache_path,
    default_cache_dir,
    load_graphs,
)


def _no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("cache not used")

    monkeypatch.setattr(data, "_build", boom)


def test_graphset_batch_equals_build_inputs(tiny_store: Path, tmp_path: Path) -> None:
    g = load_graphs(tiny_store, cache_dir=tmp_path)
    structures = perov_structures(60)
    rows = np.array([5, 0, 17, 3])
    ours = g.batch(rows)
    ref = build_inputs(StructureBatch.from_structures([structures[r] for r in rows])).inputs
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
        assert ours[k].dtype == ref[k].dtype, k


def test_graphset_usable_excludes_bad_structures(tmp_path: Path) -> None:
    structures = perov_structures(6)
    bad = dict(structures[1], id="overlap",
               positions=np.vstack([structures[1]["positions"][:1]] * 5))
    path = tmp_path / "s.h5"
    write_store(path, StructureBatch.from_structures([structures[0], bad, *structures[2:]]),
                units={"heat_ref": "eV"})
    g: GraphSet = load_graphs(path, cache_dir=tmp_path)
    assert g.status.tolist() == [0, 6, 0, 0, 0, 0]
    assert g.usable.tolist() == [0, 2, 3, 4, 5]
    assert g.n_atoms[1] == 0 and g.units == {"heat_ref": "eV"}
    with pytest.raises(ValueError):
        g.batch([1])
    rows = np.array([0, 2])
    one = build_inputs(StructureBatch.from_structures([structures[0], structures[2]])).inputs
    assert g.max_distance(rows) == pytest.approx(float(one["distances"].max()))
    assert g.elements(rows) == sorted(set(one["atomic_numbers"].tolist()))


def test_the_cache_key_is_the_store_digest_and_the_graph_settings() -> None:
    """Written out: periodic caches keep the key they had before the construction was a
    setting; minimum-image keys add it and the translation rule."""
    text = f"abc|cutoff={8.0!r}|max_neighbors=12|v{CACHE_VERSION}"
    assert cache_key("abc", 8, 12) == hashlib.sha256(text.encode()).hexdigest()
    mic = cache_key("abc", 8.0, 12, "minimum-image")
    assert mic == hashlib.sha256(
        f"abc|cutoff=8.0|max_neighbors=12|graph=minimum-image|translations=0.25/256/group"
        f"|v{CACHE_VERSION}".encode()).hexdigest()
    assert len({cache_key("abc", 8.0, 12), cache_key("abd", 8.0, 12), cache_key("abc", 7.0, 12),
                cache_key("abc", 8.0, 6), mic}) == 5
    store = Path("/data/perov.h5")
    assert cache_path(store, "abc", 8.0, 12, "/c") == Path(
        f"/c/perov.graphs-{cache_key('abc', 8.0, 12)[:16]}.npz")


def test_the_cache_is_reused_only_for_its_key(
    tiny_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = load_graphs(tiny_store, cache_dir=tmp_path)
    cfile = cache_path(tiny_store, g.digest, 8.0, 12, tmp_path)
    assert cfile.is_file() and not list(tmp_path.glob("*.tmp"))  # written whole
    _no_build(monkeypatch)
    again = load_graphs(tiny_store, cache_dir=tmp_path)
    for name in ("neighbors", "distances", "degree", "atomic_numbers", "status"):
        np.testing.assert_array_equal(getattr(again, name), getattr(g, name), err_msg=name)
    assert again.ids == g.ids and again.digest == g.digest
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(tiny_store, cache_dir=tmp_path, max_neighbors=6)  # other settings
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(tiny_store, cache_dir=tmp_path, graph="minimum-image")  # other construction
    assert cache_path(tiny_store, g.digest, 8.0, 12, tmp_path, "minimum-image") != cfile
    other = tmp_path / "other.h5"
    write_store(other, StructureBatch.from_structures(perov_structures(59)))
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(other, cache_dir=tmp_path)  # other digest
    import h5py

    with h5py.File(tiny_store, "r+") as f:  # edited in place: the recorded digest is stale
        f["positions"][:5] = f["positions"][:5] * 1.05
    with pytest.raises(AssertionError, match="cache not used"):
        load_graphs(tiny_store, cache_dir=tmp_path)


def test_a_cache_of_another_key_or_unreadable_is_rebuilt(
    tiny_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = load_graphs(tiny_store, cache_dir=tmp_path)
    cfile = cache_path(tiny_store, g.digest, 8.0, 12, tmp_path)
    with np.load(cfile) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["key"] = np.array("0" * 64)  # a file by that name holding other graphs
    arrays["neighbors"] = np.zeros_like(arrays["neighbors"])
    with open(cfile, "wb") as fh:
        np.savez(fh, **arrays)
    rebuilt = load_graphs(tiny_store, cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.neighbors, g.neighbors)
    with np.load(cfile) as f:  # and written again under the right key
        assert str(f["key"]) == cache_key(g.digest, 8.0, 12)
    cfile.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="deepergat"):
        again = load_graphs(tiny_store, cache_dir=tmp_path)
    assert "ignoring unreadable graph cache" in caplog.text
    np.testing.assert_array_equal(again.neighbors, g.neighbors)


def test_a_cache_that_cannot_be_written_costs_only_a_rebuild(
    tiny_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="deepergat"):
        g = load_graphs(tiny_store, cache_dir=blocked / "cache")  # its parent is a file
    assert "could not write graph cache" in caplog.text and len(g) == 60
    load_graphs(tiny_store, cache_dir=tmp_path / "off", use_cache=False)
    assert not (tmp_path / "off").exists()


def test_the_default_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s.h5"
    assert default_cache_dir(store) == tmp_path
    monkeypatch.setattr(data.os, "access", lambda *a: False)  # a folder this user cannot write
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir(store) == tmp_path / "xdg" / "deepergat"


def test_graphs_on_the_device_cut_the_batches_the_host_cuts(tiny_store: Path,
                                                            tmp_path: Path) -> None:
    """`DeviceGraphs.batch` gives `GraphSet.batch`'s inputs, element for element and dtype for
    dtype, for any rows in any order (one crystal, all of them, rows around an unusable
    structure); here on the CPU device, as the tests have no GPU."""
    import torch

    from deepergat.training.data import DeviceGraphs, to_tensors

    structures = perov_structures(12)
    bad = dict(structures[1], id="overlap",
               positions=np.vstack([structures[1]["positions"][:1]] * 5))
    mixed = tmp_path / "mixed.h5"
    write_store(mixed, StructureBatch.from_structures([structures[0], bad, *structures[2:]]))
    rng = np.random.default_rng(0)
    for g in (load_graphs(tiny_store, cache_dir=tmp_path), load_graphs(mixed, cache_dir=tmp_path)):
        on = DeviceGraphs(g, "cpu")
        assert on.host is g and g.host is g
        use = g.usable
        cases = [use[:1], use[::-1], use, *(rng.permutation(use)[: rng.integers(1, len(use))]
                                            for _ in range(20))]
        for rows in cases:
            want = to_tensors(g.batch(rows))
            got = on.batch(rows)
            assert list(got) == list(want)
            for k in want:
                assert got[k].dtype == want[k].dtype, k
                assert torch.equal(got[k], want[k]), k
            assert all(torch.equal(on.tensors(rows)[k], want[k]) for k in want)
            assert all(torch.equal(g.tensors(rows)[k], want[k]) for k in want)
            for values in (g.n_atoms, *g.targets.values()):  # per-structure values too
                assert torch.equal(on.values(values, rows), g.values(values, rows))
        with pytest.raises(ValueError):
            on.batch([])
    with pytest.raises(ValueError):
        on.batch([1])  # the unusable structure of the mixed store
