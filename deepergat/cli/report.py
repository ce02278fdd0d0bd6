"""``deepergat report``: one HTML page about a predictions file."""

from __future__ import annotations

import click

from deepergat.contract import RANK_BY, RANK_ORDERS

from .options import list_options


@click.command()
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The HTML page [default: <predictions stem>.report.html].")
@click.option("--top", type=int, default=None, metavar="K",
              help="Rows of the short list [default: the screen's --top, else 25].")
@click.option("--order", type=click.Choice(RANK_ORDERS), default=None,
              help="asc: lowest first; desc: highest first [default: the screen's, else asc].")
@click.option("--rank-by", type=click.Choice(RANK_BY), default=None,
              help="Rank by the prediction or an ensemble's bound [default: the screen's].")
@click.option("--rank-k", type=float, default=None, metavar="k",
              help="k of the --rank-by bound mean ∓ k·std [default: the screen's, else 1].")
@list_options()
def report(predictions: str, output: str | None, top: int | None, order: str | None,
           rank_by: str | None, rank_k: float | None, where: str | None, group: bool,
           match_tol: str, known: tuple[str, ...], novel_only: bool,
           group_seconds: float) -> None:
    """One self-contained HTML page about a predictions file: the run, each target's
    histogram with the short list's threshold, statuses and flags with example ids, the short
    list (one row per distinct crystal with its group size and known/novel mark, as the screen
    made it unless told otherwise), an element map of the list against all candidates, and with
    embeddings a 2-D map. Works on files of millions of rows (read in blocks).

    \b
    Examples:
      deepergat report candidates.predictions.h5
      deepergat report candidates.predictions.h5 -o report.html --top 100
      deepergat report candidates.predictions.h5 --where "not has(Pb)" --known train.h5
    """
    from deepergat.io.matching import MatchTolerance
    from deepergat.screening.report import report_settings, write_report

    ctx = click.get_current_context()

    def given(name: str, value: object) -> object:  # a flag left at its default: the screen's
        source = ctx.get_parameter_source(name)
        return value if source is not None and source.name != "DEFAULT" else None

    settings = report_settings(
        predictions, top=top, order=order, rank_by=rank_by, rank_k=rank_k, where=where,
        group=given("group", group),
        tolerance=given("match_tol", match_tol) and MatchTolerance.parse(match_tol),
        known=tuple(known) or None, novel_only=given("novel_only", novel_only),
        seconds=given("group_seconds", group_seconds))
    settings.check()
    click.echo(f"wrote {write_report(predictions, output, settings=settings)}")


report.setting_flags = {  # type: ignore[attr-defined]
    "top_order": "--order", "no_group": "--no-group", "store": "--known"}
