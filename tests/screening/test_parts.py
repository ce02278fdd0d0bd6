"""The parts directory: manifest, refusal to mix runs, atomic commits, merge claim, cleanup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepergat.errors import DeepergatError, SettingError
from deepergat.screening.parts import MANIFEST_FORMAT, PartsDir
from deepergat.screening.predictions import Rows


def manifest(**over: Any) -> dict[str, Any]:
    m = {"format": MANIFEST_FORMAT, "version": 1, "input_digest": "abc", "model_sha256": "def",
         "chunk_size": 10, "max_atoms": 1000, "overlap_threshold": 0.1, "embeddings": False,
         "input": "in.h5", "n_structures": 50, "n_chunks": 5, "model": "m.onnx",
         "model_metadata": {}, "targets": [{"name": "t", "units": ""}], "embedding_dim": 4}
    m.update(over)
    return m


def real_input(path: Path, *, seed: int = 0) -> dict[str, Any]:
    """The manifest values of a real 50-structure input store written at ``path`` (what the
    merge reads the rows' formulas from)."""
    from deepergat.io.store import Store, StructureBatch, write_store
    from deepergat.screening.parts import store_fingerprint

    rng = np.random.default_rng(seed)
    cells = [{"id": f"s{k}", "lattice": np.eye(3) * 4.0,
              "atomic_numbers": rng.choice([8, 22, 38, 56], size=int(rng.integers(1, 6))),
              "positions": None}
             for k in range(50)]
    for c in cells:
        c["positions"] = rng.random((len(c["atomic_numbers"]), 3)) * 4.0
    write_store(path, StructureBatch.from_structures(cells))
    with Store(path) as s:
        digest = s.content_digest
    return {"input": str(path), "input_digest": digest,
            "input_fingerprint": store_fingerprint(path)}


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
        assert f.attrs["run"] == parts.run_id() and f.attrs["writer"] == "run-a"
        assert len(f.attrs["checksum"]) == 64
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
    parts.prepare(manifest(chunk_size=20, n_chunks=3), resume=False, owned=[1])  # another run
    assert parts.committed() == set()
    assert json.loads(parts.manifest_path.read_text())["chunk_size"] == 20


def test_merge_claim_is_exclusive_per_token(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    assert parts.claim_merge("77")
    assert not parts.claim_merge("77")  # this very process holds it: alive
    assert parts.claim_merge("78")  # a rerun under a new job id


def test_a_dead_claimants_merge_claim_is_taken_over_once(tmp_path: Path) -> None:
    """A task killed while merging leaves its claim; the next task takes it over (the lock's
    liveness rule: its pid is gone), and only one of two takers wins each takeover."""
    import subprocess
    import sys

    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    code = ("from deepergat.screening.parts import PartsDir; "
            f"assert PartsDir({str(parts.output)!r}).claim_merge('local')")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert parts.claim_merge("local")  # the dead claimant's claim is taken over
    assert (parts.path / "merge-claim-local.1").is_file()
    assert not PartsDir(tmp_path / "out.h5").claim_merge("local")  # and now held, alive
    # a claim written on another node counts as alive while it was refreshed lately
    other = parts.path / "merge-claim-remote"
    other.write_text(json.dumps({"host": "elsewhere", "node": "x", "pid": 1, "start": ""}))
    assert not parts.claim_merge("remote")
    old = 1_000_000_000.0
    import os

    os.utime(other, (old, old))
    assert parts.claim_merge("remote")


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
    edited = manifest(run="parts-1")
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


# ---------------------------------------------------------------------------- run stamps (GAP 7)


def foreign_part(tmp_path: Path, k: int, m: int = 10) -> Path:
    """Chunk k's part as another run (another manifest: another run id) wrote it: the same plan,
    the same rows, a valid checksum."""
    other = PartsDir(tmp_path / "elsewhere" / "out.h5")
    other.output.parent.mkdir(exist_ok=True)
    other.prepare(manifest(), resume=True)
    return other.commit(k, k * m, rows(k * m, m), run="run-other")


def test_a_part_of_another_run_is_named_removed_and_never_read(tmp_path: Path) -> None:
    import shutil

    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    shutil.copy(foreign_part(tmp_path, 2), parts.part_path(2))
    with pytest.raises(DeepergatError, match=r"chunk-000002\.h5: part file of another run "
                                             r"\(stamped 'parts-.*', this run's manifest says "
                                             r"'parts-.*'\); removed"):
        parts.read(2, start=20, stop=30, targets=1, embedding_dim=None)
    assert parts.missing(range(3)) == [0, 1, 2]


def test_a_resumed_run_removes_other_runs_parts_so_they_are_computed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    for k in (0, 1):
        parts.commit(k, 10 * k, rows(10 * k, 10))
    shutil.copy(foreign_part(tmp_path, 2), parts.part_path(2))
    parts.part_path(3).write_bytes(b"not hdf5")  # unreadable: computed again too
    again = PartsDir(tmp_path / "out.h5")  # the next task of the same run
    again.prepare(manifest(), resume=True, owned=[1, 2, 3])
    assert again.committed() == {0, 1}
    assert "chunk-000002.h5" in caplog.text and "not written by this run" in caplog.text
    # the manifest's run id is kept: parts of the run's other tasks stay valid
    assert again.run_id() == parts.run_id()


def test_the_merge_refuses_parts_of_another_run(tmp_path: Path) -> None:
    import shutil

    from deepergat.screening.merge import MissingChunksError, merge_parts
    from deepergat.screening.plan import Plan

    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(**real_input(tmp_path / "in.h5")), resume=True)
    for k in range(5):
        parts.commit(k, 10 * k, rows(10 * k, 10))
    shutil.copy(foreign_part(tmp_path, 3), parts.part_path(3))
    plan = Plan(50, 10, np.zeros(5, np.int64))
    stored = parts.read_manifest()
    assert stored is not None
    with pytest.raises(MissingChunksError, match=r"1 part files were not written by this run.*"
                                                 r"chunk-000003\.h5.*removed") as err:
        merge_parts(parts, plan, stored)
    assert err.value.missing == [3]
    assert not parts.output.exists() and parts.committed() == {0, 1, 2, 4}
    assert not list(tmp_path.glob(".out.h5.tmp-*"))
    parts.commit(3, 30, rows(30, 10))  # computed again by this run: now it merges
    merged = merge_parts(parts, plan, stored)
    assert merged.n_structures == 50 and parts.output.exists()


def test_a_shard_recomputes_a_part_planted_by_another_run(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any], reference_predictions: Path
) -> None:
    """End to end: a part copied in from another run's parts (valid, same plan) is not merged:
    the shard that owns it computes it again."""
    import shutil

    from screen_helpers import assert_same_predictions, run_inprocess

    from deepergat.io.store import Store
    from deepergat.screening.plan import make_plan, shard_chunks

    out, other = tmp_path / "p.h5", tmp_path / "o.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="0/2")
    run_inprocess(screen_store, small_model["onnx"], other, chunk_size=32, shard="1/2")
    with Store(screen_store) as store:
        plan = make_plan(store.n_atoms, 32)
    owned = shard_chunks(plan.atoms, 1, 2).tolist()
    k = owned[0]
    shutil.copy(PartsDir(other).part_path(k), PartsDir(out).part_path(k))
    result = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=32, shard="1/2")
    assert result.outcome == "merged"
    assert result.structures == sum(plan.bounds(j)[1] - plan.bounds(j)[0] for j in owned)
    assert_same_predictions(reference_predictions, out, small_model["std"])


