"""Command-line options that several commands share (``deepergat …`` and ``deepergat-screen``).

Each shared option is written once here, its choices and default taken from
`deepergat.contract` (screening checks, ranking, model files) and `deepergat.system.devices` (device
choice), so the commands cannot drift apart. Light: click and the torch-free contract only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from deepergat.contract import (
    DEFAULT_GROUP_SECONDS,
    DEFAULT_MATCH_TOL,
    DEFAULT_MAX_ATOMS,
    DEFAULT_OVERLAP_THRESHOLD,
    DEFAULT_RANK_BY,
    DEFAULT_RANK_K,
    DEFAULT_RANK_ORDER,
    MODEL_FORMATS,
    RANK_BY,
    RANK_ORDERS,
    Status,
)
from deepergat.system.devices import DEFAULT_DEVICE, DEVICE_CHOICES

__all__ = [
    "DEVICE_HELP",
    "MODEL_ARGUMENT",
    "MODEL_FILES",
    "TRUST_HELP",
    "check_options",
    "describe_model_argument",
    "device_option",
    "list_options",
    "rank_by_option",
    "rank_k_option",
    "rank_order_option",
]

F = TypeVar("F", bound=Callable[..., Any])

#: ``--device`` help of the commands that predict.
DEVICE_HELP = "auto: a GPU when one is visible, else the CPU."

#: The exported files a command loads, by extension: ``.onnx, .pt, .pt2, .aoti.pt2``.
MODEL_FILES = ", ".join(f.extension for f in MODEL_FORMATS.values())
#: What a MODEL argument may be.
MODEL_ARGUMENT = f"a checkpoint (.ckpt), an exported file ({MODEL_FILES}) or a bundled model name"
TRUST_HELP = (
    "Allow a model file whose loading runs code from it, only for files you trust: "
    + "; ".join(f"{f.extension} is {f.trust_note}" for f in MODEL_FORMATS.values()
                if f.runs_code)
    + ". " + ", ".join(dict.fromkeys(f.extension for f in MODEL_FORMATS.values()
                                     if not f.runs_code))
    + " files and checkpoints never need it."
)


def describe_model_argument(fn: F) -> F:
    """Put `MODEL_ARGUMENT` in place of ``{model}`` in a command's docstring (its help).

    Apply it below the click decorators, so that click reads the filled docstring.
    """
    fn.__doc__ = (fn.__doc__ or "").replace("{model}", MODEL_ARGUMENT)
    return fn


def device_option(help_text: str | None = None) -> Callable[[F], F]:
    """``--device auto|cpu|cuda`` (default auto), as every command that runs a model has it."""
    return click.option("--device", type=click.Choice(DEVICE_CHOICES), default=DEFAULT_DEVICE,
                        show_default=True, help=help_text)


def check_options(fn: F) -> F:
    """``--max-atoms`` and ``--overlap-threshold``: the structure checks of predict and screen."""
    fn = click.option(
        "--overlap-threshold", type=float, default=DEFAULT_OVERLAP_THRESHOLD, show_default=True,
        help=f"Two atoms closer than this (Å) give status {int(Status.OVERLAP)}.",
    )(fn)
    return click.option(
        "--max-atoms", type=int, default=DEFAULT_MAX_ATOMS, show_default=True,
        help=f"Structures with more atoms get status {int(Status.TOO_MANY_ATOMS)}.",
    )(fn)


def rank_order_option(*names: str, help_text: str) -> Callable[[F], F]:
    """Which end of the ranking comes first (``--order`` or ``--top-order``)."""
    return click.option(*names, type=click.Choice(RANK_ORDERS), default=DEFAULT_RANK_ORDER,
                        show_default=True, help=help_text)


def rank_by_option(help_text: str) -> Callable[[F], F]:
    """``--rank-by mean|lower|upper``: the ranking key."""
    return click.option("--rank-by", type=click.Choice(RANK_BY), default=DEFAULT_RANK_BY,
                        show_default=True, help=help_text)


def rank_k_option(help_text: str) -> Callable[[F], F]:
    """``--rank-k k``: k of the ``--rank-by`` bound."""
    return click.option("--rank-k", type=float, default=DEFAULT_RANK_K, show_default=True,
                        metavar="k", help=help_text)


def list_options(*, where: bool = True) -> Callable[[F], F]:
    """The short list's options (screen ``--top``, report, extract): ``--where``, grouping by
    structure (``--group/--no-group``, ``--match-tol``, ``--group-seconds``) and novelty
    (``--known``, ``--novel-only``)."""
    tol = ",".join(f"{v:g}" for v in DEFAULT_MATCH_TOL)

    def apply(fn: F) -> F:
        fn = click.option(
            "--group-seconds", type=float, default=DEFAULT_GROUP_SECONDS, show_default=True,
            metavar="S", help="Time budget for grouping; rows past it stay ungrouped.")(fn)
        fn = click.option(
            "--novel-only", is_flag=True,
            help="Leave out structures that match a --known one.")(fn)
        fn = click.option(
            "--known", multiple=True, type=click.Path(dir_okay=False), metavar="STORE",
            help="Structure store of known crystals (training data, a database; deepergat "
                 "pack makes one): list rows that match one are marked with its id; "
                 "repeatable [default: the stores a bundled model ships; none: none].")(fn)
        fn = click.option(
            "--match-tol", default=tol, show_default=True, metavar="LTOL,STOL,ANGLE",
            help="pymatgen StructureMatcher tolerances for grouping and --known.")(fn)
        fn = click.option(
            "--group/--no-group", default=True, show_default=True,
            help="One row per distinct crystal (pymatgen's StructureMatcher, the best-ranked "
                 "first, with its group size), or the raw ranking.")(fn)
        if where:
            fn = click.option(
                "--where", metavar="EXPR",
                help='Only rows where EXPR holds, e.g. "has(Fe) and not has(Pb) and '
                     'n_elements <= 3 and novel" (see deepergat extract --help).')(fn)
        return fn

    return apply
