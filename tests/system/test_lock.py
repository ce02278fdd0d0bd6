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
from deepergat.system import lock as lock_mod
from deepergat.system.lock import OutputLock, run_token


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
    t2.holder = t2.path / "holder-otherhost-0badc0de-1-0"  # a sibling task elsewhere
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
    corpse.holder = corpse.path / f"holder-{corpse.host}-{corpse.node}-{dead.pid}-0"
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
    far.holder = far.path / "holder-elsewhere-0badc0de-123-0"
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


# ---------------------------------------------------------------------------- races (GAP 8)


def _delayed(monkeypatch: pytest.MonkeyPatch, delays: dict[str, dict[str, float]]) -> None:
    """Slow down, per thread name, the lock's file operations: ``{"A": {"holder": 0.1}}`` sleeps
    before thread A writes a holder file; ``"publish"`` before a thread creates or replaces an
    ``owner``/``next-`` record (by link, rename or exclusive open)."""
    import os
    import threading

    def delay(kind: str, name: str) -> None:
        wait = delays.get(threading.current_thread().name, {}).get(kind, 0.0)
        record = name == "owner" or name.startswith("next-")
        if wait and ((kind == "holder" and name.startswith("holder-")) or
                     (kind == "publish" and record)):
            time.sleep(wait)

    write_text, link, replace = Path.write_text, os.link, os.replace

    def slow_write_text(self: Path, *a: Any, **k: Any) -> int:
        delay("holder", self.name)
        return write_text(self, *a, **k)

    def slow_link(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        delay("publish", Path(dst).name)
        link(src, dst, *a, **k)

    def slow_replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        delay("publish", Path(dst).name)
        replace(src, dst, *a, **k)

    monkeypatch.setattr(Path, "write_text", slow_write_text)
    monkeypatch.setattr(os, "link", slow_link)
    monkeypatch.setattr(os, "replace", slow_replace)


def _race(out: Path, starts: dict[str, float]) -> dict[str, OutputLock | Exception]:
    """Threads named after ``starts`` acquire the output's lock, each after its delay; returns
    each one's held lock or its error."""
    import threading

    got: dict[str, OutputLock | Exception] = {}

    def run(name: str) -> None:
        time.sleep(starts[name])
        lock = OutputLock(out, run_token(), stale_after=2.0)
        try:
            lock.acquire()
            got[name] = lock
        except Exception as e:
            got[name] = e

    threads = [threading.Thread(target=run, args=(n,), name=n) for n in starts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


@pytest.mark.parametrize("b_starts", [0.05, 0.15])
def test_a_new_owner_is_never_taken_over_before_its_holder_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, b_starts: float
) -> None:
    """A is slow to write its holder file, B is slow to publish its takeover: before the fix B
    judged A's fresh owner dead and both held the output."""
    _delayed(monkeypatch, {"A": {"holder": 0.1}, "B": {"publish": 0.3}})
    got = _race(tmp_path / "p.h5", {"A": 0.0, "B": b_starts})
    held = [n for n, v in got.items() if isinstance(v, OutputLock)]
    try:
        assert len(held) == 1, got
        (other,) = [v for v in got.values() if not isinstance(v, OutputLock)]
        assert isinstance(other, DeepergatError), other
        assert "another run is writing it" in str(other)
    finally:
        for v in got.values():
            if isinstance(v, OutputLock):
                v.release()
    assert not (tmp_path / "p.h5.lock").exists()


def test_racing_runs_never_both_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three runs acquire and release one output over and over with random pauses in every
    lock step: at no moment do two of them hold it."""
    import os
    import random
    import threading

    real = {"write_text": Path.write_text, "link": os.link, "replace": os.replace,
            "listdir": os.listdir, "unlink": Path.unlink}
    rng = random.Random(1)
    lock_dir = "p.h5.lock"

    def pause(path: Any) -> None:
        if lock_dir in str(path):
            time.sleep(rng.random() * 0.01)

    monkeypatch.setattr(Path, "write_text",
                        lambda self, *a, **k: (pause(self), real["write_text"](self, *a, **k))[1])
    monkeypatch.setattr(Path, "unlink",
                        lambda self, *a, **k: (pause(self), real["unlink"](self, *a, **k))[1])
    monkeypatch.setattr(os, "link",
                        lambda s, d, *a, **k: (pause(d), real["link"](s, d, *a, **k))[1])
    monkeypatch.setattr(os, "replace",
                        lambda s, d, *a, **k: (pause(d), real["replace"](s, d, *a, **k))[1])
    monkeypatch.setattr(os, "listdir", lambda p=".": (pause(p), real["listdir"](p))[1])

    out = tmp_path / "p.h5"
    inside = []
    overlaps = []
    wins = []
    guard = threading.Lock()

    def run(name: str) -> None:
        for _ in range(12):
            lock = OutputLock(out, run_token(), stale_after=0.3)
            try:
                lock.acquire()
            except DeepergatError:
                time.sleep(rng.random() * 0.01)
                continue
            with guard:
                inside.append(name)
                if len(inside) > 1:
                    overlaps.append(list(inside))
                wins.append(name)
            time.sleep(rng.random() * 0.01)
            with guard:
                inside.remove(name)
            lock.release()

    threads = [threading.Thread(target=run, args=(f"T{k}",), name=f"T{k}") for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not overlaps, overlaps[:3]
    assert len(wins) >= 3


def test_the_lock_folder_vanishing_mid_acquire_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner releases (and removes the folder) right after a rival's mkdir: before the fix
    the rival died with a FileNotFoundError traceback."""
    out = tmp_path / "p.h5"
    a = OutputLock(out, run_token())
    a.acquire()
    mkdir = Path.mkdir
    fired = []

    def mkdir_then_owner_leaves(self: Path, *args: Any, **kw: Any) -> None:
        mkdir(self, *args, **kw)
        if self == a.path and not fired:
            fired.append(True)
            a.release()  # the last holder leaves: owner and folder removed

    monkeypatch.setattr(Path, "mkdir", mkdir_then_owner_leaves)
    b = OutputLock(out, run_token())
    b.acquire()
    assert fired and (b.path / "owner").exists()
    b.release()
    assert not b.path.exists()


def test_another_pid_namespace_with_the_same_host_name_is_not_judged_by_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Containers sharing a host name but not a pid namespace: the other one's pid is not
    visible here, yet it lives (its heartbeat moves). Before the fix it was judged dead."""
    import os

    monkeypatch.setattr(lock_mod, "HEARTBEAT", 0.1)
    out = tmp_path / "p.h5"
    with monkeypatch.context() as m:  # built as the other container would build it
        m.setattr(os, "getpid", lambda: 999_999)
        m.setattr(lock_mod, "node_key", lambda: "0badc0de", raising=False)
        far = OutputLock(out, "run-far")
    far.acquire()
    try:
        new = OutputLock(out, run_token(), stale_after=1.0)
        with pytest.raises(DeepergatError, match="another run is writing it"):
            new.acquire()
    finally:
        far._stop.set()  # its heartbeat stops: now it is dead
        if far._thread is not None:
            far._thread.join()
    new.acquire()
    new.release()


def test_an_owner_without_a_holder_in_sight_is_alive_for_a_grace_period(tmp_path: Path) -> None:
    """An owner record whose holders are not (yet) visible — a cached NFS listing, or a run
    leaving — is not taken over at once, only after the stale period."""
    import json

    out = tmp_path / "p.h5"
    lock_dir = out.with_name("p.h5.lock")
    lock_dir.mkdir()
    (lock_dir / "owner").write_text(json.dumps({"token": "run-x", "host": "far", "pid": 1,
                                                "nonce": "n0", "since": "then"}))
    new = OutputLock(out, run_token(), stale_after=1.5)
    t0 = time.monotonic()
    new.acquire()
    assert time.monotonic() - t0 >= 1.5
    new.release()
    assert not lock_dir.exists()


def test_nfs_limits() -> None:
    """The stale limit outlasts the NFS client's default attribute/directory cache (60 s) plus
    a heartbeat (docs/design.md §11)."""
    assert lock_mod.STALE_AFTER > 60 + lock_mod.HEARTBEAT


# ---------------------------------------------------------------------------- full disk, damage


def test_a_disk_that_fills_during_the_merge_is_one_line_and_a_rerun_completes(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merged file's space cannot be had: one line naming the folder and the MB needed,
    exit 2, the temporary merged file and the lock gone, every part kept; after space is freed
    the same command merges without computing anything again. (Before: exit 139 inside HDF5.)"""
    import errno
    import os

    from click.testing import CliRunner

    from deepergat.cli.screen import screen

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "p.h5"
    argv = ["--input", str(screen_store), "--model", str(small_model["onnx"]), "--output",
            str(out), "--chunk-size", "64"]
    with monkeypatch.context() as m:
        m.setattr(os, "posix_fallocate", full)
        r = CliRunner().invoke(screen, argv)
    assert r.exit_code == 2, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith("screening (")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: no space left on ") and "(needs ~" in lines[0]
    assert "MB free" in lines[0] and "p.h5.parts are kept" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".p.h5.tmp-*"))
    assert not out.with_name("p.h5.lock").exists()
    from deepergat.screening.parts import PartsDir

    assert PartsDir(out).committed() == set(range(5))
    again = run_inprocess(screen_store, small_model["onnx"], out, chunk_size=64)
    assert again.outcome == "merged" and again.structures == 0 and again.skipped == 300


