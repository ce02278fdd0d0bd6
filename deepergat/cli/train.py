"""``deepergat train``: one run, a cross-validation or an ensemble, from options or a YAML file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from deepergat.architectures import ARCH_DEFAULTS, ARCHITECTURES
from deepergat.contract import GRAPH_CONSTRUCTIONS
from deepergat.errors import DeepergatError
from deepergat.training.config import DEFAULT_VAL_FRACTION, DEFAULTS, MEMBER_KINDS, TrainConfig

from .options import (
    device_option,
)

if TYPE_CHECKING:
    from deepergat.training.outputs import EpochRecord
    from deepergat.training.trainer import TrainResult

_TRAIN_OPTIONS = (
    "data", "target", "val_data", "val_fraction", "test_data", "test_fraction", "arch", "deeper",
    "layers",
    "epochs", "batch_size", "lr", "seed", "per_atom", "init_from", "early_stop", "max_time",
    "device", "cache_dir", "out", "resume", "cv", "graph", "distance_scale", "ensemble",
    "members", "member", "oof", "local_neighbors", "compile", "precision",
)


@click.command(
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
@click.option("--arch", type=click.Choice(ARCHITECTURES), default=DEFAULTS.network.arch,
              show_default=True,
              help="Architecture (the paper's models; deepergatgnn is gatgnn --deeper).")
@click.option("--deeper", is_flag=True,
              help="The paper's Deeper variant: DiffGroupNorm and skip connections.")
@click.option("--layers", type=int,
              help="Graph-convolution layers [the architecture's: "
                   + ", ".join(f"{a} {d['layers'][0]}" for a, d in ARCH_DEFAULTS.items())
                   + f"; Deeper variants {ARCH_DEFAULTS['cgcnn']['layers'][1]}].")
@click.option("--epochs", type=int, default=DEFAULTS.trainer.epochs, show_default=True)
@click.option("--batch-size", type=int, default=DEFAULTS.trainer.batch_size, show_default=True,
              help="Crystals a step.")
@click.option("--lr", type=float,
              help="AdamW learning rate [the architecture's: "
                   + ", ".join(f"{a} {d['lr']:g}" for a, d in ARCH_DEFAULTS.items()) + "].")
@click.option("--seed", type=int, default=DEFAULTS.run.seed, show_default=True)
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
@click.option("--members", type=click.Choice(MEMBER_KINDS), default=DEFAULTS.ensembles.members,
              show_default=True,
              help="Ensemble members: the K folds of a cross-validation, or K seeds.")
@click.option("--member", type=int, metavar="I",
              help="With --ensemble K or --cv K: train only member I (0 … K-1), e.g. "
                   "$SLURM_ARRAY_TASK_ID; then the same command without --member and with "
                   "--resume assembles the K.")
@click.option("--oof", type=click.Path(dir_okay=False), metavar="OOF_CSV",
              help="With --ensemble: out-of-fold predictions (oof.csv of a --cv run on the "
                   "same split and recipe) for the std's local error term [folds: their own].")
@click.option("--local-neighbors", type=int, default=DEFAULTS.ensembles.local_neighbors,
              show_default=True, metavar="N",
              help="With --ensemble: the k-th nearest reference structure sets the width "
                   "of the local error term's kernel (0: the members' spread alone).")
@click.option("--graph", type=click.Choice(GRAPH_CONSTRUCTIONS), default=DEFAULTS.dataset.graph,
              show_default=True, help="Graph construction (see the README).")
@click.option("--distance-scale", default=DEFAULTS.network.distance_scale, show_default=True,
              metavar="cutoff|data|Å",
              help="Length mapped onto the last distance Gaussian.")
@click.option("--compile", "compile", is_flag=True,
              help="Compile the training step with torch.compile (needs a C++ compiler on "
                   "CPUs, triton on GPUs; a first compilation of minutes, cached per user).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "tf32"]), default="fp32",
              show_default=True,
              help="The training step's arithmetic: bf16 autocast (CUDA; CPUs with AMX or "
                   "AVX512-BF16), tf32 matrix products (CUDA). Weights, validation and the "
                   "reported errors stay float32.")
@click.pass_context
def train(ctx: click.Context, config_file: str | None, **options: Any) -> None:
    """Train a model (DeeperGATGNN by default) on a structure store."""
    from deepergat.system.launch import launch_info
    from deepergat.training.cv import cross_validate
    from deepergat.training.ensembles import train_ensemble
    from deepergat.training.trainer import train as run_train

    cfg = _config(ctx, config_file, options)
    rank0 = launch_info().rank == 0
    epochs = cfg.trainer.epochs

    # fold ensembles and CVs train folds, seed ensembles members (their folders' names)
    part = "member" if cfg.ensembles.ensemble and cfg.ensembles.members == "seeds" else "fold"

    def show(record: EpochRecord, fold: int | None = None) -> None:
        if rank0:
            _show_epoch(record, epochs, fold, part)

    if cfg.ensembles.ensemble:
        summary = train_ensemble(cfg, progress=lambda i, r: show(r, i))
        if "member" in summary:
            _show_member(summary, rank0)
        else:
            _show_ensemble(summary, cfg.run.out)
    elif cfg.ensembles.cv:
        summary = cross_validate(cfg, progress=lambda i, r: show(r, i))
        if "member" in summary:
            _show_member(summary, rank0)
        else:
            _show_cv(summary, cfg.run.out)
    else:
        result = run_train(cfg, progress=show if rank0 else None)
        if rank0:
            _show_run(result)


def _config(ctx: click.Context, config_file: str | None,
            options: dict[str, Any]) -> TrainConfig:
    """The run's `TrainConfig`: the ``--config`` file's settings under the options given."""
    values = _read_config(config_file) if config_file else {}
    for name in _TRAIN_OPTIONS:  # an option given, or one the file leaves out, wins
        source = ctx.get_parameter_source(name)
        explicit = source is not None and source.name != "DEFAULT"
        if explicit or name not in values:
            values[name] = options[name]
    cfg = TrainConfig.from_dict(values, source=config_file or "options")
    for name, value in (("data", cfg.dataset.data), ("target", cfg.dataset.target),
                        ("out", cfg.run.out)):
        if not value:
            raise DeepergatError(f"--{name} is required (on the command line or in --config)")
    return cfg


def _show_epoch(record: EpochRecord, epochs: int, fold: int | None, part: str = "fold") -> None:
    prefix = f"{part} {fold} " if fold is not None else ""
    click.echo(
        f"{prefix}epoch {record.epoch:>4}/{epochs}  lr {record.lr:.3g}  "
        f"train_mae {record.train_mae:.5g}  val_mae {record.val_mae:.5g}  "
        f"{record.seconds:.1f} s"
    )


def _show_cv(summary: dict[str, Any], out: str) -> None:
    u = f" {summary['units']}" if summary["units"] else ""
    for i, (v, n) in enumerate(zip(summary["fold_mae"], summary["fold_n"], strict=True)):
        click.echo(f"fold {i}: held-out MAE {v:.5g}{u} over {n} structures")
    click.echo(f"{summary['folds']}-fold CV MAE {summary['mae_mean']:.5g} ± "
               f"{summary['mae_std']:.5g}{u} (out-of-fold over {summary['n']}: "
               f"{summary['oof_mae']:.5g}); {out}/oof.csv, {out}/cv_metrics.json")


def _show_member(summary: dict[str, Any], rank0: bool) -> None:
    if rank0:
        click.echo(f"member {summary['member']} of {summary['of']}: {summary['epochs']} "
                   f"epochs in {summary['out']}; when all {summary['of']} are trained, the "
                   "same command without --member and with --resume assembles them")


def _show_ensemble(summary: dict[str, Any], out: str) -> None:
    if "cv" in summary:
        _show_cv(summary["cv"], out)
    for part in ("validation", "test"):
        if part in summary:
            m = summary[part]
            click.echo(
                f"ensemble on the {part} split ({m['n']}): MAE {m['mae']:.5g}, "
                f"|error| ≤ 2σ for {m['coverage_2sigma']:.3f}, ≤ σ for "
                f"{m['coverage_1sigma']:.3f}, Spearman(σ, |error|) "
                + ("-" if m["spearman_std_abs_error"] is None
                   else f"{m['spearman_std_abs_error']:.3f}")
            )
    click.echo(f"{summary['members']}-member ensemble: {summary['checkpoint']}")


def _show_run(result: TrainResult) -> None:
    u = f" {result.units}" if result.units else ""
    if result.stopped in ("signal", "max_time"):
        why = "on a signal" if result.stopped == "signal" else "at --max-time"
        again = " (SLURM job requeued)" if result.requeued else ""
        click.echo(f"stopped {why} after {result.epochs_done} epochs; {result.out}/last.ckpt "
                   f"written; continue with --resume{again}")
        return
    if result.stopped == "early_stop":
        click.echo(f"early stop after {result.epochs_done} epochs")
    kept = (f"{result.checkpoint}" if result.checkpoint is not None
            else f"no best.ckpt in {result.out}")
    click.echo(f"best val MAE {result.best_val_mae:.5g}{u} at epoch {result.best_epoch} "
               f"({kept})")
    if result.test_mae is not None:
        click.echo(f"test MAE {result.test_mae:.5g}{u} over {result.test_count} structures")


def _read_config(path: str) -> dict[str, Any]:
    """The settings of a ``--config`` YAML file by name (flat or sectioned)."""
    import yaml

    from deepergat.training.config import flat_settings

    try:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:  # safe_load builds no objects: tags are refused here
        raise DeepergatError(f"{path}: not a plain YAML mapping of settings: "
                             f"{' '.join(str(e).split())[:200]}") from None
    if not isinstance(loaded, dict):
        raise DeepergatError(f"{path}: expected a mapping of settings")
    return flat_settings(loaded, source=path)
