"""The ``deepergat-screen`` command (also ``deepergat screen``): options, progress, summary.

Everything heavy is imported inside the command, so ``--help`` is instant and the screening path
imports exactly what it needs (no torch with an ONNX model). Under MPI only rank 0 prints: one
aggregated progress bar (done, rate, ETA, bad count) on stderr and the closing summary on
stdout; each rank logs to ``<output>.parts/logs/``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deepergat.contract import DEFAULT_CHUNK_SIZE, RankBy, RankOrder

from .options import (
    MODEL_FILES,
    TRUST_HELP,
    check_options,
    device_option,
    list_options,
    rank_by_option,
    rank_k_option,
    rank_order_option,
)

if TYPE_CHECKING:
    from deepergat.screening.run import ScreenOptions

__all__ = ["main", "screen"]

_EPILOG = """
\b
Examples:
  deepergat-screen --input candidates.h5
  deepergat-screen --input candidates.h5 --model model.onnx --top 100 --embeddings
  deepergat-screen --input candidates.h5 --model ensemble.onnx --top 100 --rank-by upper
  mpiexec -n 4 deepergat-screen --input candidates.h5 --output cands.h5
  srun -n 8 --mpi=pmi2 deepergat-screen --input candidates.h5 --device cuda
  deepergat-screen --input candidates.h5 --shard 3/16          # one array task's share
  deepergat-screen --input candidates.h5 --merge-only           # after an array job
  deepergat-screen --input candidates.h5 --from candidates.predictions.h5 --from-top 10000 \\
      --model perovskite-heat --top 100 --rank-by upper        # the ensemble re-scores the best
