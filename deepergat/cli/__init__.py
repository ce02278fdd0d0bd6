"""The command line: ``deepergat`` (`main`, one module per subcommand) and ``deepergat-screen``
(`deepergat.cli.screen.main`). The only layer that prints; everything below it logs.

==================  ==========================================================================
``app``             the ``deepergat`` group and its subcommands
``base``            one-line errors with exit code 2, logging to stderr
``options``         options several commands share (devices, checks, ranking, trust)
``<command>``       one module per subcommand: pack, info, subset, train, evaluate, predict,
                    models, export, screen, report, extract
==================  ==========================================================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    # Lazily, so that ``python -m deepergat.cli.screen`` runs that module before any import
    # of it (runpy warns otherwise).
    if name == "main":
        from .app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
