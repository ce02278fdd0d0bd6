"""What every command shares: one-line errors with exit code 2, and logging to stderr.

A `DeepergatError` raised by any subcommand is printed as one line ``error: <message>`` on
stderr with exit code 2 (the `DeepergatGroup` does it; `report_errors` does the same for
stand-alone click commands). Progress bars and tables belong in the command modules, not in the
library: library functions take a progress callback.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from deepergat.errors import DeepergatError, SettingError, user_error

__all__ = [
    "EXIT_USER_ERROR",
    "DeepergatGroup",
    "fail",
    "flag_names",
    "missing_extra",
    "report_error",
    "report_errors",
    "setup_logging",
]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("deepergat.cli")

#: Exit code for errors the user can fix (click uses 2 for usage errors too).
EXIT_USER_ERROR = 2


#: A command's own words for settings its options do not name alike: setting → flag (an
#: attribute a command may carry, e.g. ``{"resume": "--no-resume"}``).
SETTING_FLAGS = "setting_flags"


def flag_names(command: click.Command | None) -> dict[str, str]:
    """How ``command`` names settings: each option's parameter name → its first long flag
    (``val_fraction`` → ``--val-fraction``), plus the command's `SETTING_FLAGS`."""
    if command is None:
        return {}
    names: dict[str, str] = {}
    for param in command.params:
        longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        if isinstance(param, click.Option) and param.name and longs:
            names[param.name] = longs[0]
    names.update(getattr(command, SETTING_FLAGS, {}))
    return names


def fail(err: DeepergatError | str, flags: dict[str, str] | None = None) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with code 2; a `SettingError`
    names settings by ``flags`` (`flag_names` of the command that ran)."""
    text = err.render(flags or {}) if isinstance(err, SettingError) else str(err)
    message = " ".join(text.split()) or type(err).__name__
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USER_ERROR)


def report_errors(fn: F) -> F:
    """Decorator for click commands outside the `main` group: `DeepergatError` -> `fail`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DeepergatError, OSError, RuntimeError, ImportError) as e:
            ctx = click.get_current_context(silent=True)
            report_error(e, flag_names(ctx.command if ctx is not None else None))

    return wrapper  # type: ignore[return-value]


#: Packages an install may lack, and the extra that brings each (pyproject.toml).
EXTRAS = {"torch": "train", "onnx": "train", "onnxscript": "train", "onnxruntime": "cpu",
          "torch_geometric": "test", "mpi4py": "mpi", "pandas": "cpu"}


def missing_extra(e: BaseException) -> DeepergatError | None:
    """The one line for an import of a package this install lacks (`EXTRAS`), else None."""
    if not isinstance(e, ImportError):
        return None
    name = (e.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    how = (f"pip install 'deepergat[{extra}]'" if extra != "cpu" else
           "pip install 'deepergat[cpu]' (or 'deepergat[gpu]' on a GPU node)")
    what = {"train": "training, exporting and reading checkpoints need PyTorch and ONNX",
            "cpu": "predicting with exported models needs ONNX Runtime",
            "mpi": "MPI ranks need mpi4py (or use --shard without MPI)",
            "test": "the reference forms need torch-geometric"}[extra]
    return DeepergatError(f"{what}, which this install lacks ({name}): {how}")


def report_error(e: BaseException, flags: dict[str, str] | None = None) -> NoReturn:
    """`fail` with the one line for ``e`` (`deepergat.errors.user_error`: a `DeepergatError`,
    or a full disk, a quota, a read-only folder, missing permissions — also h5py's
    RuntimeError for a write that failed on a full disk; `missing_extra`: a package this
    install lacks); re-raise anything else."""
    err = missing_extra(e) or user_error(e)
    if err is None:
        raise e
    log.debug("the error in full", exc_info=e)
    fail(err, flags)


class DeepergatGroup(click.Group):
    """A click group whose subcommands report `DeepergatError` as one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DeepergatError, OSError, RuntimeError, ImportError) as e:  # the user's to fix
            name = ctx.invoked_subcommand
            report_error(e, flag_names(self.get_command(ctx, name) if name else None))


def setup_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, info with ``-v``, debug with ``-vv``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logger = logging.getLogger("deepergat")
    logger.setLevel(level)
    if not any(getattr(h, "_deepergat", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._deepergat = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    for h in logger.handlers:
        if getattr(h, "_deepergat", False):
            h.setStream(sys.stderr)  # click's test runner swaps stderr between invocations
