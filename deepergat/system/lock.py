"""One run owns an output at a time: the lock folder ``<output>.lock/``.

A run has a token: a fresh random one for a single process or an MPI job (whose rank 0 holds
the lock for all its ranks), or, for the tasks of one sharded run (a SLURM array, or ``--shard``
by hand), one derived from the run's settings and shard count, so the tasks share the output
while any other run is refused.

Files in the lock folder (docs/design.md §11):

* ``holder-<host>-<node>-<pid>-<nonce>``: one per process of the owning run, holding its token
  and the process's start time. A thread refreshes its mtime every `HEARTBEAT` seconds.
  ``<node>`` is a short hash of the boot id and the pid namespace, so containers that share a
  host name but not a pid namespace (or a rebooted host) never judge each other's pids.
* ``owner``: the record (token, host, pid, start, a unique nonce) of the run that owns the
  output, and ``next-<nonce>``: the record of the run that took the output over from the run
  whose nonce it names. The owner is the end of the chain ``owner`` → ``next-…`` → …; nothing
  in the chain is ever replaced, so a stale judgement ("X is dead") can only ever create
  ``next-<X>`` and never displaces a newer owner.

Rules that make it safe:

* every record is published complete, by ``link()`` of a written temporary file (atomic
  create-if-absent on local disks, NFS v2+ — checked by the link count, as open(2) advises —
  Lustre and GPFS; ``flock``/``fcntl`` are not used: NFS may not honour them and Lustre only with
  the ``flock`` mount option);
* a process writes its holder file *before* it publishes a record, so an owner is never seen
  without the holder that proves it alive;
* a holder is dead when it is on this node and its pid is gone (or now belongs to a process
  started at another time), or when its mtime has not moved for `STALE_AFTER` seconds. Mtimes are
  compared with each other, never with a clock, and read through an open file descriptor (NFS
  revalidates attributes on open: close-to-open consistency), so neither clock skew nor the
  client's attribute cache (``acregmax``, 60 s by default) can fake a stale heartbeat;
* an owner with no holder in sight (its last process is leaving, or its holders are not yet
  visible in a cached directory listing) counts as alive for `STALE_AFTER` seconds;
* after publishing, a run reads the chain back and goes ahead only when it ends at its own
  record; a record that lost (an orphaned ``next-``) is removed and the run looks again;
* a lock folder that vanishes between two steps (the last run leaving removed it) is recreated.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError

__all__ = ["HEARTBEAT", "STALE_AFTER", "LockHeldError", "OutputLock", "node_key",
           "process_record", "record_alive", "run_token"]

log = logging.getLogger(__name__)

#: Seconds between heartbeats of a holder.
HEARTBEAT = 10.0
#: A holder on another node whose mtime has not moved for this long is dead (longer than the
#: NFS client's default attribute and directory cache times, 60 s, plus a heartbeat).
STALE_AFTER = 90.0
#: Seconds between looks while watching another run's heartbeats.
_POLL = 1.0
#: Tries before giving up when other runs keep changing the lock.
_ATTEMPTS = 50
#: Longest ownership chain followed (a guard against damaged files).
_MAX_CHAIN = 100_000


def run_token(*, shard_count: int | None = None, settings_digest: str = "") -> str:
    """The token of this run: shared by the shards of one sharded run, unique otherwise."""
    if shard_count is not None:
        return f"shards-{shard_count}-{settings_digest[:16]}"
    return f"run-{uuid.uuid4().hex}"


def node_key() -> str:
    """8 hex digits naming this boot of this machine and this pid namespace: two processes can
    judge each other's pids only when their keys are equal."""
    parts: list[str] = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _start_ticks(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), or ""
    where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces
    return fields[19] if len(fields) > 19 else ""