def test_a_screen_failing_on_a_damaged_input_leaves_nothing_behind(
    tmp_path: Path, screen_store: Path, small_model: dict[str, Any]
) -> None:
    """16 bytes overwritten in the positions' compressed data: the screen fails before any
    chunk is committed, and leaves neither ``<output>.parts/`` nor the lock."""
    import shutil

    import h5py

    store = tmp_path / "s.h5"
    shutil.copyfile(screen_store, store)
    with h5py.File(store, "r") as f:
        info = f["positions"].id.get_chunk_info(0)
    data = bytearray(store.read_bytes())
    data[info.byte_offset + 8 : info.byte_offset + 24] = b"\xff" * 16
    store.write_bytes(bytes(data))
    out = tmp_path / "p.h5"
    with pytest.raises(DeepergatError, match="positions"):
        run_inprocess(store, small_model["onnx"], out, chunk_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_a_task_joining_while_the_last_one_leaves_keeps_the_output(tmp_path: Path) -> None:
    """Task 2 of a sharded run joins right after task 1 (leaving) listed the holders: before
    the fix task 1 removed the owner record anyway and another run took the output while task 2
    still wrote it."""
    out = tmp_path / "p.h5"
    token = run_token(shard_count=2, settings_digest="ab" * 32)
    t1, t2 = OutputLock(out, token), OutputLock(out, token)
    t1.acquire()
    listed = t1._holders

    def join_after_listing(tok: str) -> Any:
        found = listed(tok)
        if not t2.held:
            t2.acquire()  # task 2 starts right now and joins
        return found

    t1._holders = join_after_listing  # type: ignore[method-assign]
    t1.release()
    assert t2.held and (t1.path / "owner").exists()
    with pytest.raises(DeepergatError, match="another run is writing it"):
        OutputLock(out, run_token()).acquire()
    t2.release()
    assert not t1.path.exists()


def test_a_task_joining_during_the_clean_up_waits_and_owns_the_output(tmp_path: Path) -> None:
    """Task 2 joins after task 1 (leaving) checked the holders a second time: it waits for the
    clean-up, sees the owner record gone and publishes its own."""
    import threading

    out = tmp_path / "p.h5"
    token = run_token(shard_count=2, settings_digest="ab" * 32)
    t1, t2 = OutputLock(out, token), OutputLock(out, token)
    t1.acquire()
    listed = t1._holders
    calls: list[str] = []
    joiner = threading.Thread(target=t2.acquire)

    def join_after_second_listing(tok: str) -> Any:
        found = listed(tok)
        calls.append(tok)
        if len(calls) == 2:
            joiner.start()
            time.sleep(0.3)  # task 2 has written its holder and waits for the claim
            assert not t2.held
        return found

    t1._holders = join_after_second_listing  # type: ignore[method-assign]
    t1.release()
    joiner.join(10)
    assert t2.held
    assert t2._end() is not None and t2._end().token == token  # type: ignore[union-attr]
    with pytest.raises(DeepergatError, match="another run is writing it"):
        OutputLock(out, run_token()).acquire()
    t2.release()
    assert not t1.path.exists()


def test_an_ownerless_live_holder_of_another_run_is_not_taken_over(tmp_path: Path) -> None:
    """No owner record, but a live process of another run holds the output: refused (before
    the fix an empty chain counted as a free output)."""
    out = tmp_path / "p.h5"
    other = OutputLock(out, run_token(shard_count=2, settings_digest="ab" * 32))
    other.path.mkdir()
    other.holder.write_text(f"{other.token}\n{other.start}\n")  # this (live) process
    with pytest.raises(DeepergatError, match="another run is writing it"):
        OutputLock(out, run_token()).acquire()
    assert not (other.path / "owner").exists()
    other.holder.unlink()
    b = OutputLock(out, run_token())
    b.acquire()  # gone: the output is free
    b.release()
