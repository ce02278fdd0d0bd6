"""``deepergat subset``: some structures of a store as a store of their own (a run's split)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deepergat.errors import DeepergatError


@click.command()
@click.argument("store", type=click.Path(dir_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The new store (.h5).")
@click.option("--split", metavar="RUN_DIR[:PART]",
              help="The ids of a training run's split: RUN_DIR/splits.json's PART (train, val "
                   "or test) [default part: test].")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False, exists=True),
              help="A file of ids, one per line.")
def subset(store: str, output: str, split: str | None, ids_file: str | None) -> None:
    """Write the structures of STORE with the chosen ids (targets and units kept) to a new
    store: the held-out split of a training run, to evaluate a model on.

    \b
    Examples:
      deepergat subset perov.h5 --split runs/heat:test -o test.h5
      deepergat evaluate runs/heat/best.ckpt --data test.h5 --target heat_ref
      deepergat subset candidates.h5 --ids picked.txt -o picked.h5
    """
    from deepergat.io.store import write_subset

    if (split is None) == (ids_file is None):
        raise DeepergatError("choose the structures with exactly one of --split and --ids")
    if split is not None:
        folder, _, part = split.partition(":")
        part = part or "test"
        path = Path(folder) / "splits.json" if Path(folder).is_dir() else Path(folder)
        try:
            splits = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DeepergatError(f"--split {split}: cannot read {path} "
                                 f"({' '.join(str(e).split())}); give a training run folder") \
                from None
        if part not in splits or not isinstance(splits[part], list):
            parts = ", ".join(k for k, v in splits.items() if isinstance(v, list))
            raise DeepergatError(f"--split {split}: the run has no {part!r} split "
                                 f"(it has: {parts or 'none'})")
        wanted = [str(x) for x in splits[part]]
    else:
        with open(str(ids_file)) as fh:
            wanted = [line.strip() for line in fh if line.strip()]
    n, digest = write_subset(store, output, wanted)
    click.echo(f"wrote {n} structures to {output} (content digest {digest})")