# ---------------------------------------------------------------------------- manifest values


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("chunk_size", "x", r"chunk_size is \"x\", expected a whole number ≥ 1"),
    ("n_chunks", "abc", r"n_chunks is \"abc\""),
    ("n_structures", -1, r"n_structures is -1"),
    ("max_atoms", 2.5, r"max_atoms is 2.5"),
    ("overlap_threshold", "0.1", r"overlap_threshold is \"0.1\", expected a number"),
    ("embeddings", "yes", r"embeddings is \"yes\", expected true or false"),
    ("targets", [], r"targets is \[\]"),
    ("targets", [{"units": "eV"}], r"targets is"),
    ("embedding_dim", "4", r"embedding_dim is \"4\""),
    ("chunk_size", True, r"chunk_size is true"),
    ("n_chunks", 7, r"n_chunks is 7, but 50 structures in chunks of 10 make 5"),
    ("run", "", r"run is \"\""),
])
def test_manifest_values_are_checked(tmp_path: Path, key: str, value: Any,
                                     expected: str) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.path.mkdir()
    parts.manifest_path.write_text(json.dumps(manifest(**{"run": "parts-1", key: value})))
    with pytest.raises(DeepergatError, match=r"manifest\.json: damaged run manifest \("
                                             + expected + r".*\); remove .* or pass resume$"):
        parts.read_manifest()


