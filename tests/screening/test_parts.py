"""The parts directory: manifest, refusal to mix runs, atomic commits, merge claim, cleanup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepergat.errors import DeepergatError
from deepergat.screening.parts import MANIFEST_FORMAT, PartsDir
from deepergat.screening.predictions import Rows


def manifest(**over: Any) -> dict[str, Any]:
    m = {"format": MANIFEST_FORMAT, "version": 1, "input_digest": "abc", "model_sha256": "def",
         "chunk_size": 10, "max_atoms": 1000, "overlap_threshold": 0.1, "embeddings": False,
         "input": "in.h5", "n_structures": 50, "n_chunks": 5, "model": "m.onnx",
         "model_metadata": {}, "targets": [{"name": "t", "units": ""}], "embedding_dim": 4}
    m.update(over)
    return m


def rows(start: int, m: int, t: int = 1) -> Rows:
    return Rows(index=np.arange(start, start + m), ids=[f"s{k}" for k in range(start, start + m)],
                status=np.zeros(m, np.uint8), flags=np.zeros(m, np.uint8),
                predictions=np.arange(m * t, dtype=np.float32).reshape(m, t))


def test_prepare_writes_manifest_and_refuses_another_run(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    assert parts.path == tmp_path / "out.h5.parts"
    parts.prepare(manifest(), resume=True)
    assert json.loads(parts.manifest_path.read_text())["chunk_size"] == 10
    parts.prepare(manifest(), resume=True)  # the same run: fine
    for key, value in [("chunk_size", 20), ("model_sha256", "x"), ("input_digest", "y"),
                       ("max_atoms", 5), ("overlap_threshold", 0.2), ("embeddings", True)]:
        with pytest.raises(DeepergatError, match=key):
            parts.prepare(manifest(**{key: value}), resume=True)


def test_commit_is_atomic_and_read_back(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    parts.commit(3, 30, rows(30, 10))
    assert parts.committed() == {3}
    assert sorted(p.name for p in parts.path.iterdir()) == [
        "chunk-000003.h5", "logs", "manifest.json"
    ]  # no temporary file left
    back = parts.read(3, start=30, stop=40, targets=1, embedding_dim=None)
    np.testing.assert_array_equal(back.index, np.arange(30, 40))
    assert back.ids[0] == "s30"
    with pytest.raises(DeepergatError, match="plan says"):
        parts.read(3, start=0, stop=10, targets=1, embedding_dim=None)
    assert parts.missing(range(5)) == [0, 1, 2, 4]
    with pytest.raises(DeepergatError, match=r"unexpected shapes.*removed"):
        parts.read(3, start=30, stop=40, targets=2, embedding_dim=None)
    assert parts.missing(range(5)) == [0, 1, 2, 3, 4]  # a damaged part is recomputed


def test_damaged_part_names_the_file(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    parts.part_path(0).write_bytes(b"not hdf5")
    with pytest.raises(DeepergatError, match=r"chunk-000000\.h5"):
        parts.read(0, start=0, stop=10, targets=1, embedding_dim=None)


@pytest.mark.parametrize("damage", ["index byte", "prediction sign", "id", "no checksum"])
def test_edited_or_damaged_part_is_caught_removed_and_named(tmp_path: Path, damage: str) -> None:
    import h5py

    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    path = parts.commit(2, 20, rows(20, 10), run="run-a")
    with h5py.File(path, "r") as f:
        assert f.attrs["run"] == "run-a" and len(f.attrs["checksum"]) == 64
    with h5py.File(path, "r+") as f:
        if damage == "index byte":
            f["index"][4] = 23  # claims another input row
        elif damage == "prediction sign":
            f["predictions"][5, 0] = -f["predictions"][5, 0] - 1.0
        elif damage == "id":
            f["ids"][0] = "s99"
        else:
            del f.attrs["checksum"]
    with pytest.raises(DeepergatError, match=r"chunk-000002\.h5: damaged part file.*removed"):
        parts.read(2, start=20, stop=30, targets=1, embedding_dim=None)
    assert parts.missing(range(3)) == [0, 1, 2]


def test_no_resume_clears_all_or_only_owned(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    for k in range(4):
        parts.commit(k, 10 * k, rows(10 * k, 10))
    parts.prepare(manifest(), resume=False, owned=[1, 3])  # an array task: only its own
    assert parts.committed() == {0, 2}
    parts.prepare(manifest(), resume=False)  # everything
    assert parts.committed() == set()
    parts.commit(0, 0, rows(0, 10))
    parts.prepare(manifest(chunk_size=20), resume=False, owned=[1])  # another run: everything
    assert parts.committed() == set()
    assert json.loads(parts.manifest_path.read_text())["chunk_size"] == 20


def test_merge_claim_is_exclusive_per_token(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    assert parts.claim_merge("77")
    assert not parts.claim_merge("77")
    assert parts.claim_merge("78")  # a rerun under a new job id


def test_remove_keeps_logs(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    parts.commit(0, 0, rows(0, 10))
    parts.claim_merge("1")
    (parts.logs / "rank-0000.log").write_text("hello\n")
    parts.remove()
    assert sorted(p.name for p in parts.path.iterdir()) == ["logs"]
    (parts.logs / "rank-0000.log").unlink()
    parts.remove()
    assert not parts.path.exists()


def test_damaged_manifest(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.path.mkdir()
    parts.manifest_path.write_text("{")
    with pytest.raises(DeepergatError, match="damaged run manifest"):
        parts.prepare(manifest(), resume=True)
    edited = manifest()
    del edited["n_chunks"]  # a hand-edited manifest missing a key
    parts.manifest_path.write_text(json.dumps(edited))
    with pytest.raises(DeepergatError, match=r"damaged run manifest \(missing n_chunks\)"):
        parts.read_manifest()


def test_clear_temporaries(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    parts.commit(0, 0, rows(0, 10))
    (parts.path / ".chunk-000001.h5.tmp-host-1-2").write_bytes(b"half")
    parts.clear_temporaries()
    assert sorted(p.name for p in parts.path.iterdir()) == [
        "chunk-000000.h5", "logs", "manifest.json"
    ]
