"""``deepergat report``: one HTML page about a predictions file."""

from __future__ import annotations

import click

from deepergat.contract import RankOrder
from deepergat.errors import DeepergatError

from .options import (
    rank_order_option,
)


@click.command()
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The HTML page [default: <predictions stem>.report.html].")
@click.option("--top", type=int, default=25, show_default=True, help="Rows of the top-K table.")
@rank_order_option("--order", help_text="asc: lowest first; desc: highest first.")
def report(predictions: str, output: str | None, top: int, order: RankOrder) -> None:
    """One self-contained HTML page about a predictions file: the run, each target's
    histogram with the top-K threshold, statuses and flags with example ids, the top-K table,
    and with embeddings a 2-D map. Works on files of millions of rows (read in blocks).

    \b
    Examples:
      deepergat report candidates.predictions.h5
      deepergat report candidates.predictions.h5 -o report.html --top 100
    """
    from deepergat.screening.report import write_report

    if top < 1:
        raise DeepergatError(f"--top must be at least 1, got {top}")
    click.echo(f"wrote {write_report(predictions, output, top=top, order=order)}")
