"""The parts directory ``<output>.parts/``: run manifest, atomic part commits and the merge claim.

A chunk is done exactly when its part file ``chunk-<k>.h5`` exists: it is written under a
temporary name, fsynced and renamed into place, so a killed job leaves at most a temporary file,
never a half-written part. ``manifest.json`` records what defines the run — input digest, model
sha256, chunk size, ``--max-atoms``, ``--overlap-threshold`` and whether embeddings are kept (not
the rank or shard count) — and a run with different values refuses to add to it. The array task
that finds every chunk committed claims the merge with an ``O_CREAT | O_EXCL`` file (atomic on
Lustre and NFS, where flock is not reliable). Per-rank logs live in ``logs/``, which the merge
keeps.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepergat.errors import DeepergatError

from .predictions import Rows

__all__ = ["MANIFEST_FORMAT", "RUN_KEYS", "PartsDir", "settings_digest"]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "deepergat-screen-run"
#: Manifest keys that define a run: parts written under different values never mix.
RUN_KEYS = (
    "input_digest", "model_sha256", "chunk_size", "max_atoms", "overlap_threshold", "embeddings",
)
#: Keys every manifest holds (the run keys and what the merge reads).
_MANIFEST_KEYS = (*RUN_KEYS, "input", "n_structures", "n_chunks", "model", "model_metadata",
                  "targets", "embedding_dim")
_PART = re.compile(r"^chunk-(\d+)\.h5$")
_STR = h5py.string_dtype("utf-8")


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


def settings_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 over the `RUN_KEYS` values of a manifest: what makes two runs' parts the same."""
    text = json.dumps({k: manifest.get(k) for k in RUN_KEYS}, sort_keys=True)
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
            raise DeepergatError(
                f"{self.manifest_path}: damaged run manifest; remove {self.path} or pass "
                "--no-resume"
            ) from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise DeepergatError(
                f"{self.manifest_path}: not a deepergat-screen run manifest; remove {self.path} "
                "or choose another --output"
            )
        missing = [k for k in _MANIFEST_KEYS if k not in data]
        if missing:
            raise DeepergatError(
                f"{self.manifest_path}: damaged run manifest (missing {', '.join(missing)}); "
                f"remove {self.path} or pass --no-resume"
            )
        return data

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
            DeepergatError: naming each differing setting and the ways out.
        """
        diffs = self.differences(manifest, keys)
        if diffs:
            raise DeepergatError(
                f"{self.path}: holds parts of another run ({'; '.join(diffs)}); rerun with the "
                "same input, model and settings, pass --no-resume to discard them, or choose "
                "another --output"
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

        Raises:
            DeepergatError: resuming into parts of another run.
        """
        if not resume:
            if owned is None or self.differences(manifest):
                self.clear()
            else:
                for k in owned:
                    self.part_path(k).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        if not self.manifest_path.exists():
            tmp = self.path / f".manifest.json.tmp-{_unique_suffix()}"
            tmp.write_text(json.dumps(dict(manifest), indent=2, sort_keys=True) + "\n")
            try:
                os.link(tmp, self.manifest_path)  # atomic create-if-absent, also on NFS
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(self.path)
        self.check(manifest)

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
        stamped with the run that wrote it and a checksum of its arrays.

        Returns:
            The part's path.
        """
        final = self.part_path(k)
        tmp = self.path / f".{final.name}.tmp-{_unique_suffix()}"
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["chunk"] = int(k)
                f.attrs["start"] = int(start)
                f.attrs["stop"] = int(start + len(rows))
                f.attrs["run"] = str(run)
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
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path)
        return final

    def read(self, k: int, *, start: int, stop: int, targets: int,
             embedding_dim: int | None, spread: bool = False) -> Rows:
        """Chunk k's rows, checked against the plan.

        Raises:
            DeepergatError: a part that does not hold structures [start, stop) with ``targets``
                predictions (and embeddings, and the spread, when asked), naming the file.
        """
        path = self.part_path(k)
        try:
            with h5py.File(path, "r") as f:
                got = (int(f.attrs["chunk"]), int(f.attrs["start"]), int(f.attrs["stop"]))
                if got != (k, start, stop):
                    raise DeepergatError(
                        f"{path}: holds chunk {got[0]} [{got[1]}, {got[2]}) but the plan says "
                        f"chunk {k} [{start}, {stop}); remove {self.path} or pass --no-resume"
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
        except (OSError, KeyError, ValueError, TypeError) as e:
            self._discard(path, f"unreadable: {' '.join(str(e).split())}")
        m = stop - start
        ok = (len(rows) == m and rows.predictions.shape == (m, targets)
              and (embedding_dim is None or (emb is not None and emb.shape == (m, embedding_dim)))
              and (not spread or (std is not None and std.shape == (m, targets))))
        if not ok:
            self._discard(path, "unexpected shapes")
        if not np.array_equal(rows.index, np.arange(start, stop)):
            self._discard(path, f"its index column does not run over [{start}, {stop})")
        if checksum is None or _attr_text(checksum) != rows_checksum(rows):
            self._discard(path, "its arrays do not match their checksum")
        return rows

    def _discard(self, path: Path, why: str) -> None:
        """A damaged part: removed (its chunk is then missing), and named in the error."""
        path.unlink(missing_ok=True)
        raise DeepergatError(
            f"{path}: damaged part file ({why}); removed — rerun the same screen and that chunk "
            "is computed again"
        )

    # ------------------------------------------------------------------ merge claim, cleanup

    def claim_merge(self, token: str) -> bool:
        """Try to become the one process that merges (``O_CREAT | O_EXCL``).

        Args:
            token: the job the claim belongs to (e.g. the SLURM array job id): a rerun under a new
                job id gets a fresh claim, so a merge killed mid-way does not block it forever.

        Returns:
            True for exactly one caller per token.
        """
        path = self.path / f"merge-claim-{re.sub(r'[^A-Za-z0-9_.-]', '_', token)}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = path.read_text().strip()
            log.info("merge already claimed (%s): %s", path.name, holder)
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{socket.gethostname()} pid {os.getpid()} at {time.ctime()}\n")
        return True

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
                                                        "merge-claim-"))
                    or entry == "manifest.json"):
                p.unlink(missing_ok=True)
            else:
                log.warning("leaving unknown file %s in %s", entry, self.path)

    def remove(self) -> None:
        """After a merge: `clear`, then remove the directory itself if only empty logs remain."""
        self.clear()
        with contextlib.suppress(OSError):
            if self.logs.is_dir() and not any(self.logs.iterdir()):
                self.logs.rmdir()
            self.path.rmdir()