def test_merge_only_with_a_bad_manifest_value_is_one_line(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any]
) -> None:
    from click.testing import CliRunner
    from screen_helpers import run_inprocess

    from deepergat.cli.screen import screen

    out = tmp_path / "p.h5"
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=100, shard="0/3")
    parts = PartsDir(out)
    data = json.loads(parts.manifest_path.read_text())
    for key, value in (("chunk_size", "x"), ("n_chunks", "abc")):
        parts.manifest_path.write_text(json.dumps({**data, key: value}))
        r = CliRunner().invoke(screen, ["--input", str(screen_store), "--model",
                                        str(small_model["onnx"]), "--output", str(out),
                                        "--merge-only"])
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "damaged run manifest" in lines[0] and key in lines[0]
        assert "Traceback" not in r.output


# ---------------------------------------------------------------------------- input stamp (GAP 18)


def test_the_input_is_rehashed_only_when_it_may_have_changed(
    tmp_path: Path, screen_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import shutil

    import h5py

    from deepergat.io.store import Store
    from deepergat.screening import parts as parts_mod

    monkeypatch.setattr(parts_mod, "_SETTLE", 0.0)
    store = tmp_path / "s.h5"
    shutil.copyfile(screen_store, store)
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    calls: list[int] = []

    def full() -> str:
        calls.append(1)
        with Store(store) as s:
            return s.compute_digest()

    first = parts.input_digest(store, full)
    assert len(calls) == 1 and (parts.path / parts_mod.INPUT_STAMP).exists()
    assert parts.input_digest(store, full) == first and len(calls) == 1  # unchanged: no re-hash
    # an edit in place, even with the mtime put back: ctime moves
    st = store.stat()
    with h5py.File(store, "r+") as f:
        f["positions"][5] = f["positions"][5] + 0.5
    os.utime(store, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = parts.input_digest(store, full)
    assert len(calls) == 2 and edited != first
    # replaced by another file with the same times (cp -p): another inode
    copy = tmp_path / "copy.h5"
    shutil.copy2(screen_store, copy)
    os.replace(copy, store)
    assert parts.input_digest(store, full) == first and len(calls) == 3
    assert parts.input_digest(store, full) == first and len(calls) == 3
    # no parts directory: nothing is stamped (and none is created)
    bare = PartsDir(tmp_path / "none.h5")
    bare.input_digest(store, full)
    assert len(calls) == 4 and not bare.path.exists()


def test_a_store_changed_moments_ago_is_not_stamped(tmp_path: Path, screen_store: Path) -> None:
    import shutil

    from deepergat.screening import parts as parts_mod

    store = tmp_path / "s.h5"
    shutil.copyfile(screen_store, store)  # just written: its ctime is now
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    parts.input_digest(store, lambda: "d" * 64)
    assert not (parts.path / parts_mod.INPUT_STAMP).exists()


# ---------------------------------------------------------------------------- nothing left (GAP 14)


def test_a_directory_the_run_committed_nothing_to_is_removed(tmp_path: Path) -> None:
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    (parts.logs / "rank-0000.log").write_text("failed\n")
    assert parts.discard_if_unused() and not parts.path.exists()
    parts.prepare(manifest(), resume=True)
    parts.commit(0, 0, rows(0, 10))
    assert not parts.discard_if_unused() and parts.committed() == {0}


def test_the_merge_checks_free_space_first(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    from deepergat.screening.merge import merge_parts
    from deepergat.screening.plan import Plan
    from deepergat.screening.predictions import NoSpaceError

    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(), resume=True)
    for k in range(5):
        parts.commit(k, 10 * k, rows(10 * k, 10))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    stored = parts.read_manifest()
    assert stored is not None
    with pytest.raises(NoSpaceError, match=r"no space left on the folder of .*out\.h5: this run "
                                           r"needs ~\d+ MB"):
        merge_parts(parts, Plan(50, 10, np.zeros(5, np.int64)), stored)
    assert parts.committed() == set(range(5)) and not parts.output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5.parts"]


def _older_parts(out: Path) -> PartsDir:
    """A parts folder as an older deepergat left it: a part, and a manifest without a run id."""
    parts = PartsDir(out)
    parts.clear()
    parts.prepare(manifest(), resume=True)
    parts.commit(1, 10, rows(10, 10))
    old = json.loads(parts.manifest_path.read_text())
    del old["run"]
    parts.manifest_path.write_text(json.dumps(old))
    return PartsDir(out)


def test_parts_of_an_older_deepergat_are_discarded_by_no_resume(tmp_path: Path) -> None:
    """A manifest without a run id (an older deepergat's): resuming says so in one line, and
    --no-resume discards the parts (before the fix it failed with 'damaged run manifest')."""
    out = tmp_path / "out.h5"
    parts = _older_parts(out)
    assert parts.written_by_older()
    with pytest.raises(SettingError, match="older deepergat; pass resume") as e:
        parts.prepare(manifest(), resume=True)
    assert "\n" not in str(e.value)
    assert e.value.render({"resume": "--no-resume"}).endswith(
        "older deepergat; pass --no-resume to discard them")
    for owned in (None, [0, 2]):  # a single run, an array task
        parts = _older_parts(out)
        parts.prepare(manifest(), resume=False, owned=owned)
        assert not parts.written_by_older() and "run" in (parts.read_manifest() or {})
        assert parts.committed() == set()  # the older parts went


def test_the_merge_reads_formulas_only_from_the_store_it_screened(tmp_path: Path) -> None:
    """The merge writes each row's formula from the input store, after checking that the store
    is the one the run began with: touched but equal, it merges; re-packed with other
    structures under the same name (or gone), it refuses in one line, writes nothing and keeps
    the parts, so that no row is given another structure's formula."""
    import os

    import h5py

    from deepergat.elements import formula
    from deepergat.io.store import Store
    from deepergat.screening.merge import merge_parts
    from deepergat.screening.plan import Plan

    store = tmp_path / "in.h5"
    plan = Plan(50, 10, np.zeros(5, np.int64))
    parts = PartsDir(tmp_path / "out.h5")
    parts.prepare(manifest(**real_input(store)), resume=True)
    for k in range(5):
        parts.commit(k, 10 * k, rows(10 * k, 10))
    stored = parts.read_manifest()
    assert stored is not None

    real_input(store, seed=1)  # other structures, same path and count
    with pytest.raises(SettingError, match=r"in\.h5: the input store changed while it was "
                                           r"screened .*screen it again with resume"):
        merge_parts(parts, plan, stored)
    assert not parts.output.exists() and parts.committed() == {0, 1, 2, 3, 4}
    store.unlink()
    with pytest.raises(SettingError, match=r"cannot read the input store"):
        merge_parts(parts, plan, stored)
    assert parts.committed() == {0, 1, 2, 3, 4}

    real_input(store)  # the screened structures again, written anew (new inode, times)
    os.utime(store)
    merged = merge_parts(parts, plan, stored)
    assert merged.n_structures == 50
    with Store(store) as s, h5py.File(parts.output, "r") as f:
        want = [s.atomic_numbers(k, k + 1) for k in range(50)]
        assert [x.decode() for x in f["formula"][:]] == [formula(z) for z in want]
        assert f["n_elements"][:].tolist() == [len(set(z.tolist())) for z in want]
