"""One run owns an output at a time: the lock folder ``<output>.lock/``.

A run has a token: a fresh random one for a single process or an MPI job (whose rank 0 holds
the lock for all its ranks), or, for the tasks of one sharded run (a SLURM array, or ``--shard``
by hand), one derived from the run's settings and shard count, so the tasks share the output
while any other run is refused.

* ``owner`` holds the token of the run that owns the output. It is created with
  ``O_CREAT | O_EXCL`` — atomic on local disks and on NFS v3+, Lustre and GPFS, unlike
  ``flock``/``fcntl`` locks, which NFS may not honour (lockd) and Lustre only with the
  ``flock`` mount option.
* every process of the owning run keeps a holder file ``holder-<host>-<pid>`` whose mtime a
  thread refreshes every `HEARTBEAT` seconds. A lock dies with its holders: a holder is dead
  when it is on this host and its pid is gone, or when its mtime has not moved for
  `STALE_AFTER` seconds (mtimes are compared with each other, never with this host's clock, so
  clock skew between nodes does not matter). A run that finds only dead holders takes the
  output over (atomic rename of a fresh ``owner`` file, then a read-back to settle a race).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError

__all__ = ["HEARTBEAT", "STALE_AFTER", "OutputLock", "run_token"]

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a holder.
HEARTBEAT = 10.0
#: A holder on another host whose mtime has not moved for this long is dead.
STALE_AFTER = 45.0


def run_token(*, shard_count: int | None = None, settings_digest: str = "") -> str:
    """The token of this run: shared by the shards of one sharded run, unique otherwise."""
    if shard_count is not None:
        return f"shards-{shard_count}-{settings_digest[:16]}"
    return f"run-{uuid.uuid4().hex}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """The lock of one output file.

    Args:
        output: the predictions file the run writes.
        token: this run's token (`run_token`).
        stale_after: seconds without a heartbeat after which another host's holder is dead.
    """

    def __init__(self, output: str | os.PathLike[str], token: str, *,
                 stale_after: float = STALE_AFTER) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".lock")
        self.token = token
        self.stale_after = stale_after
        self.host = socket.gethostname()
        self.holder = self.path / f"holder-{self.host}-{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / "owner").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"token": "?", "host": "?", "pid": 0, "since": "?"}

    def _holders(self) -> list[Path]:
        try:
            return [self.path / n for n in os.listdir(self.path) if n.startswith("holder-")]
        except FileNotFoundError:
            return []

    def _holder_token(self, path: Path) -> str:
        with contextlib.suppress(OSError):
            return path.read_text().strip()
        return ""

    def _alive(self, holders: list[Path]) -> list[Path]:
        """The holders still alive; waits up to `stale_after` only for other hosts' holders
        whose heartbeat has to be watched."""
        alive, watch = [], {}
        for h in holders:
            host, _, pid = h.name[len("holder-"):].rpartition("-")
            if host == self.host and pid.isdigit():
                if _pid_alive(int(pid)):
                    alive.append(h)
                else:
                    h.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError):
                watch[h] = h.stat().st_mtime
        deadline = time.monotonic() + self.stale_after
        while watch and time.monotonic() < deadline:
            time.sleep(min(1.0, self.stale_after / 10))
            for h in list(watch):
                try:
                    moved = h.stat().st_mtime != watch[h]
                except FileNotFoundError:
                    watch.pop(h)  # its process released it
                    continue
                if moved:
                    alive.append(h)
                    watch.pop(h)
        for h in watch:  # no heartbeat for stale_after seconds: dead
            h.unlink(missing_ok=True)
        return alive

    # ------------------------------------------------------------------ acquiring

    def acquire(self) -> None:
        """Own the output (or join the run that owns it, when it is ours).

        Raises:
            DeepergatError: another run is writing this output (names it and the ways out).
        """
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise DeepergatError(f"{self.path}: cannot create the output lock: "
                                 f"{e.strerror or e}") from None
        for _ in range(3):
            if self._create_owner() or self._owner_token() == self.token:
                break
            owner = self._owner() or {}
            if self._alive([h for h in self._holders()
                            if self._holder_token(h) == owner.get("token")]):
                raise DeepergatError(
                    f"{self.output}: another run is writing it (started {owner.get('since')} "
                    f"on {owner.get('host')}, pid {owner.get('pid')}); wait until it ends, or "
                    "choose another --output"
                )
            self._take_over(owner)
        else:
            raise DeepergatError(f"{self.output}: could not take the output lock {self.path} "
                                 "(other runs keep taking it); try again")
        self._register()

    def _record(self) -> str:
        return json.dumps({"token": self.token, "host": self.host, "pid": os.getpid(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _create_owner(self) -> bool:
        try:
            fd = os.open(self.path / "owner", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(self._record())
        return True

    def _owner_token(self) -> str | None:
        owner = self._owner()
        return None if owner is None else owner.get("token")

    def _take_over(self, dead: dict[str, Any]) -> None:
        """Replace the owner of a run whose holders are all dead; a rival doing the same at
        the same moment is settled by reading the owner back."""
        log.warning("%s: the run that owned it (host %s, pid %s, since %s) is gone; taking "
                    "the output over", self.output, dead.get("host"), dead.get("pid"),
                    dead.get("since"))
        tmp = self.path / f".owner-{uuid.uuid4().hex}"
        tmp.write_text(self._record())
        os.replace(tmp, self.path / "owner")
        time.sleep(0.2)

    def _register(self) -> None:
        self.holder.write_text(self.token + "\n")
        if self._owner_token() is None:  # the last holder of our run just left
            self._create_owner()
        if self._owner_token() != self.token:  # a rival took it between our steps
            self.holder.unlink(missing_ok=True)
            raise DeepergatError(f"{self.output}: another run took the output at the same "
                                 "moment; wait until it ends, or choose another --output")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="output-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            with contextlib.suppress(OSError):
                os.utime(self.holder)

    # ------------------------------------------------------------------ releasing

    def release(self) -> None:
        """Stop the heartbeat and leave; the last holder of the run removes the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.holder.unlink(missing_ok=True)
        if self._owner_token() != self.token:
            return
        if any(self._holder_token(h) == self.token for h in self._holders()):
            return  # other tasks of this run are still working
        with contextlib.suppress(OSError):
            (self.path / "owner").unlink()
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
