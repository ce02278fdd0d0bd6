"""How a screen fails: messages that name settings, one error for every rank, one line for a
rank that stopped.

Library messages name settings as `deepergat.errors.SettingError` fields (``{max_atoms}``);
the screen command writes its flags instead (``--max-atoms``). `literal` (re-exported from
`deepergat.errors`) keeps a path or a user's text in such a message as it is. A problem rank 0
finds before any work is broadcast as a `Refusal` and raised on every rank as `AllRanksError`,
so rank 0 alone reports it and no rank waits for another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepergat.errors import (
    DeepergatError,
    SettingError,
    environment_error,
    is_full_disk,
    is_write_failure,
    literal,
)

__all__ = ["AllRanksError", "Refusal", "literal", "work_failure"]

log = logging.getLogger(__name__)

class AllRanksError(DeepergatError):
    """A file-level problem found before any work, raised alike on every rank (so rank 0 alone
    reports it and no rank waits for another).

    Attributes:
        error: the problem itself (a `SettingError` when it names settings).
    """

    def __init__(self, error: DeepergatError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Refusal:
    """A problem that stops every rank, in a form that travels between ranks.

    Attributes:
        text: the message, or a `SettingError` template when ``names_settings``.
        names_settings: the message names settings.
    """

    text: str
    names_settings: bool = False

    @classmethod
    def of(cls, e: DeepergatError, prefix: str = "") -> Refusal:
        """The refusal for ``e``, its message after ``prefix`` (plain text, e.g. a rank)."""
        if isinstance(e, SettingError):
            return cls(literal(prefix) + e.template, names_settings=True)
        return cls(prefix + str(e))

    def error(self) -> AllRanksError:
        """The error every rank raises."""
        inner = (SettingError(self.text) if self.names_settings
                 else DeepergatError(self.text))
        return AllRanksError(inner)


#: Where `work_failure` puts its advice into a file-system message (no path holds it).
_FIX = "\0fix\0"


def work_failure(e: BaseException, rank: int, path: Path, needed: Callable[[], float],
                 kept: str) -> BaseException:
    """What a rank raises when its work stopped on ``e``, logged once.

    A problem the user can fix — a `DeepergatError` (a damaged store block, a killed worker
    process, ...) or a write the file system refused (a full disk or quota, also as h5py's
    RuntimeError; a read-only folder) — becomes one line, the latter naming ``path``, the
    free space there and ``needed`` bytes; its traceback is logged at DEBUG (``-vv``) only.
    Anything else is an internal failure: logged with its traceback and raised as it is.

    Args:
        e: the exception.
        rank: this rank, for the log.
        path: the parts folder or the output being written.
        needed: gives the bytes the rest of the run needs there (parts to come and the
            merged file).
        kept: what of the work survives, for the message.
    """
    if isinstance(e, KeyboardInterrupt | SystemExit):
        return e
    err: BaseException | None = None
    if isinstance(e, OSError | RuntimeError) and is_write_failure(e):
        fix = ("free space or choose another {output}" if is_full_disk(e)
               else "choose another {output}")
        plain = environment_error(e, path=path, needed=needed(), fix=_FIX)
        if plain is not None:
            err = SettingError(literal(plain).replace(_FIX, f"{fix} ({literal(kept)})"))
    elif isinstance(e, DeepergatError):
        err = e
    if err is None:
        log.exception("rank %d failed", rank)
        return e
    log.info("rank %d stopped: %s", rank, err)  # the rank's log file (stderr with -v)
    log.debug("rank %d: the error in full", rank, exc_info=e)
    return err
