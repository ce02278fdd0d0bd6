"""The ``deepergat`` command line: one click group, one subcommand per job.

Adding a subcommand: decorate a function with ``@main.command()`` and import what it needs
*inside* the function (this module must not import torch, pymatgen or ASE at import time, so
that ``deepergat --help`` and light subcommands start fast). A `DeepergatError` raised by any
subcommand is printed as one line ``error: <message>`` on stderr with exit code 2 (the group
does it; `report_errors` does the same for stand-alone click commands). Progress bars and tables
belong here, not in the library: library functions take a progress callback.
"""

from __future__ import annotations

import functools
import itertools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from . import __version__
from .architectures import ARCH_DEFAULTS, ARCHITECTURES
from .cli_options import (
    TRUST_HELP,
    check_options,
    describe_model_argument,
    device_option,
    rank_by_option,
    rank_k_option,
    rank_order_option,
)
from .config import DEFAULT_VAL_FRACTION, DEFAULTS, MEMBER_KINDS
from .contract import GRAPH_CONSTRUCTIONS, MODEL_FORMATS, RankBy, RankOrder, Status
from .errors import DeepergatError, user_error
from .screening.cli import screen as screen_command

__all__ = ["DeepergatGroup", "fail", "main", "report_error", "report_errors", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("deepergat.cli")

#: Exit code for errors the user can fix (click uses 2 for usage errors too).
EXIT_USER_ERROR = 2


def fail(err: DeepergatError | str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with code 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USER_ERROR)


def report_errors(fn: F) -> F:
    """Decorator for click commands outside the `main` group: `DeepergatError` -> `fail`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DeepergatError, OSError, RuntimeError) as e:
            report_error(e)

    return wrapper  # type: ignore[return-value]


def report_error(e: DeepergatError | OSError | RuntimeError) -> NoReturn:
    """`fail` with the one line for ``e`` (`deepergat.errors.user_error`: a `DeepergatError`,
    or a full disk, a quota, a read-only folder, missing permissions — also h5py's
    RuntimeError for a write that failed on a full disk); re-raise anything else."""
    err = user_error(e)
    if err is None:
        raise e
    log.debug("the error in full", exc_info=e)
    fail(err)


class DeepergatGroup(click.Group):
    """A click group whose subcommands report `DeepergatError` as one line and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DeepergatError, OSError, RuntimeError) as e:  # the user's to fix, or raised
            report_error(e)


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


_EXAMPLES = """
\b
Examples:
  deepergat pack structures/ -o train.h5
  deepergat pack perov5.csv --target heat_ref:eV -o perov5.h5
  deepergat pack pt_clusters/ --target-name total_energy:eV -o pt.h5
  deepergat pack 'runs/*/CONTCAR' --id-from path --skip-bad -o relaxed.h5
  deepergat info train.h5 --json
"""


@click.group(
    cls=DeepergatGroup,
    epilog=_EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="deepergat")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """DeeperGATGNN: pack crystal structures, train, export and screen them on clusters."""
    setup_logging(verbose)


# --------------------------------------------------------------------------------------------
# pack
# --------------------------------------------------------------------------------------------


