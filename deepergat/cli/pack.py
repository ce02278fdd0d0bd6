"""``deepergat pack``: structure files of any supported format → one structure store."""

from __future__ import annotations

import sys

import click


@click.command(
    epilog="""
\b
Inputs: CIF, POSCAR/CONTCAR/*.vasp, extxyz (*.extxyz, *.xyz), ASE databases (*.db, ASE JSON),
pymatgen Structure JSON, CSV files with a CIF column, and MatDeepLearn folders (targets.csv with
rows id,value and one <id>.<ext> structure file per row). A folder without targets.csv is read as
its structure files, sorted; quoted globs are expanded.
\b
Ids: the file stem (or path with --id-from path); a file with several structures (extxyz frames,
database rows, CIF data blocks) gives <id>_<k>, k counting from 0; CSV rows use the id column
(default material_id or id, else <csv stem>_<row>).
\b
Examples:
  deepergat pack cifs/ -o cifs.h5
  deepergat pack perov5.csv --cif-column cif --id-column material_id --target heat_ref:eV -o p.h5
  deepergat pack pt_clusters/ --target-name total_energy:eV -o pt.h5
  deepergat pack a/POSCAR b/POSCAR --id-from path -o relaxed.h5
"""
)
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Store to write (.h5)."
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME[:UNIT]",
    help="CSV column (or ASE key) to store as a target; repeatable.",
)
@click.option(
    "--target-name",
    "target_names",
    multiple=True,
    metavar="NAME[:UNIT]",
    help="Name of a MatDeepLearn targets.csv value column, in order; repeatable [default: target].",
)
@click.option("--cif-column", default="cif", show_default=True, help="CSV column with CIF text.")
@click.option("--id-column", default=None, help="CSV column with ids [default: material_id or id].")
@click.option(
    "--id-from",
    type=click.Choice(["stem", "path"]),
    default="stem",
    show_default=True,
    help="Take file ids from the file name without suffix, or from the path as given.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Parser processes [default: min(CPUs, 8)].",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Skip unreadable files, rows and frames; list them in <OUT stem>.skipped.csv.",
)
def pack(
    inputs: tuple[str, ...],
    *,
    output: str,
    targets: tuple[str, ...],
    target_names: tuple[str, ...],
    cif_column: str,
    id_column: str | None,
    id_from: str,
    workers: int | None,
    skip_bad: bool,
) -> None:
    """Read structure files into a structure store (HDF5)."""
    from tqdm import tqdm

    from deepergat.io.pack import describe_skipped
    from deepergat.io.pack import pack as run_pack

    with tqdm(unit=" structures", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        result = run_pack(
            inputs,
            output,
            targets=targets,
            target_names=target_names,
            cif_column=cif_column,
            id_column=id_column,
            id_from=id_from,  # type: ignore[arg-type]
            workers=workers,
            skip_bad=skip_bad,
            progress=bar.update,
        )
    if result.skipped_csv is not None:
        if result.n_skipped:
            click.echo(
                f"skipped {result.n_skipped}: {describe_skipped(result.skipped)} "
                f"(listed in {result.skipped_csv})",
                err=True,
            )
        else:
            click.echo(f"skipped none ({result.skipped_csv} is empty)", err=True)
    click.echo(
        f"packed {result.n_structures} structures ({result.n_atoms} atoms) from "
        f"{result.n_inputs} input{'s' if result.n_inputs != 1 else ''} into {result.path}"
    )
    for name, (units, count) in result.targets.items():
        u = f" [{units}]" if units else ""
        click.echo(f"  target {name}{u}: {count} values")
    click.echo(f"  content digest {result.content_digest}")
