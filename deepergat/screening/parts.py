"""The parts directory ``<output>.parts/``: run manifest, atomic part commits and the merge claim.

A chunk is done exactly when its part file ``chunk-<k>.h5`` exists: it is written under a
temporary name, fsynced and renamed into place, so a killed job leaves at most a temporary file,
never a half-written part. ``manifest.json`` records what defines the run — input digest, model
sha256, chunk size, ``max_atoms``, ``overlap_threshold`` and whether embeddings are kept (not
the rank or shard count) — and a run with different values refuses to add to it. It also holds
``run``, an id drawn when the manifest is created: every part is stamped with it, and a part
whose stamp is not the manifest's (left by another run) is removed and computed again, never
merged. The array task that finds every chunk committed claims the merge with an
``O_CREAT | O_EXCL`` file (atomic on Lustre and NFS, where flock is not reliable). Per-rank logs
live in ``logs/``, which the merge keeps; a run that committed nothing leaves no directory.

``input-verified.json`` remembers the input store's content digest as last confirmed by a full
re-hash, with the store's fingerprint (`store_fingerprint`) at that time, so later tasks of the
run need not re-hash an unchanged store (docs/design.md §11 says what this detects).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat.errors import DeepergatError, SettingError
from deepergat.system.files import atomic_open, atomic_path
from deepergat.system.lock import process_record, record_alive

from .failures import literal
from .predictions import Rows

__all__ = ["INPUT_STAMP", "MANIFEST_FORMAT", "RUN_KEYS", "PartsDir", "describe_stamps",
           "settings_digest", "store_fingerprint"]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "deepergat-screen-run"
#: Manifest keys that define a run: parts written under different values never mix.
RUN_KEYS = (
    "input_digest", "model_sha256", "chunk_size", "max_atoms", "overlap_threshold", "embeddings",
    "subset",
)
#: Keys every manifest holds (the run keys, what the merge reads, and the run's id).
_MANIFEST_KEYS = (*(k for k in RUN_KEYS if k != "subset"), "input", "n_structures", "n_chunks",
                  "model", "model_metadata", "targets", "embedding_dim", "run")  # subset: optional
_PART = re.compile(r"^chunk-(\d+)\.h5$")
_STR = h5py.string_dtype("utf-8")
#: The input store's last verified digest and fingerprint, in the parts directory.
INPUT_STAMP = "input-verified.json"
#: Rows per sampled block, and blocks per dataset, of a store's fingerprint.
_SAMPLE_ROWS = 4096
_SAMPLES = 8
#: A store changed less than this many seconds ago is not stamped (coarse file system clocks).
_SETTLE = 2.0


def _whole(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _targets_ok(v: Any) -> bool:
    return (isinstance(v, list) and len(v) > 0 and all(
        isinstance(t, dict) and _text(t.get("name")) and isinstance(t.get("units", ""), str)
        for t in v))


#: What each manifest value must be: (key, check, what is expected).
_MANIFEST_VALUES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("input_digest", _text, "a digest"),
    ("model_sha256", _text, "a sha256"),
    ("chunk_size", _whole(1), "a whole number ≥ 1"),
    ("max_atoms", _whole(1), "a whole number ≥ 1"),
    ("overlap_threshold", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
     and math.isfinite(v) and v >= 0, "a number ≥ 0"),
    ("embeddings", lambda v: isinstance(v, bool), "true or false"),
    ("input", _text, "a path"),
    ("n_structures", _whole(0), "a whole number ≥ 0"),
    ("n_chunks", _whole(0), "a whole number ≥ 0"),
    ("model", _text, "a model name or path"),
    ("model_metadata", lambda v: isinstance(v, dict), "an object"),
    ("targets", _targets_ok, "a list of {name, units}"),
    ("embedding_dim", lambda v: v is None or _whole(0)(v), "a whole number ≥ 0"),
    ("spread", lambda v: isinstance(v, bool), "true or false"),
    ("run", _text, "a run id"),
)


def rows_checksum(rows: Rows) -> str:
    """sha256 over a part's arrays (index, ids, status, flags, predictions, embeddings, std)."""
    h = hashlib.sha256()
    for a in (rows.index.astype(np.int64), rows.status.astype(np.uint8),
              rows.flags.astype(np.uint8), rows.predictions.astype(np.float32)):
        h.update(np.ascontiguousarray(a).tobytes())
    for s in rows.ids:
        b = s.encode()
        h.update(len(b).to_bytes(8, "little") + b)
    for extra in (rows.embeddings, rows.std):
        h.update(b"-" if extra is None else np.ascontiguousarray(extra, np.float32).tobytes())
    return h.hexdigest()