@main.command(
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

    from .pack import describe_skipped
    from .pack import pack as run_pack

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


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(file: str, *, as_json: bool) -> None:
    """Describe a deepergat file (a structure store or predictions file), recognised by its content.

    \b
    Examples:
      deepergat info train.h5
      deepergat info train.h5 --json | jq .targets
      deepergat info candidates.predictions.h5
    """
    import json

    from .info import describe, format_text

    description = describe(file)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo(format_text(description, file))


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------

_TRAIN_OPTIONS = (
    "data", "target", "val_data", "val_fraction", "test_data", "test_fraction", "arch", "deeper",
    "layers",
    "epochs", "batch_size", "lr", "seed", "per_atom", "init_from", "early_stop", "max_time",
    "device", "cache_dir", "out", "resume", "cv", "graph", "distance_scale", "ensemble",
    "members", "member", "oof", "local_neighbors",
)


@main.command(
    epilog="""
\b
Writes to RUN_DIR: config.yaml, splits.json, metrics.csv, learning_curve.png, best.ckpt,
last.ckpt (every epoch, atomically) and test_metrics.json. SIGUSR1 or SIGTERM (and --max-time)
write last.ckpt, requeue a requeue-able SLURM job and exit 0; --resume continues exactly.
Distributed: torchrun --nproc-per-node K -m deepergat.cli train ... or srun deepergat train ...
\b
Examples:
  deepergat train --data perov.h5 --target heat_ref --test-fraction 0.1 --out runs/heat
  deepergat train --config run.yaml --epochs 300 --out runs/heat --resume
  deepergat train --data perov.h5 --target heat_ref --cv 5 --epochs 100 --out runs/cv
  deepergat train --data perov.h5 --target heat_ref --ensemble 5 --member 2 --out runs/ens
"""
)
@click.option("--data", type=click.Path(dir_okay=False), help="Training store (.h5).")
@click.option("--target", help="Target name in the store.")
@click.option("--val-data", type=click.Path(dir_okay=False), help="Validation store.")
@click.option("--val-fraction", type=float,
              help=f"Fraction of --data for validation [{DEFAULT_VAL_FRACTION:g}].")
@click.option("--test-data", type=click.Path(dir_okay=False), help="Test store.")
@click.option("--test-fraction", type=float, help="Fraction of --data held out for testing.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML run configuration; command-line options override it.")
@click.option("--arch", type=click.Choice(ARCHITECTURES), default=DEFAULTS.arch,
              show_default=True,
              help="Architecture (the paper's models; deepergatgnn is gatgnn --deeper).")
@click.option("--deeper", is_flag=True,
              help="The paper's Deeper variant: DiffGroupNorm and skip connections.")
@click.option("--layers", type=int,
              help="Graph-convolution layers [the architecture's: "
                   + ", ".join(f"{a} {d['layers'][0]}" for a, d in ARCH_DEFAULTS.items())
                   + f"; Deeper variants {ARCH_DEFAULTS['cgcnn']['layers'][1]}].")
@click.option("--epochs", type=int, default=DEFAULTS.epochs, show_default=True)
@click.option("--batch-size", type=int, default=DEFAULTS.batch_size, show_default=True,
              help="Crystals a step.")
@click.option("--lr", type=float,
              help="AdamW learning rate [the architecture's: "
                   + ", ".join(f"{a} {d['lr']:g}" for a, d in ARCH_DEFAULTS.items()) + "].")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--per-atom", is_flag=True, help="Extensive target: learn it per atom.")
@click.option("--init-from", type=click.Path(dir_okay=False), help="Start from these weights.")
@click.option("--early-stop", type=int, metavar="N", help="Stop after N epochs without gain.")
@click.option("--max-time", metavar="HH:MM", help="Stop (and requeue) after this wall time.")
@device_option()
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Graph cache folder.")
@click.option("--out", type=click.Path(file_okay=False), metavar="RUN_DIR", help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR/last.ckpt if it exists.")
@click.option("--cv", type=int, metavar="K",
              help="K-fold cross-validation: oof.csv and cv_metrics.json.")
@click.option("--ensemble", type=int, metavar="K",
              help="Train K members into RUN_DIR/ensemble.ckpt (mean and calibrated std).")
@click.option("--members", type=click.Choice(MEMBER_KINDS), default=DEFAULTS.members,
              show_default=True,
              help="Ensemble members: the K folds of a cross-validation, or K seeds.")
@click.option("--member", type=int, metavar="I",
              help="With --ensemble K or --cv K: train only member I (0 … K-1), e.g. "
                   "$SLURM_ARRAY_TASK_ID; then the same command without --member and with "
                   "--resume assembles the K.")
@click.option("--oof", type=click.Path(dir_okay=False), metavar="OOF_CSV",
              help="With --ensemble: out-of-fold predictions (oof.csv of a --cv run on the "
                   "same split and recipe) for the std's local error term [folds: their own].")
@click.option("--local-neighbors", type=int, default=DEFAULTS.local_neighbors,
              show_default=True, metavar="N",
              help="With --ensemble: the k-th nearest reference structure sets the width "
                   "of the local error term's kernel (0: the members' spread alone).")
@click.option("--graph", type=click.Choice(GRAPH_CONSTRUCTIONS), default=DEFAULTS.graph,
              show_default=True, help="Graph construction (see the README).")
@click.option("--distance-scale", default=DEFAULTS.distance_scale, show_default=True,
              metavar="cutoff|data|Å",
              help="Length mapped onto the last distance Gaussian.")
@click.pass_context
def train(ctx: click.Context, config_file: str | None, **options: Any) -> None:
    """Train a model (DeeperGATGNN by default) on a structure store."""
    import yaml

    from .config import TrainConfig, parse_max_time
    from .train import cross_validate, train_ensemble
    from .train import train as run_train

    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file) as f:
                loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:  # safe_load builds no objects: tags are refused here
            raise DeepergatError(f"{config_file}: not a plain YAML mapping of settings: "
                                 f"{' '.join(str(e).split())[:200]}") from None
        if not isinstance(loaded, dict):
            raise DeepergatError(f"{config_file}: expected a mapping of settings")
        values.update(loaded)
    for name in _TRAIN_OPTIONS:
        source = ctx.get_parameter_source(name)
        explicit = source is not None and source.name != "DEFAULT"
        if explicit or name not in {k.replace("-", "_") for k in values}:
            values[name] = options[name]
    values = {k.replace("-", "_"): v for k, v in values.items()}
    if isinstance(values.get("max_time"), str):
        values["max_time"] = parse_max_time(values["max_time"])
    cfg = TrainConfig.from_dict(values, source=config_file or "options")
    for name in ("data", "target", "out"):
        if not getattr(cfg, name):
            raise DeepergatError(f"--{name} is required (on the command line or in --config)")
    from .launch import launch_info

    rank0 = launch_info().rank == 0

    def show(record: Any, fold: int | None = None) -> None:
        prefix = f"fold {fold} " if fold is not None else ""
        click.echo(
            f"{prefix}epoch {record.epoch:>4}/{cfg.epochs}  lr {record.lr:.3g}  "
            f"train_mae {record.train_mae:.5g}  val_mae {record.val_mae:.5g}  "
            f"{record.seconds:.1f} s"
        )

    def show_cv(summary: dict[str, Any]) -> None:
        u = f" {summary['units']}" if summary["units"] else ""
        for i, (v, n) in enumerate(zip(summary["fold_mae"], summary["fold_n"], strict=True)):
            click.echo(f"fold {i}: held-out MAE {v:.5g}{u} over {n} structures")
        click.echo(f"{summary['folds']}-fold CV MAE {summary['mae_mean']:.5g} ± "
                   f"{summary['mae_std']:.5g}{u} (out-of-fold over {summary['n']}: "
                   f"{summary['oof_mae']:.5g}); {cfg.out}/oof.csv, {cfg.out}/cv_metrics.json")

    def show_member(summary: dict[str, Any]) -> None:
        if rank0:
            click.echo(f"member {summary['member']} of {summary['of']}: {summary['epochs']} "
                       f"epochs in {summary['out']}; when all {summary['of']} are trained, the "
                       "same command without --member and with --resume assembles them")

    if cfg.ensemble:
        summary = train_ensemble(cfg, progress=lambda i, r: show(r, i) if rank0 else None)
        if "member" in summary:
            show_member(summary)
            return
        if "cv" in summary:
            show_cv(summary["cv"])
        for part in ("validation", "test"):
            if part in summary:
                m = summary[part]
                click.echo(
                    f"ensemble on the {part} split ({m['n']}): MAE {m['mae']:.5g}, "
                    f"|error| ≤ 2σ for {m['coverage_2sigma']:.3f}, ≤ σ for "
                    f"{m['coverage_1sigma']:.3f}, Spearman(σ, |error|) "
                    f"{m['spearman_std_abs_error']}"
                )
        click.echo(f"{summary['members']}-member ensemble: {summary['checkpoint']}")
        return
    if cfg.cv:
        summary = cross_validate(cfg, progress=lambda i, r: show(r, i) if rank0 else None)
        (show_member if "member" in summary else show_cv)(summary)
        return
    result = run_train(cfg, progress=show if rank0 else None)
    if not rank0:
        return
    u = f" {result.units}" if result.units else ""
    if result.stopped in ("signal", "max_time"):
        why = "on a signal" if result.stopped == "signal" else "at --max-time"
        again = " (SLURM job requeued)" if result.requeued else ""
        click.echo(f"stopped {why} after {result.epochs_done} epochs; {result.out}/last.ckpt "
                   f"written; continue with --resume{again}")
        return
    if result.stopped == "early_stop":
        click.echo(f"early stop after {result.epochs_done} epochs")
    click.echo(f"best val MAE {result.best_val_mae:.5g}{u} at epoch {result.best_epoch} "
               f"({result.out}/best.ckpt)")
    if result.test_mae is not None:
        click.echo(f"test MAE {result.test_mae:.5g}{u} over {result.test_count} structures")


# --------------------------------------------------------------------------------------------
# screen (the deepergat-screen command, deepergat.screening; it imports its work inside)
# --------------------------------------------------------------------------------------------

main.add_command(screen_command, name="screen")


# --------------------------------------------------------------------------------------------
# evaluate, predict, models
# --------------------------------------------------------------------------------------------

_DEVICE_HELP = "auto: a GPU when one is visible, else the CPU."


@main.command()
@click.argument("model")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Labelled store.")
@click.option("--target", required=True, help="Target to evaluate.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Parity plot PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Metrics JSON.")
@click.option("--batch-size", type=int, default=100, show_default=True)
@device_option(_DEVICE_HELP)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@describe_model_argument
def evaluate(model: str, *, data: str, target: str, plot: str | None, json_path: str | None,
             batch_size: int, device: str, trust: bool) -> None:
    """MAE, RMSE and R² of MODEL on a labelled store. MODEL: {model}.

    \b
    Examples:
      deepergat evaluate runs/heat/best.ckpt --data test.h5 --target heat_ref --plot parity.png
      deepergat evaluate exported/model.onnx --data test.h5 --target heat_ref
      deepergat evaluate perovskite-heat --data test.h5 --target heat_ref --json metrics.json
    """
    import json

    from .predict import evaluate as run_evaluate
    from .predict import parity_plot

    result = run_evaluate(model, data, target, batch_size=batch_size, device=device, trust=trust)
    u = f" {result.units}" if result.units else ""
    click.echo(f"{result.target}: MAE {result.mae:.5g}{u}  RMSE {result.rmse:.5g}{u}  "
               f"R² {result.r2:.4f}  n {result.n}")
    if result.uncertainty:
        m = result.uncertainty
        rho = m["spearman_std_abs_error"]
        click.echo(f"  spread: |error| ≤ σ for {m['coverage_1sigma']:.3f}, ≤ 2σ for "
                   f"{m['coverage_2sigma']:.3f}; Spearman(σ, |error|) "
                   f"{'-' if rho is None else f'{rho:.3f}'}; mean σ {m['mean_std']:.4g}{u}")
    if result.skipped:
        click.echo(f"left out {result.skipped} structures (failed checks or no label)", err=True)
    if plot:
        parity_plot(result, plot)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result.as_json(), f, indent=2)


