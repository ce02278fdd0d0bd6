"""One run owns an output at a time: refusal while another run lives, joining by the shards of
one run, taking over from a dead run (killed here, or silent on another host), and a screen
that meets a live foreign run refuses with one line and changes nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from screen_helpers import read_predictions, run_inprocess

from deepergat.errors import DeepergatError
from deepergat.screening import lock as lock_mod
from deepergat.screening.lock import OutputLock, run_token


def read_predictions_settings(files: dict[str, bytes]) -> str:
    import io

    import h5py

    with h5py.File(io.BytesIO(files["p.h5"]), "r") as f:
        return f.attrs["screen_settings"]


def test_a_second_run_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    a = OutputLock(out, run_token())
    a.acquire()
    b = OutputLock(out, run_token())
    with pytest.raises(DeepergatError, match=r"p\.h5: another run is writing it .*pid"):
        b.acquire()
    a.release()
    assert not a.path.exists()  # the last holder leaves nothing behind
    b.acquire()
    b.release()


def test_the_shards_of_one_run_share_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_mod, "HEARTBEAT", 0.1)
    out = tmp_path / "p.h5"
    token = run_token(shard_count=4, settings_digest="ab" * 32)
    assert token == run_token(shard_count=4, settings_digest="ab" * 32)
    assert token != run_token(shard_count=4, settings_digest="cd" * 32)
    assert run_token() != run_token()
    t1, t2 = OutputLock(out, token), OutputLock(out, token)
    t2.holder = t2.path / "holder-otherhost-1"  # a sibling task elsewhere
    t1.acquire()
    t2.acquire()
    other = OutputLock(out, run_token(shard_count=4, settings_digest="cd" * 32), stale_after=1.0)
    with pytest.raises(DeepergatError, match="another run is writing it"):
        other.acquire()
    t1.release()
    assert (t1.path / "owner").exists()  # t2 still works
    t2.release()
    assert not t1.path.exists()


def test_a_killed_run_on_this_host_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "p.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    corpse = OutputLock(out, "run-dead")
    corpse.holder = corpse.path / f"holder-{corpse.host}-{dead.pid}"
    corpse.acquire()
    corpse._stop.set()  # as if killed: no heartbeat, no release
    new = OutputLock(out, run_token())
    t0 = time.monotonic()
    new.acquire()
    assert time.monotonic() - t0 < 5  # a dead pid here needs no waiting
    assert not corpse.holder.exists()
    new.release()


def test_a_silent_holder_on_another_host_dies_after_its_heartbeat_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock_mod, "HEARTBEAT", 0.1)
    out = tmp_path / "p.h5"
    far = OutputLock(out, "run-far")
    far.holder = far.path / "holder-elsewhere-123"
    far.acquire()
    new = OutputLock(out, run_token(), stale_after=1.0)
    with pytest.raises(DeepergatError, match="another run is writing it"):
        new.acquire()  # its heartbeat moves: alive
    far._stop.set()  # the far process is gone: its heartbeat stops
    far._thread.join()
    new.acquire()
    assert not far.holder.exists()
    new.release()


def test_a_screen_meeting_a_live_run_refuses_and_changes_nothing(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any]
) -> None:
    out = tmp_path / "p.h5"
    first = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64)
    assert first.outcome == "merged" and not out.with_name("p.h5.lock").exists()
    def tree() -> dict[str, bytes]:
        return {str(f.relative_to(tmp_path)): f.read_bytes() for f in tmp_path.rglob("*")
                if f.is_file()}

    before = tree()
    other = OutputLock(out, run_token())  # a run that is writing this output right now
    other.acquire()
    try:
        with pytest.raises(DeepergatError, match="another run is writing it"):
            run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64, max_atoms=10,
                          resume=False)
        assert {k: v for k, v in tree().items() if ".lock/" not in k} == before
    finally:
        other.release()
    again = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64, max_atoms=10,
                          resume=False)
    assert again.outcome == "merged"
    p = read_predictions(out)
    assert p["attrs"]["screen_settings"] != read_predictions_settings(before)
    assert (p["status"] == 2).any()  # the second run's --max-atoms 10 took effect


def test_an_edited_store_is_screened_again(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any]
) -> None:
    """Positions changed in place after packing: a rerun must not call the old file complete."""
    import shutil

    import h5py
    import numpy as np

    store = tmp_path / "s.h5"
    shutil.copyfile(screen_store, store)
    out = tmp_path / "p.h5"
    run_inprocess(store, small_model["onnx"], out, chunk_size=64)
    old = read_predictions(out)["predictions"]["heat_ref"].copy()
    with h5py.File(store, "r+") as f:  # the stored content digest is left as it was
        f["positions"][:10] = f["positions"][:10] * 1.1
    with pytest.raises(DeepergatError, match=r"computed before .* was edited in place"):
        run_inprocess(store, small_model["onnx"], out, chunk_size=64)
    again = run_inprocess(store, small_model["onnx"], out, chunk_size=64, resume=False)
    assert again.outcome == "merged" and again.structures == 300  # nothing reused
    new = read_predictions(out)["predictions"]["heat_ref"]
    assert not np.allclose(new[:2], old[:2], equal_nan=True)
    np.testing.assert_allclose(new[50:], old[50:], rtol=1e-6)  # the rest, the same


def test_a_disk_too_full_for_the_run_is_refused_before_work(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    out = tmp_path / "p.h5"
    with pytest.raises(DeepergatError, match=r"no space left on the folder of .*p\.h5: .* MB"):
        run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64)
    assert not out.exists() and not out.with_name("p.h5.lock").exists()
    assert not list(tmp_path.glob("p.h5.parts/chunk-*"))


def test_temporaries_of_a_killed_run_are_removed(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any]
) -> None:
    out = tmp_path / "p.h5"
    left = [tmp_path / ".p.h5.tmp-99999", tmp_path / ".p.top.csv.tmp-99999"]
    for f in left:
        f.write_bytes(b"half written by a killed run")
    run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64)
    assert not any(f.exists() for f in left) and out.exists()