\b
A rerun skips chunks already committed in <output>.parts/ (--no-resume starts clean); the final
file is written in input order when every chunk is committed. Exit status 2 with one line on
stderr for problems you can fix (including --merge-only with missing chunks).
"""


def _summary(result: Any) -> list[str]:
    from deepergat.errors import STATUS_CODES

    lines: list[str] = []
    if result.outcome == "already-merged":
        lines.append(f"{result.output} is already complete for this input, model and settings "
                     "(already merged); nothing to do")
    else:
        rate = result.structures / result.seconds if result.seconds > 0 else 0.0
        where = f" (shard {result.shard[0]}/{result.shard[1]})" if result.shard else ""
        lines.append(
            f"screened {result.structures} structures in {result.seconds:.1f} s "
            f"({rate:.0f} structures/s) on {result.ranks} rank{'s' if result.ranks > 1 else ''}"
            f"{where}" + (f"; {result.skipped} were already committed" if result.skipped else "")
        )
    counts = result.merge.status if result.merge is not None else result.status
    flagged = result.merge.flagged if result.merge is not None else result.flagged
    scope = "in the output" if result.merge is not None else "in this run"
    if result.outcome != "already-merged":
        parts = [f"{code} {STATUS_CODES[code]}: {int(n)}" for code, n in enumerate(counts) if n]
        lines.append(f"status {scope}: " + ("; ".join(parts) or "none"))
        lines.append(f"flagged {scope}: {flagged} with an element unseen in training")
    if result.outcome == "merged" and result.merge is not None:
        lines.append(f"wrote {result.output} ({result.merge.n_structures} structures, merged in "
                     f"{result.merge.seconds:.1f} s)")
    elif result.outcome == "shard-done":
        lines.append(f"{len(result.missing)} chunks of other shards are still missing; the task "
                     "that completes the set merges (or run with --merge-only)")
    elif result.outcome == "merge-claimed":
        lines.append(f"every chunk is committed; another task merged them into {result.output}")
    if result.top_csv is not None:
        lines.append(f"wrote {result.top_csv}: {result.short_list}" if result.short_list
                     else f"wrote {result.top_csv}")
    return lines


@click.command(
    name="screen",
    epilog=_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("--input", "input_", required=True, type=click.Path(dir_okay=False),
              help="Structure store to screen (deepergat pack).")
@click.option("--model", default=None,
              help=f"Exported file ({MODEL_FILES}), checkpoint (.ckpt) or bundled model name "
                   "[default: the bundled perovskite-heat-single; on CPUs an .onnx model runs "
                   "compiled for this machine once deepergat compile (or --compile) made it, "
                   "else a single model on OpenVINO when installed, else ONNX Runtime; "
                   "DEEPERGAT_ONNX_RUNTIME=onnxruntime|openvino|compiled chooses].")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Predictions file [default: <input stem>.predictions.h5 beside the input].")
@click.option("--chunk-size", default=DEFAULT_CHUNK_SIZE, show_default=True, type=int,
              help="Structures per chunk (unit of work, commit and resume; keep it for reruns).")
@device_option("auto: a GPU when visible (node-local rank mod visible devices), else CPU.")
@click.option("--workers", default=None, type=int,
              help="Worker processes per rank for the neighbor search — and on the CPU, with an "
                   "ONNX model, for the model too (0: all in the rank) [default: the rank's cores "
                   "on the CPU (0 for one core), cores-1 with a GPU].")
@click.option("--shard", default=None, metavar="I/N",
              help="Take static share I of N (zero-based), balanced by atom count [default: from "
                   "the SLURM array task, if any].")
@check_options
@click.option("--embeddings", is_flag=True, help="Also store the [M, dim] crystal embeddings.")
@click.option("--from", "from_predictions", type=click.Path(dir_okay=False), metavar="PRED.h5",
              help="Screen only rows chosen from this earlier screen of the same input (a "
                   "funnel: a fast model feeds a slower one); rows keep their store index "
                   "[default --output: <PRED stem>.rescored.h5].")
@click.option("--from-top", type=int, metavar="N",
              help="With --from: its N best rows (ranked by its first target, --top-order).")
@click.option("--from-where", metavar="EXPR",
              help="With --from: its rows where EXPR holds (as --where).")
@click.option("--top", default=None, type=int, metavar="K",
              help="Write the K best distinct structures to <output stem>.top.csv "
                   "(rank,index,id,formula,<target>...,flags,group_size,known).")
@rank_order_option("--top-order", help_text="asc: lowest first; desc: highest first.")
@rank_by_option("Rank the top K by the prediction, or (an ensemble) by the bound mean - k*std "
                "(lower) or mean + k*std (upper).")
@rank_k_option("k of the --rank-by bound, in calibrated standard deviations.")
@list_options()
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--compile", "compile_", type=click.Choice(["auto", "yes", "no"]), default="auto",
              show_default=True,
              help="On the CPU, first compile the .onnx model's checkpoint for this machine "
                   "(deepergat compile; once per user and CPU kind, ~1 min; the checkpoint must "
                   "be beside the file, as in a bundled model): auto when the run computes "
                   "≥ 200,000 structures and a C++ compiler is present.")
@click.option("--no-resume", is_flag=True, help="Discard committed parts and start clean.")
@click.option("--merge-only", is_flag=True,
              help="Only merge committed parts (names missing chunks and fails when any are).")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v, -vv).")
def screen(
    input_: str,
    model: str | None,
    output: str | None,
    chunk_size: int,
    device: str,
    workers: int | None,
    shard: str | None,
    max_atoms: int,
    overlap_threshold: float,
    embeddings: bool,
    from_predictions: str | None,
    from_top: int | None,
    from_where: str | None,
    top: int | None,
    top_order: RankOrder,
    rank_by: RankBy,
    rank_k: float,
    where: str | None,
    group: bool,
    match_tol: str,
    known: tuple[str, ...],
    novel_only: bool,
    group_seconds: float,
    trust: bool,
    compile_: str,
    no_resume: bool,
    merge_only: bool,
    verbose: int,
) -> None:
    """Predict every structure of a store with a model: MPI-parallel, resumable, in input order.

    Runs as one process, or under mpiexec/srun with ranks sharing chunks dynamically, or as a
    SLURM array task taking a static share.
    """
    from deepergat.errors import DeepergatError, SettingError, user_error

    from .base import fail, flag_names, missing_extra, setup_logging

    setup_logging(verbose)
    from deepergat.screening.run import AllRanksError, ScreenOptions

    opts = ScreenOptions.create(
        Path(input_), output=Path(output) if output else None, embeddings=embeddings,
        from_predictions=from_predictions, from_top=from_top, from_where=from_where,
        model=model, device=device, trust=trust, compile=compile_,  # type: ignore[arg-type]
        max_atoms=max_atoms, overlap_threshold=overlap_threshold,
        top=top, top_order=top_order, rank_by=rank_by, rank_k=rank_k, where=where,
        group=group, match_tol=match_tol, known=known, novel_only=novel_only,
        group_seconds=group_seconds, chunk_size=chunk_size, workers=workers, shard=shard,
        resume=not no_resume, merge_only=merge_only,
    )
    flags = flag_names(screen)
    ranks = None
    try:
        try:
            ranks = _connect(opts)
            result = _run(opts, ranks)
        except (OSError, RuntimeError, ImportError) as e:  # a full disk (h5py: RuntimeError),
            err = missing_extra(e) or user_error(e)        # a read-only folder, no onnxruntime
            if err is None:
                raise
            logging.getLogger("deepergat").debug("the error in full", exc_info=e)
            raise err from None
    except DeepergatError as e:
        shown = user_error(e) or e  # raised from a full disk: say how much space is free
        if isinstance(shown, AllRanksError):
            shown = shown.error
        if ranks is None or ranks.size == 1 or isinstance(e, AllRanksError):
            if ranks is None or ranks.is_root:  # every rank has it: rank 0 says it once
                fail(shown, flags)
            raise SystemExit(2) from None
        # One rank's problem while the others work: say it and stop them all.
        text = shown.render(flags) if isinstance(shown, SettingError) else str(shown)
        click.echo(f"error: rank {ranks.rank}: {' '.join(text.split())}", err=True)
        sys.stderr.flush()
        ranks.abort(2)
        raise SystemExit(2) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # an internal failure on one rank: stop them all
        if ranks is not None and ranks.size > 1:
            logging.getLogger("deepergat").exception("rank %d failed", ranks.rank)
            click.echo(f"error: rank {ranks.rank}: {type(e).__name__}: {e}", err=True)
            sys.stderr.flush()
            ranks.abort(1)
        raise
    if ranks.is_root:
        for line in _summary(result):
            click.echo(line)


# Settings whose flag is not --<name> (`deepergat.cli.base.flag_names`).
screen.setting_flags = {  # type: ignore[attr-defined]
    "input": "--input", "resume": "--no-resume", "no_group": "--no-group",
    "from_predictions": "--from", "compile": "--compile",
    "group": "--group", "store": "--input"}


def _connect(opts: ScreenOptions) -> Any:
    """Start the forkserver (when worker processes may be used), then connect the ranks: no
    process is ever forked from one that has initialized MPI."""
    from deepergat.screening.model import runs_compiled
    from deepergat.screening.mpi import connect
    from deepergat.screening.pipeline import start_forkserver

    if opts.control.workers != 0 and not opts.control.merge_only:
        start_forkserver(compiled=runs_compiled(opts.predictor.model, opts.predictor.device,
                                                compile_first=opts.predictor.compile == "yes"))
    return connect()


def _run(opts: ScreenOptions, ranks: Any) -> Any:
    from deepergat.screening.run import Hooks, screen

    bar: Any = None

    def on_start(total: int, skipped: int, n_ranks: int) -> None:
        nonlocal bar
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        bar = tqdm(
            total=total, unit="structures", unit_scale=True, dynamic_ncols=True,
            desc=f"screening ({n_ranks} rank{'s' if n_ranks > 1 else ''})",
            mininterval=0.5 if tty else 30.0, file=sys.stderr, smoothing=0.1,
        )
        bar.set_postfix_str("bad 0", refresh=False)

    def on_progress(done: int, bad: int, flagged: int) -> None:
        if bar is None:
            return
        if done > bar.n:
            bar.set_postfix_str(f"bad {bad}, flagged {flagged}", refresh=False)
            bar.update(done - bar.n)

    try:
        return screen(opts, ranks, Hooks(on_start=on_start, on_progress=on_progress))
    finally:
        if bar is not None:
            bar.close()


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point of ``deepergat-screen``: the command, then, as the process's
    own entry (no ``argv``), a quick exit (`_exit_now`); a Python caller that passes ``argv``
    gets click's `SystemExit` and keeps its process."""
    try:
        return screen.main(args=argv, prog_name="deepergat-screen")
    except SystemExit as e:
        if argv is None:
            _exit_now(e)
        raise


def _exit_now(end: SystemExit) -> None:
    """End the process without the interpreter's teardown of every module (0.2–0.5 s after a
    screen, most of it torch's when a compiled model ran): what a normal exit does first still
    runs — other threads are joined and the process pools stopped (`threading._shutdown`), then
    the exit handlers (logging, multiprocessing's) — then the standard streams are flushed and
    the process exits with the command's status. Every file the screen wrote is closed before
    the command returns. Not under MPI: mpi4py finalizes MPI in the teardown itself."""
    import atexit
    import contextlib
    import os
    import threading

    if "mpi4py" in sys.modules:
        return
    code = end.code
    status = code if isinstance(code, int) else 0 if code is None else 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
