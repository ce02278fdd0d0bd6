"""``deepergat extract``: chosen structures of a screen as files ready for DFT."""

from __future__ import annotations

import click

from deepergat.contract import RankBy, RankOrder

from .options import (
    list_options,
    rank_by_option,
    rank_k_option,
    rank_order_option,
)


@click.command()
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("--top", type=int, metavar="K",
              help="The K best distinct structures by the first target (with --where: of the "
                   "rows it allows).")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False, exists=True),
              help="A file of ids, one per line (exactly these, in this order).")
@click.option("--where", metavar="EXPR",
              help='Only rows where EXPR holds: comparisons of a target, <target>_std, status, '
                   'flags, n_elements or group_size with a number; has(El); formula == '
                   '"SrTiO3"; novel, known; joined by not, and, or and parentheses, e.g. '
                   '"heat_ref < 0.2 and heat_ref_std < 0.05 and not has(Pb)".')
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the structure files and selection.csv.")
@click.option("--format", "fmt", type=click.Choice(["cif", "poscar", "extxyz"]), default="cif",
              show_default=True)
@rank_order_option("--order", help_text="With --top: asc lowest first, desc highest first.")
@rank_by_option("With --top: rank by the prediction or a bound (ensembles).")
@rank_k_option("k of the --rank-by bound mean ∓ k·std.")
@list_options(where=False)
@click.option("--store", type=click.Path(dir_okay=False),
              help="The input store, if it moved [default: the one the file records].")
def extract(predictions: str, top: int | None, ids_file: str | None, where: str | None,
            out_dir: str, fmt: str, order: RankOrder, rank_by: RankBy, rank_k: float,
            group: bool, match_tol: str, known: tuple[str, ...], novel_only: bool,
            group_seconds: float, store: str | None) -> None:
    """Write chosen structures of a screen as files ready for DFT, with DIR/selection.csv
    (id, formula, predictions, std, status, flags, file, group_size, members, known). Choose
    with --top and/or --where (one structure per distinct crystal unless --no-group), or with
    --ids; the structures come from the store that was screened (refused if it changed since).

    \b
    Examples:
      deepergat extract cands.predictions.h5 --top 200 -o shortlist/ --format poscar
      deepergat extract cands.predictions.h5 --where "heat_ref < 0.1 and status == 0" -o low/
      deepergat extract cands.predictions.h5 --top 50 --where "novel and n_elements <= 3" \\
          --known train.h5 -o new/
      deepergat extract cands.predictions.h5 --ids picked.txt -o picked/
    """
    from deepergat.screening.select import extract as run_extract

    ids = None
    if ids_file:
        with open(ids_file) as fh:
            ids = [line.strip() for line in fh if line.strip()]
    result = run_extract(predictions, out_dir, top=top, ids=ids, where=where,
                         fmt=fmt, order=order, rank_by=rank_by,  # type: ignore[arg-type]
                         rank_k=rank_k, store=store, group=group, match_tol=match_tol,
                         known=known, novel_only=novel_only, group_seconds=group_seconds)
    click.echo(f"wrote {len(result.files)} {fmt} files and {result.selection}")


# Settings whose flag is not --<name> (`deepergat.cli.base.flag_names`).
extract.setting_flags = {  # type: ignore[attr-defined]
    "ids": "--ids", "top_order": "--order", "no_group": "--no-group"}