def _attr_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Foreign(Exception):
    """A part stamped by another run."""

    def __init__(self, stamp: str) -> None:
        super().__init__(stamp)
        self.stamp = stamp


def describe_stamps(found: list[tuple[int, str]], limit: int = 5) -> str:
    """``chunk-000003.h5 (stamped 'run-a'), …`` for (chunk, stamp) pairs."""
    text = ", ".join(f"chunk-{k:06d}.h5 (stamped {stamp!r})" for k, stamp in found[:limit])
    return text + (f", … ({len(found) - limit} more)" if len(found) > limit else "")


def settings_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 over the `RUN_KEYS` values of a manifest: what makes two runs' parts the same
    (``subset`` only when there is one, so a full screen's digest is what it always was)."""
    text = json.dumps({k: manifest.get(k) for k in RUN_KEYS
                       if k != "subset" or manifest.get(k) is not None}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unique_suffix() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}"


def _manifest_problem(data: Mapping[str, Any]) -> str | None:
    """The first value of a manifest that is not what the merge can use, described."""
    missing = [k for k in _MANIFEST_KEYS if k not in data]
    if missing:
        more = " (no run id: written by an older deepergat)" if missing == ["run"] else ""
        return f"missing {', '.join(missing)}{more}"
    for key, ok, expected in _MANIFEST_VALUES:
        if key in data and not ok(data[key]):
            return f"{key} is {json.dumps(data[key])[:40]}, expected {expected}"
    chunks = math.ceil(data["n_structures"] / data["chunk_size"])
    if data["n_chunks"] != chunks:
        return (f"n_chunks is {data['n_chunks']}, but {data['n_structures']} structures in "
                f"chunks of {data['chunk_size']} make {chunks}")
    return None


def store_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a store file's content without reading all of it.

    The file's device, inode, size, mtime and ctime (ns; read through an open descriptor, so an
    NFS client revalidates them with the server), and the sha256 of the shapes, types and
    sampled row blocks (first, last and `_SAMPLES` spread ones, of `_SAMPLE_ROWS` rows) of every
    dataset. ctime cannot be set by a user: any write to the file moves it.

    Raises:
        OSError: the file cannot be opened.
    """
    p = Path(path)
    fd = os.open(p, os.O_RDONLY)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    h = hashlib.sha256()
    try:
        with h5py.File(p, "r") as f:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for name in sorted(names):
                ds = f[name]
                h.update(f"{name}|{ds.shape}|{ds.dtype}|".encode())
                n = ds.shape[0] if ds.shape else 0
                if not ds.shape:
                    h.update(np.asarray(ds[()]).tobytes())
                    continue
                starts = {0, max(0, n - _SAMPLE_ROWS)}
                starts.update(int(x) for x in np.linspace(0, max(0, n - _SAMPLE_ROWS), _SAMPLES))
                for a in sorted(starts):
                    block = ds[a : a + _SAMPLE_ROWS]
                    if block.dtype.kind == "O":
                        for v in block.ravel():
                            b = v if isinstance(v, bytes) else str(v).encode()
                            h.update(len(b).to_bytes(8, "little") + b)
                    else:
                        h.update(np.ascontiguousarray(block).tobytes())
    except (OSError, KeyError, ValueError, TypeError) as e:
        h.update(f"unreadable: {e}".encode())
    return {"path": str(p.resolve()), "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "sampled": h.hexdigest()}


class PartsDir:
    """``<output>.parts/`` of one output file.

    Args:
        output: the final predictions file.
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        self.output = Path(output)
        self.path = self.output.with_name(self.output.name + ".parts")
        self.manifest_path = self.path / "manifest.json"
        self.logs = self.path / "logs"
        self._run: str | None = None

    # ------------------------------------------------------------------ manifest

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when there is none.

        Raises:
            DeepergatError: a manifest that is not valid JSON.
        """
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise SettingError(
                f"{literal(self.manifest_path)}: damaged run manifest; remove "
                f"{literal(self.path)} or pass {{resume}}"
            ) from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise SettingError(
                f"{literal(self.manifest_path)}: not a deepergat-screen run manifest; remove "
                f"{literal(self.path)} or choose another {{output}}"
            )
        if "run" not in data:
            raise SettingError(
                f"{literal(self.path)}: parts written by an older deepergat; pass {{resume}} "
                "to discard them"
            )
        problem = _manifest_problem(data)
        if problem:
            raise SettingError(
                f"{literal(self.manifest_path)}: damaged run manifest ({literal(problem)}); "
                f"remove {literal(self.path)} or pass {{resume}}"
            )
        return data

    def written_by_older(self) -> bool:
        """Whether the manifest was written by an older deepergat (it has no ``run`` id): its
        parts cannot be resumed, only discarded."""
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return False
        return (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
                and "run" not in data)

    def run_id(self) -> str:
        """The id of the run the manifest belongs to (what parts are stamped with).

        Raises:
            DeepergatError: no manifest, or a damaged one.
        """
        if self._run is None:
            manifest = self.read_manifest()
            if manifest is None:
                raise DeepergatError(f"{self.manifest_path}: no run manifest; rerun the screen")
            self._run = str(manifest["run"])
        return self._run

    def differences(
        self, manifest: Mapping[str, Any], keys: Iterable[str] = RUN_KEYS
    ) -> list[str]:
        """Human-readable differences between the stored manifest and ``manifest``."""
        have = self.read_manifest()
        if have is None:
            return []
        return [
            f"{k} {have.get(k)!r} there, {manifest.get(k)!r} now"
            for k in keys
            if have.get(k) != manifest.get(k)
        ]

    def check(self, manifest: Mapping[str, Any], keys: Iterable[str] = RUN_KEYS) -> None:
        """Raise when the stored manifest belongs to another run.

        Raises:
            SettingError: naming each differing setting and the ways out.
        """
        diffs = self.differences(manifest, keys)
        if diffs:
            raise SettingError(
                f"{literal(self.path)}: holds parts of another run ({literal('; '.join(diffs))}); "
                "rerun with the same input, model and settings, pass {resume} to discard them, "
                "or choose another {output}"
            )

    def prepare(
        self,
        manifest: Mapping[str, Any],
        *,
        resume: bool,
        owned: Iterable[int] | None = None,
    ) -> None:
        """Create the directory and manifest, or check an existing one.

        Args:
            manifest: this run's manifest (`MANIFEST_FORMAT`, the `RUN_KEYS` and descriptive
                fields).
            resume: False discards earlier parts: all of them when the manifest differs or
                ``owned`` is None, else only the parts of the ``owned`` chunks (an array task must
                not delete its siblings' fresh parts).
            owned: the chunks this process will compute (array shards), or None (all).

        A new manifest gets a fresh ``run`` id. Parts of the ``owned`` chunks that are stamped
        with another run's id (or cannot be read) are removed with a warning naming them, so
        this run computes them again.

        Raises:
            DeepergatError: resuming into parts of another run.
        """
        if not resume:
            if owned is None or self.written_by_older() or self.differences(manifest):
                self.clear()
            else:
                for k in owned:
                    self.part_path(k).unlink(missing_ok=True)
        self._run = None
        self.path.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.manifest_path.exists():
            tmp = self.path / f".manifest.json.tmp-{_unique_suffix()}"
            fresh = {**dict(manifest), "run": f"parts-{uuid.uuid4().hex}"}
            tmp.write_text(json.dumps(fresh, indent=2, sort_keys=True) + "\n")
            try:
                # create-if-absent (atomic, also on NFS), not a rename: array tasks starting
                # together must not replace each other's run id
                os.link(tmp, self.manifest_path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(self.path)
        self.check(manifest)
        self.sweep(self.committed() if owned is None else owned)

    def sweep(self, chunks: Iterable[int]) -> list[int]:
        """Remove the parts of ``chunks`` that another run wrote (their stamp is not this
        manifest's run id) or that cannot be read, naming them in a warning.

        Returns:
            The chunks removed (they are missing now).
        """
        run = self.run_id()
        done = self.committed()
        removed: list[tuple[int, str]] = []
        for k in sorted(set(chunks) & done):
            stamp = self._stamp(k)
            if stamp != run:
                self.part_path(k).unlink(missing_ok=True)
                removed.append((k, stamp or "no stamp"))
        if removed:
            log.warning("%s: removed %d part files not written by this run (%s); their chunks "
                        "are computed again", self.path, len(removed), describe_stamps(removed))
        return [k for k, _ in removed]

    def foreign(self, chunks: Iterable[int], run: str | None = None) -> list[tuple[int, str]]:
        """(chunk, its stamp) for each committed part of ``chunks`` whose stamp is not ``run``
        (default: the manifest's run id); an unreadable part's stamp reads ``unreadable``."""
        expected = self.run_id() if run is None else run
        done = self.committed()
        out = []
        for k in sorted(set(chunks) & done):
            stamp = self._stamp(k)
            if stamp != expected:
                out.append((k, stamp or "no stamp"))
        return out

    def _stamp(self, k: int) -> str:
        """The run stamp of chunk k's part ("" when it has none, ``unreadable`` when it cannot be
        opened)."""
        try:
            with h5py.File(self.part_path(k), "r") as f:
                return _attr_text(f.attrs.get("run", ""))
        except FileNotFoundError:
            return ""
        except (OSError, ValueError, TypeError):
            return "unreadable"

    # ------------------------------------------------------------------ parts

    def part_path(self, k: int) -> Path:
        """Path of chunk k's part file."""
        return self.path / f"chunk-{k:06d}.h5"

    def committed(self) -> set[int]:
        """The chunks whose part file exists."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {int(m.group(1)) for m in map(_PART.match, names) if m}

    def missing(self, chunks: Iterable[int]) -> list[int]:
        """Those of ``chunks`` without a part, ascending."""
        done = self.committed()
        return sorted(k for k in chunks if k not in done)

    def commit(self, k: int, start: int, rows: Rows, *, run: str = "") -> Path:
        """Write chunk k's rows (structures [start, start + len(rows))) as its part, atomically,
        stamped with the manifest's run id (``attrs["run"]``) and a checksum of its arrays.

        Args:
            k, start, rows: the chunk, its first structure and its rows.
            run: the writing process's lock token, kept as ``attrs["writer"]`` (diagnostics).

        Returns:
            The part's path.
        """
        final = self.part_path(k)
        stamp = self.run_id()
        # a temporary name of its own: ranks and array tasks commit side by side, and
        # `clear_temporaries` knows its prefix
        with atomic_path(final, tmp=self.path / f".{final.name}.tmp-{_unique_suffix()}") as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["chunk"] = int(k)
                f.attrs["start"] = int(start)
                f.attrs["stop"] = int(start + len(rows))
                f.attrs["run"] = stamp
                f.attrs["writer"] = str(run)
                f.attrs["checksum"] = rows_checksum(rows)
                f.create_dataset("index", data=rows.index.astype(np.int64))
                f.create_dataset("ids", data=rows.ids, dtype=_STR)
                f.create_dataset("status", data=rows.status.astype(np.uint8))
                f.create_dataset("flags", data=rows.flags.astype(np.uint8))
                f.create_dataset("predictions", data=rows.predictions.astype(np.float32))
                if rows.embeddings is not None:
                    f.create_dataset("embeddings", data=rows.embeddings.astype(np.float32))
                if rows.std is not None:
                    f.create_dataset("std", data=rows.std.astype(np.float32))
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(self.path)
        return final

    def read(self, k: int, *, start: int, stop: int, targets: int,
             embedding_dim: int | None, spread: bool = False, run: str | None = None,
             index: np.ndarray | None = None) -> Rows:
        """Chunk k's rows, checked against the run and the plan.

        Args:
            run: the run id the part must be stamped with (default: the manifest's).
            index: the store rows the part must hold (default: ``start … stop − 1``; a
                subset screen's come from its plan).

        Raises:
            DeepergatError: a part stamped by another run (removed, named), or one that does not
                hold structures [start, stop) with ``targets`` predictions (and embeddings, and
                the spread, when asked), naming the file.
        """
        path = self.part_path(k)
        expected = self.run_id() if run is None else run
        try:
            with h5py.File(path, "r") as f:
                stamp = _attr_text(f.attrs.get("run", ""))
                if stamp != expected:
                    raise _Foreign(stamp)
                got = (int(f.attrs["chunk"]), int(f.attrs["start"]), int(f.attrs["stop"]))
                if got != (k, start, stop):
                    raise SettingError(
                        f"{literal(path)}: holds chunk {got[0]} [{got[1]}, {got[2]}) but the "
                        f"plan says chunk {k} [{start}, {stop}); remove {literal(self.path)} or "
                        "pass {resume}"
                    )
                preds = f["predictions"][:]
                emb = f["embeddings"][:] if "embeddings" in f else None
                std = f["std"][:] if "std" in f else None
                rows = Rows(
                    index=f["index"][:],
                    ids=[s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][:]],
                    status=f["status"][:],
                    flags=f["flags"][:],
                    predictions=preds,
                    embeddings=emb,
                    std=std,
                )
                checksum = f.attrs.get("checksum")
        except _Foreign as e:
            self._discard(path, f"stamped {e.stamp or 'with no run'!r}, this run's manifest "
                          f"says {expected!r}", what="part file of another run")
        except (OSError, KeyError, ValueError, TypeError) as e:
            self._discard(path, f"unreadable: {' '.join(str(e).split())}")
        m = stop - start
        ok = (len(rows) == m and rows.predictions.shape == (m, targets)
              and (embedding_dim is None or (emb is not None and emb.shape == (m, embedding_dim)))
              and (not spread or (std is not None and std.shape == (m, targets))))
        if not ok:
            self._discard(path, "unexpected shapes")
        want = np.arange(start, stop) if index is None else np.asarray(index)
        if not np.array_equal(rows.index, want):
            self._discard(path, f"its index column is not the plan's rows of [{start}, {stop})")
        if checksum is None or _attr_text(checksum) != rows_checksum(rows):
            self._discard(path, "its arrays do not match their checksum")
        return rows

    def _discard(self, path: Path, why: str, *, what: str = "damaged part file") -> None:
        """A damaged or foreign part: removed (its chunk is then missing), named in the error."""
        path.unlink(missing_ok=True)
        raise DeepergatError(
            f"{path}: {what} ({why}); removed — rerun the same screen and that chunk is "
            "computed again"
        )

    # ------------------------------------------------------------------ merge claim, cleanup

    def claim_merge(self, token: str) -> bool:
        """Try to become the one process that merges (``O_CREAT | O_EXCL``).

        The claim records its process (`deepergat.system.lock.process_record`). A claim whose
        process is dead by the output lock's rule (its pid gone on this node; elsewhere, no
        refresh for `STALE_AFTER`) is taken over by creating the next one in its chain
        (``merge-claim-<token>.1``, ``.2``, …): exactly one caller wins each, and nothing is
        ever removed, so two takeovers never both merge.

        Args:
            token: the job the claim belongs to (e.g. the SLURM array job id); a rerun under a
                new job id gets a fresh chain.

        Returns:
            True for exactly one live caller per token; False while a live process holds it.
        """
        base = f"merge-claim-{re.sub(r'[^A-Za-z0-9_.-]', '_', token)}"
        generation = 0
        while True:
            path = self.path / (base if generation == 0 else f"{base}.{generation}")
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record: Any = None
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads(path.read_text())
                if record_alive(record, path):
                    log.info("merge already claimed (%s): %s", path.name, record)
                    return False
                log.warning("%s: the process that claimed the merge is gone (%s); taking over",
                            path, record)
                generation += 1
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps({**process_record(), "at": time.ctime()}))
            self._claim = path
            return True

    def refresh_claim(self) -> None:
        """Show that this process's merge claim is alive (for claimants on other nodes)."""
        claim = getattr(self, "_claim", None)
        if claim is not None:
            with contextlib.suppress(OSError):
                os.utime(claim)

    def clear_temporaries(self) -> None:
        """Remove half-written parts and manifests of killed processes (only when no other
        process writes here)."""
        if not self.path.is_dir():
            return
        for entry in os.listdir(self.path):
            if entry.startswith((".chunk-", ".manifest.json.tmp-")):
                (self.path / entry).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove parts, temporary files, claims and the manifest; keep ``logs/``."""
        if not self.path.is_dir():
            return
        for entry in os.listdir(self.path):
            p = self.path / entry
            if entry == "logs":
                continue
            if (_PART.match(entry) or entry.startswith((".chunk-", ".manifest.json.tmp-",
                                                        "merge-claim-", f".{INPUT_STAMP}"))
                    or entry in ("manifest.json", INPUT_STAMP)):
                p.unlink(missing_ok=True)
            else:
                log.warning("leaving unknown file %s in %s", entry, self.path)
        self._run = None

    def remove(self) -> None:
        """After a merge: `clear`, then remove the directory itself if only empty logs remain."""
        self.clear()
        with contextlib.suppress(OSError):
            if self.logs.is_dir() and not any(self.logs.iterdir()):
                self.logs.rmdir()
            self.path.rmdir()

    def discard_if_unused(self) -> bool:
        """Remove the whole directory (manifest, logs) when no part was ever committed to it —
        a run that failed before computing anything leaves nothing behind. Call it only while
        owning the output (no other process writes here).

        Returns:
            True when the directory was removed.
        """
        try:
            names = os.listdir(self.path)
        except OSError:
            return False
        if "manifest.json" not in names or any(
                _PART.match(n) or n.startswith((".chunk-", "merge-claim-")) for n in names):
            return False
        for entry in names:
            p = self.path / entry
            if entry == "logs":
                with contextlib.suppress(OSError):
                    for f in p.iterdir():
                        f.unlink(missing_ok=True)
                    p.rmdir()
            elif entry in ("manifest.json", INPUT_STAMP) or entry.startswith(
                    (".manifest.json.tmp-", f".{INPUT_STAMP}")):
                p.unlink(missing_ok=True)
        self._run = None
        try:
            self.path.rmdir()
        except OSError:
            return False
        log.info("removed %s: the run committed no part", self.path)
        return True

    # ------------------------------------------------------------------ input verification

    def input_digest(self, store: str | os.PathLike[str], compute: Callable[[], str]) -> str:
        """The content digest of the input ``store`` as it is now.

        When this directory holds a stamp of the same store with the same `store_fingerprint`
        (file identity, size, mtime, ctime, sampled blocks), the digest a full re-hash confirmed
        then is returned without reading the store; otherwise ``compute()`` re-hashes it and,
        when this directory exists and the store has settled, the result is stamped.
        """
        try:
            before = store_fingerprint(store)
        except OSError:
            return compute()
        stamp_path = self.path / INPUT_STAMP
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            stamp = json.loads(stamp_path.read_text())
            if stamp.get("fingerprint") == before and _text(stamp.get("digest")):
                log.info("%s: unchanged since its digest was verified (%s); not re-hashed",
                         store, stamp.get("verified", "?"))
                return str(stamp["digest"])
        digest = compute()
        if self.path.is_dir() and time.time() - before["ctime_ns"] / 1e9 > _SETTLE:
            # a stamp that cannot be written costs only a re-hash next time; a temporary file
            # left by a failed rename goes with `clear`
            tmp = self.path / f".{INPUT_STAMP}.tmp-{_unique_suffix()}"
            with contextlib.suppress(OSError), atomic_open(stamp_path, "w", tmp=tmp) as fh:
                fh.write(json.dumps({"fingerprint": before, "digest": digest,
                                     "verified": time.strftime("%Y-%m-%d %H:%M:%S")}))
        return digest
