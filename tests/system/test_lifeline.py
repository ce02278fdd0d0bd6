"""Pool workers end when the process that started them is killed (no orphans on a node)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from deepergat.system.lifeline import _alive

PARENT = textwrap.dedent("""
    import multiprocessing as mp, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from deepergat.system.lifeline import watch_parent

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        init = (watch_parent, (os.getpid(),)) if sys.argv[2] == "watch" else (None, ())
        pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=init[0], initargs=init[1])
        for f in [pool.submit(os.getpid) for _ in range(8)]:
            f.result()
        print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
        time.sleep(600)
""")


def _start_parent(method: str, mode: str) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, method, mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, [int(p) for p in line.split()]


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_end_when_the_parent_is_killed(method: str) -> None:
    proc, workers = _start_parent(method, "watch")
    try:
        assert len(workers) == 2 and proc.pid not in workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _wait_gone(workers, 10) == []
    finally:
        proc.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_the_lifeline_workers_are_orphaned() -> None:
    """The failure the lifeline exists for (so the test above can fail)."""
    proc, workers = _start_parent("forkserver", "none")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        assert _wait_gone(workers, 2) == workers
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_watching_a_living_parent_changes_nothing() -> None:
    """In a child (never in the test process itself): watching a living parent or oneself
    neither ends the process nor changes its exit status."""
    code = ("import os, time; from deepergat.system.lifeline import watch_parent; "
            "watch_parent(os.getpid()); watch_parent(os.getppid()); time.sleep(0.5); "
            "raise SystemExit(7)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 7


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while _alive(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped
        time.sleep(0.05)
    assert not _alive(child.pid)
    child.wait()