@main.command()
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write rows here instead of standard output.")
@click.option("--batch-size", type=int, default=100, show_default=True)
@check_options
@device_option(_DEVICE_HELP)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--id-from", type=click.Choice(["stem", "path"]), default="stem",
              show_default=True,
              help="Ids of structure files: the file stem, or the path (for trees of POSCARs).")
@describe_model_argument
def predict(model: str, inputs: tuple[str, ...], *, csv_path: str | None, batch_size: int,
            max_atoms: int, overlap_threshold: float, device: str, trust: bool,
            id_from: str) -> None:
    """Predict structure files or stores with MODEL: {model}.

    Rows are id,<target>...,status (status codes as in deepergat-screen; a structure with
    status other than 0 has an empty value); an ensemble adds <target>_std after each target:
    id,<target>,<target>_std,status. --csv writes the rows to a temporary file beside OUT that
    replaces OUT only when every row is written: after an error OUT is as it was. Without
    --csv rows stream to standard output as they are computed, so an error (exit status 2)
    may follow rows already printed.

    \b
    Examples:
      deepergat predict perovskite-heat some.cif
      deepergat predict exported/model.onnx candidates.h5 --csv predictions.csv
      deepergat predict runs/heat/best.ckpt candidates.h5 cifs/ --csv predictions.csv
      deepergat predict perovskite-heat 'runs/*/CONTCAR' --id-from path
    """
    import csv
    import math

    from .errors import environment_error, is_full_disk
    from .predict import predict_inputs

    def skipped(count: int, what: str) -> None:
        click.echo(f"skipped {count} input{'s' if count != 1 else ''} that could not be read: "
                   f"{what}", err=True)

    ck, rows = predict_inputs(model, inputs, batch_size=batch_size, max_atoms=max_atoms,
                              overlap_threshold=overlap_threshold, device=device,
                              on_skipped=skipped, trust=trust, id_from=id_from)
    out = _AtomicCsv(csv_path) if csv_path else None  # fails now on an unwritable folder
    try:
        # the model, the inputs and the first block are read before anything is written
        first = next(rows, None)
        handle = out.handle if out is not None else sys.stdout
        writer = csv.writer(handle, lineterminator="\n")
        header = [c for t in ck.targets for c in ((t, f"{t}_std") if ck.has_std else (t,))]
        writer.writerow(["id", *header, "status"])
        counts: dict[int, int] = {}

        def text(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        for row in itertools.chain([first] if first is not None else [], rows):
            if row.std is None:
                values = [text(v) for v in row.values.tolist()]
            else:
                values = [text(x) for v, s in zip(row.values.tolist(), row.std.tolist(),
                                                   strict=True) for x in (v, s)]
            writer.writerow([row.id, *values, row.status])
            counts[row.status] = counts.get(row.status, 0) + 1
        if out is not None:
            out.commit()
    except OSError as e:
        if out is not None and is_full_disk(e):  # writing the rows: name the user's file
            raise environment_error(e, path=out.path) or e from None
        raise
    finally:
        if out is not None:
            out.discard()  # after an error: the temporary file goes, OUT is untouched
    bad = {k: v for k, v in counts.items() if k != Status.OK}
    if bad:
        from .errors import STATUS_CODES

        summary = ", ".join(f"{v} × status {k} ({STATUS_CODES.get(k, '?')})"
                            for k, v in sorted(bad.items()))
        click.echo(f"not predicted: {summary}", err=True)


class _AtomicCsv:
    """A CSV file written as ``.<name>.tmp-<host>-<pid>`` beside it and renamed into place by
    `commit`: readers never see half a file, and an error or a kill never truncates an
    existing one. Temporary files of killed runs on this host are removed when one starts.

    Raises:
        DeepergatError: the folder cannot be written (named with the user's path).
    """

    def __init__(self, path: str) -> None:
        import os
        import socket

        from .errors import environment_error

        self.path = Path(path)
        host = socket.gethostname().replace("-", "_") or "host"
        self._prefix = f".{self.path.name}.tmp-{host}-"
        self.tmp = self.path.with_name(f"{self._prefix}{os.getpid()}")
        self._clear_stale()
        try:
            self.handle = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            err = environment_error(e, path=self.path)
            if err is not None:
                raise err from None
            raise DeepergatError(f"--csv {self.path}: cannot write it ({e.strerror or e}); "
                                 "choose a file in a folder that exists") from None

    def _clear_stale(self) -> None:
        import contextlib
        import os

        folder = self.path.parent
        with contextlib.suppress(OSError):
            for entry in os.listdir(folder):
                pid = entry[len(self._prefix):]
                if not (entry.startswith(self._prefix) and pid.isdigit()):
                    continue
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:  # its writer was killed
                    (folder / entry).unlink(missing_ok=True)
                except OSError:  # alive (another user's)
                    pass

    def commit(self) -> None:
        """Close the temporary file and rename it to the final name."""
        import os

        from .errors import environment_error

        try:
            self.handle.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            err = environment_error(e, path=self.path)
            if err is not None:
                raise err from None
            raise

    def discard(self) -> None:
        """Close and remove the temporary file (nothing after `commit`)."""
        import contextlib

        with contextlib.suppress(OSError):
            self.handle.close()
        self.tmp.unlink(missing_ok=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def models(as_json: bool) -> None:
    """List the bundled models with their cards (a bundled name predicts with its model.onnx;
    `deepergat export` starts from its checkpoint, ensemble.ckpt or best.ckpt)."""
    import json

    from .export.resolve import bundled_checkpoint, bundled_dir, bundled_models

    found = {name: bundled_dir() / name for name in bundled_models()}
    ckpts = {name: bundled_checkpoint(d) for name, d in found.items()}
    if as_json:
        click.echo(json.dumps({name: {"path": str(ckpts[name]) if ckpts[name] else None,
                                      "onnx": str(d / "model.onnx"),
                                      "card": (d / "card.md").read_text()
                                      if (d / "card.md").is_file() else ""}
                               for name, d in found.items()}, indent=2))
        return
    if not found:
        click.echo("no bundled models")
        return
    for name, folder in found.items():
        click.echo(f"== {name} ({folder / 'model.onnx'}; checkpoint {ckpts[name]})")
        card = folder / "card.md"
        click.echo(card.read_text().rstrip() if card.is_file() else "(no card)")
        click.echo("")


# --------------------------------------------------------------------------------------------
# report, extract (from a predictions file to a short list)
# --------------------------------------------------------------------------------------------


@main.command()
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
    from .screening.report import write_report

    if top < 1:
        raise DeepergatError(f"--top must be at least 1, got {top}")
    click.echo(f"wrote {write_report(predictions, output, top=top, order=order)}")


@main.command()
@click.argument("predictions", type=click.Path(dir_okay=False))
@click.option("--top", type=int, metavar="K", help="The K best by the first target.")
@click.option("--ids", "ids_file", type=click.Path(dir_okay=False, exists=True),
              help="A file of ids, one per line.")
@click.option("--where", metavar="EXPR",
              help='Comparisons joined by and/or, e.g. "heat_ref < 0.2 and heat_ref_std < 0.05".')
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the structure files and selection.csv.")
@click.option("--format", "fmt", type=click.Choice(["cif", "poscar", "extxyz"]), default="cif",
              show_default=True)
@rank_order_option("--order", help_text="With --top: asc lowest first, desc highest first.")
@rank_by_option("With --top: rank by the prediction or a bound (ensembles).")
@rank_k_option("k of the --rank-by bound mean ∓ k·std.")
@click.option("--store", type=click.Path(dir_okay=False),
              help="The input store, if it moved [default: the one the file records].")
def extract(predictions: str, top: int | None, ids_file: str | None, where: str | None,
            out_dir: str, fmt: str, order: RankOrder, rank_by: RankBy, rank_k: float,
            store: str | None) -> None:
    """Write chosen structures of a screen as files ready for DFT, with DIR/selection.csv
    (id, formula, predictions, std, status, flags, file). Choose with exactly one of --top,
    --ids or --where; the structures come from the store that was screened (refused if it
    changed since).

    \b
    Examples:
      deepergat extract cands.predictions.h5 --top 200 -o shortlist/ --format poscar
      deepergat extract cands.predictions.h5 --where "heat_ref < 0.1 and status == 0" -o low/
      deepergat extract cands.predictions.h5 --ids picked.txt -o picked/
    """
    from .screening.select import extract as run_extract

    ids = None
    if ids_file:
        with open(ids_file) as fh:
            ids = [line.strip() for line in fh if line.strip()]
    result = run_extract(predictions, out_dir, top=top, ids=ids, where=where,
                         fmt=fmt, order=order, rank_by=rank_by,  # type: ignore[arg-type]
                         rank_k=rank_k, store=store)
    click.echo(f"wrote {len(result.files)} {fmt} files and {result.selection}")


# --------------------------------------------------------------------------------------------
# export (deepergat.export)
# --------------------------------------------------------------------------------------------


@main.command(
    epilog="""
\b
Writes OUT_DIR/model.onnx (ONNX Runtime, CPU or CUDA), OUT_DIR/model.pt (TorchScript, traced;
what C++ hosts load) and OUT_DIR/model.pt2 (torch.export); --format aoti adds
OUT_DIR/model.aoti.pt2, the torch.export program compiled by AOTInductor: the fastest on a CPU,
but compiled for this machine's CPU (export on the node type that runs it) and it needs a C++
compiler. Each carries the model's metadata (graph settings, targets, elements, source
checkpoint sha256) and the figures of its own parity check: the checkpoint in eager PyTorch
against the written file on the --check-data structures (else 1024 generated ones), a batch of
2048 and size-1 edge cases, by docs/design.md's rule |y1 - y2| <= 1e-5 std + 4 ulp32(|y1|). A failed
check leaves no file of this run behind and exits with code 2.
\b
Examples:
  deepergat export runs/heat/best.ckpt --format all -o exported/
  deepergat export perovskite-heat --format onnx -o exported/ --check-data test.h5
  deepergat info exported/model.onnx
"""
)
@click.argument("model")
@click.option(
    "--format",
    "formats",
    type=click.Choice([*MODEL_FORMATS, "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="File format to write; repeatable. all = "
         + ", ".join(name for name, f in MODEL_FORMATS.items() if f.in_all) + ".",
)
@click.option(
    "-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
    help="Folder for " + " / ".join(f.file for f in MODEL_FORMATS.values()) + " (created).",
)
@click.option(
    "--check-data", type=click.Path(dir_okay=False),
    help="Structure store (.h5) to check parity on [default: 1024 generated structures].",
)
@click.option("--opset", type=click.IntRange(min=18), default=None,
              help="ONNX opset [default: 18].")
def export(model: str, *, formats: tuple[str, ...], out_dir: str, check_data: str | None,
           opset: int | None) -> None:
    """Export MODEL (a .ckpt path or a bundled name) to parity-checked ONNX, TorchScript,
    torch.export (and AOTInductor) files."""
    from .export import export_model

    result = export_model(
        model, out_dir, formats=formats, check_data=check_data, opset=opset,
        progress=lambda message: click.echo(message, err=True),
    )
    click.echo(f"exported {result.source} (checked on {result.check_source} + edge cases)")
    for f in result.files:
        p = f.parity
        diffs = ", ".join(f"{d:.3g}" for d in p.max_abs_diff)
        allowed = ", ".join(f"{a:.3g}" for a in p.max_allowed)
        click.echo(f"  {f.path!s:<40} {f.size / 1e6:6.2f} MB  parity max |Δ| {diffs} "
                   f"(allowed {allowed}) on {p.n_structures} structures  {f.seconds:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