def _pid_alive(pid: int, start: str = "") -> bool:
    """Whether ``pid`` runs on this node (and, when ``start`` is known, is still the process
    that started then: a reused pid is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start:
        now = _start_ticks(pid)
        if now and now != start:
            return False
    return True


def process_record() -> dict[str, Any]:
    """This process as the lock's records name one: host, node key, pid and start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "node": node_key(), "pid": pid,
            "start": _start_ticks(pid)}


def record_alive(record: Any, path: Path) -> bool:
    """Whether the process a `process_record` in the file ``path`` names still runs, by the
    lock's rule: on this node by its pid (and start time); elsewhere while the file was written
    (refreshed) less than `STALE_AFTER` ago, judged against a file written now in the same
    folder (never against this host's clock)."""
    if isinstance(record, dict) and record.get("host") == socket.gethostname() \
            and record.get("node") == node_key() and isinstance(record.get("pid"), int):
        return _pid_alive(record["pid"], str(record.get("start", "")))
    written = _mtime(path)
    if written is None:
        return False
    probe = path.with_name(f".{path.name}.now-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        probe.write_text("")
        now = _mtime(probe)
    except OSError:
        return True  # cannot tell: alive
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return now is None or now - written < STALE_AFTER * 1e9


def _mtime(path: Path) -> int | None:
    """mtime (ns) of ``path`` read through an open descriptor — on NFS, open revalidates the
    attributes with the server, so a cached mtime is never used; None when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        try:
            return os.stat(path).st_mtime_ns
        except FileNotFoundError:
            return None
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)


class LockHeldError(DeepergatError):
    """Another live run owns the lock (the one refusal a caller may wait out)."""


@dataclass(frozen=True)
class _Record:
    """An ``owner`` or ``next-`` record: who owns the output."""

    path: Path
    token: str
    nonce: str
    data: dict[str, Any]


@dataclass(frozen=True)
class _Holder:
    """A holder file: its process (host, node, pid, start time) and the token of its run."""

    path: Path
    host: str
    node: str
    pid: int
    token: str
    start: str


class OutputLock:
    """The lock of one output file.

    Args:
        output: the predictions file the run writes.
        token: this run's token (`run_token`).
        stale_after: seconds without a heartbeat after which another node's holder is dead
            (and how long an owner without holders in sight counts as alive).
        label: what messages name (default: the output).
        way_out: the alternative a refusal offers (default: another ``--output``).
        on_last_exit: called by the last process of the run to leave, while it still owns the
            output (a screen removes an ``<output>.parts/`` to which nothing was committed);
            its OSErrors are ignored.
    """

    def __init__(self, output: str | os.PathLike[str], token: str, *,
                 stale_after: float = STALE_AFTER, label: str | None = None,
                 way_out: str = "choose another --output",
                 on_last_exit: Callable[[], None] | None = None) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".lock")
        self.token = token
        self.stale_after = stale_after
        self.label = label if label is not None else str(self.output)
        self.way_out = way_out
        self.on_last_exit = on_last_exit
        self.host = socket.gethostname().replace("/", "_")
        self.node = node_key()
        self.pid = os.getpid()
        self.start = _start_ticks(self.pid)
        self.nonce = uuid.uuid4().hex
        self.holder = self.path / f"holder-{self.host}-{self.node}-{self.pid}-{self.nonce[:8]}"
        self.held = False
        self._blocker: _Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading

    def _read(self, path: Path) -> _Record | None:
        """The record at ``path``; None when there is none. A damaged record gets a nonce from
        its bytes and an unknown token (it is alive only while it changes)."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raw = f"unreadable: {e}".encode()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            data = {}
        nonce = str(data.get("nonce") or "x" + hashlib.sha256(raw).hexdigest()[:31])
        return _Record(path, str(data.get("token", "?")), nonce, data)

    def _chain(self) -> list[_Record]:
        """``owner``, then each ``next-<nonce>`` successor; the last is the current owner, [] when
        no run owns the output."""
        out: list[_Record] = []
        seen: set[str] = set()
        path = self.path / "owner"
        while len(out) < _MAX_CHAIN:
            rec = self._read(path)
            if rec is None or rec.nonce in seen:
                break
            out.append(rec)
            seen.add(rec.nonce)
            path = self.path / f"next-{rec.nonce}"
        return out

    def _end(self) -> _Record | None:
        chain = self._chain()
        return chain[-1] if chain else None

    def _holder(self, path: Path) -> _Holder:
        rest = path.name[len("holder-"):].rsplit("-", 3)
        host, node, pid = (rest[0], rest[1], rest[2]) if len(rest) == 4 else ("", "", "")
        token, start = "", ""
        with contextlib.suppress(OSError):
            lines = path.read_text().splitlines()
            token = lines[0].strip() if lines else ""
            start = lines[1].strip() if len(lines) > 1 else ""
        return _Holder(path, host, node, int(pid) if pid.isdigit() else 0, token, start)

    def _holders(self, token: str) -> list[_Holder]:
        """The holder files of the run with ``token`` (this process's own excluded)."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = (self._holder(self.path / n) for n in names
                 if n.startswith("holder-") and n != self.holder.name)
        return [h for h in found if h.token == token]

    def _here(self, h: _Holder) -> bool:
        """Whether ``h``'s pid can be checked from here (same host, boot and pid namespace)."""
        return h.pid > 0 and h.host == self.host and h.node == self.node

    # ------------------------------------------------------------------ acquiring

    def acquire(self) -> None:
        """Own the output (or join the run that owns it, when it is ours).

        Raises:
            DeepergatError: another run is writing this output (names it and the ways out), or
                the lock folder cannot be created.
        """
        for _ in range(_ATTEMPTS):
            try:
                if self._attempt():
                    break
            except FileNotFoundError:  # the lock folder went away with a run that ended
                continue
            except DeepergatError:
                self.holder.unlink(missing_ok=True)
                raise
            except OSError as e:
                self.holder.unlink(missing_ok=True)
                raise DeepergatError(f"{self.path}: cannot use the output lock: "
                                     f"{e.strerror or e}") from None
        else:
            self.holder.unlink(missing_ok=True)
            if self._blocker is not None:
                h = self._blocker
                raise DeepergatError(
                    f"{self.label}: another run is writing it (host {h.host or '?'}, pid "
                    f"{h.pid or '?'}); wait until it ends, or {self.way_out}")
            raise DeepergatError(f"{self.label}: could not take the lock {self.path} "
                                 "(other runs keep taking it); try again")
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="output-lock", daemon=True)
        self._thread.start()

    def _attempt(self) -> bool:
        """One look at the lock: True when this run owns (or has joined) the output, False to
        look again; raises when a live run of another token owns it."""
        try:
            self.path.mkdir(exist_ok=True)
        except FileNotFoundError:
            raise DeepergatError(f"{self.path}: cannot create the output lock: the folder "
                                 f"{self.path.parent} does not exist") from None
        except OSError as e:
            raise DeepergatError(f"{self.path}: cannot create the output lock: "
                                 f"{e.strerror or e}") from None
        # The holder first: whoever sees our record afterwards also sees us alive.
        self.holder.write_text(f"{self.token}\n{self.start}\n")
        self._blocker = None
        chain = self._chain()
        end = chain[-1] if chain else None
        if end is not None and end.token == self.token:
            return self._join(chain)  # our run (another task of it) owns the output
        if end is None:
            blocker = self._live_stranger()
            if blocker is not None:
                # A live process of another run holds the output without an owner record (it
                # is acquiring it, or its run lost the record): step back and look again.
                self._blocker = blocker
                self.holder.unlink(missing_ok=True)
                time.sleep(random.uniform(0.005, 0.05))
                return False
        if end is not None:
            verdict = self._judge(end)
            if verdict == "alive":
                raise self._refusal(end)
            if verdict == "changed":
                return False
            log.warning("%s: the run that owned it (host %s, pid %s, since %s) is gone; "
                        "taking it over", self.label, end.data.get("host"),
                        end.data.get("pid"), end.data.get("since"))
        name = "owner" if end is None else f"next-{end.nonce}"
        if not self._publish(name):
            return False  # another run published first: look again
        now = self._end()
        if now is not None and now.nonce == self.nonce:
            return True
        # Our record lost (the owner we replaced had left and a new chain began): withdraw it.
        (self.path / name).unlink(missing_ok=True)
        return False

    def _join(self, chain: list[_Record]) -> bool:
        """Join our run, which owns the output, unless its last task is cleaning up (then look
        again, once the clean-up ended)."""
        claim = self.path / f"cleanup-{chain[0].nonce}"
        deadline = time.monotonic() + self.stale_after
        while claim.exists():
            rec = self._read(claim)
            if rec is None:
                break
            d = rec.data
            pid = d.get("pid")
            here = d.get("host") == self.host and d.get("node") == self.node
            if (here and isinstance(pid, int) and not _pid_alive(pid, str(d.get("start", ""))))\
                    or time.monotonic() > deadline:
                claim.unlink(missing_ok=True)  # its process died while cleaning up
                break
            time.sleep(min(_POLL, self.stale_after / 10, 0.05))
        # Our holder is in place and no clean-up is under way: the owner record must still be
        # there (a clean-up that had already looked for holders may have removed it).
        again = self._chain()
        return bool(again) and again[-1].token == self.token \
            and again[0].nonce == chain[0].nonce

    def _live_stranger(self) -> _Holder | None:
        """A live holder of another run's token (dead ones are removed), or None."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return None
        ours = _mtime(self.holder)
        for n in names:
            if not n.startswith("holder-") or n == self.holder.name:
                continue
            h = self._holder(self.path / n)
            if h.token == self.token or not h.token:
                continue
            if self._here(h):
                if _pid_alive(h.pid, h.start):
                    return h
                h.path.unlink(missing_ok=True)
                continue
            m = _mtime(h.path)
            if m is None:
                continue
            if ours is not None and ours - m > self.stale_after * 1e9:
                h.path.unlink(missing_ok=True)  # its heartbeat stopped long ago
                continue
            return h
        return None

    def _record(self) -> dict[str, Any]:
        return {"token": self.token, "host": self.host, "node": self.node, "pid": self.pid,
                "start": self.start, "nonce": self.nonce, "holder": self.holder.name,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _publish(self, name: str, record: dict[str, Any] | None = None) -> bool:
        """Create ``<lock>/<name>`` holding a complete record, only if it does not exist.

        Returns:
            True when this call created it.
        """
        tmp = self.path / f".tmp-{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(record or self._record()))
        target = self.path / name
        try:
            os.link(tmp, target)
        except OSError as e:
            # NFS: a retransmitted link() can report an error although it worked; the link
            # count of the temporary file says what happened (open(2), O_EXCL).
            with contextlib.suppress(OSError):
                if tmp.stat().st_nlink == 2:
                    return True
            if isinstance(e, FileExistsError):
                return False
            if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                           errno.EMLINK):  # no hard links here: exclusive create instead
                return self._publish_excl(target, tmp.read_text())
            if e.errno == errno.ENOENT:  # the lock folder (or our file) went away
                raise FileNotFoundError(e.errno, e.strerror, str(target)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return True

    @staticmethod
    def _publish_excl(target: Path, text: str) -> bool:
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True

    def _judge(self, end: _Record) -> str:
        """Whether the run that owns the output lives: ``alive``, ``dead`` (every holder it has
        is dead), or ``changed`` (the owner changed while we looked)."""
        watch: dict[Path, int | None] = {}
        dead: set[str] = set()
        for h in self._holders(end.token):
            if self._here(h):
                if _pid_alive(h.pid, h.start):
                    return "alive"
                dead.add(h.path.name)
                continue
            watch[h.path] = _mtime(h.path)
        if not watch and end.data.get("holder") in dead:
            # The process that published the owner died here, and no other holder is in sight.
            self._bury(end.token)
            return "dead"
        # Other nodes' heartbeats are watched; an owner with no holder in sight counts as alive
        # for as long (its holders may not yet show in a cached listing, or it is leaving).
        deadline = time.monotonic() + self.stale_after
        while time.monotonic() < deadline:
            time.sleep(min(_POLL, self.stale_after / 10))
            now = self._end()
            if now is None or now.nonce != end.nonce:
                return "changed"
            for path, seen in list(watch.items()):
                m = _mtime(path)
                if m is None:
                    watch.pop(path)  # its process released it
                elif seen is None or m != seen:
                    return "alive"
            for h in self._holders(end.token):
                if h.path in watch:
                    continue
                if self._here(h):
                    if _pid_alive(h.pid, h.start):
                        return "alive"
                    continue
                watch[h.path] = _mtime(h.path)  # appeared: watch it a full period too
                deadline = max(deadline, time.monotonic() + self.stale_after)
        self._bury(end.token)
        return "dead"

    def _bury(self, token: str) -> None:
        """Remove the holder files of a dead run."""
        for h in self._holders(token):
            if not self._here(h) or not _pid_alive(h.pid, h.start):
                h.path.unlink(missing_ok=True)

    def _refusal(self, end: _Record) -> LockHeldError:
        d = end.data
        return LockHeldError(
            f"{self.label}: another run is writing it (started {d.get('since', '?')} on "
            f"{d.get('host', '?')}, pid {d.get('pid', '?')}); wait until it ends, or "
            f"{self.way_out}"
        )

    def _beat(self) -> None:
        warned = False
        while not self._stop.wait(HEARTBEAT):
            try:
                os.utime(self.holder)
            except FileNotFoundError:
                if not warned:
                    log.error("%s: this run's holder file %s was removed (was the run stopped "
                              "for over %.0f s?); another run may now write it",
                              self.label, self.holder.name, self.stale_after)
                    warned = True
            except OSError:
                pass

    # ------------------------------------------------------------------ releasing

    def release(self) -> None:
        """Stop the heartbeat and leave; the last holder of the run removes the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if not self.held:
            return
        self.held = False
        self.holder.unlink(missing_ok=True)
        try:
            self._clean_up()
        except OSError as e:  # what is left is judged by the next run
            log.debug("%s: leaving the lock folder as it is: %s", self.path, e)

    def _clean_up(self) -> None:
        chain = self._chain()
        if not chain or chain[-1].token != self.token:
            return
        if self._holders(self.token):
            return  # other tasks of this run are still working
        # One of the run's tasks cleans up (two may leave at the same moment).
        claim = f"cleanup-{chain[0].nonce}"
        if not self._publish(claim):
            return
        again = self._chain()
        # Look for holders again now that the claim is published: a task of the run that joined
        # since the first look keeps the output (a task joining from now on waits for the claim
        # to go, then checks that the owner record is still there).
        if again and again[-1].token == self.token and again[0].nonce == chain[0].nonce \
                and not self._holders(self.token):
            # Still the owner, and no process of the run is left.
            if self.on_last_exit is not None:
                with contextlib.suppress(OSError):
                    self.on_last_exit()
            (self.path / "owner").unlink(missing_ok=True)  # first: a new chain may now begin
            for rec in again[1:]:
                rec.path.unlink(missing_ok=True)
        (self.path / claim).unlink(missing_ok=True)
        root = self._read(self.path / "owner")
        for name in os.listdir(self.path):
            if name.startswith(".tmp-") or (name.startswith("cleanup-") and (
                    root is None or name != f"cleanup-{root.nonce}")):
                (self.path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
