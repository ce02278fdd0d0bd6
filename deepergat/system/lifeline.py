"""Worker processes that end when the process that started them dies.

A ``ProcessPoolExecutor`` worker started with forkserver or spawn outlives a parent killed with
SIGKILL (or by the OOM killer, or a node's job cleanup that misses it): it blocks forever on its
call queue, whose write end it holds itself, and it holds the forkserver's liveness pipe, so the
forkserver stays too. Outside SLURM's cgroups nothing reaps them. `watch_parent`, called in the
worker's initializer with the starting process's pid, ends the worker when that process ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

__all__ = ["watch_parent"]

#: Seconds between checks where the parent can only be polled (no pidfd).
POLL_SECONDS = 1.0


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (POSIX)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot be ours, but it is alive)
        return True
    try:  # an exited, unreaped process still answers kill(0); Linux says so in its stat line
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has ended (a pidfd where the OS has one, else polling)."""
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    if pidfd is not None:
        try:
            poller = select.poll()  # not select.select: it refuses descriptors >= 1024
            poller.register(pidfd, select.POLLIN)
            while not poller.poll():
                pass
        finally:
            os.close(pidfd)
        return
    while _alive(pid):
        time.sleep(POLL_SECONDS)


def watch_parent(pid: int) -> None:
    """End this process (exit status 1, no cleanup: the parent that wanted the work is gone)
    once process ``pid`` ends. Returns at once; a daemon thread does the waiting. POSIX only:
    elsewhere (Windows, where signal 0 is not a liveness probe) it does nothing."""
    if os.name != "posix" or pid == os.getpid():
        return

    def wait() -> None:
        _wait_for_exit(pid)
        os._exit(1)

    if not _alive(pid):
        os._exit(1)
    threading.Thread(target=wait, name=f"lifeline-{pid}", daemon=True).start()
