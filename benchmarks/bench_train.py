"""Training speed on perov5_dev: seconds per epoch with 1 process and with 2 gloo processes (one
thread each), the share of time spent outside the model (batch building), and the two AGAT
projection forms (direct [x ‖ e] W vs rewritten x W_x + e W_e).

``python benchmarks/bench_train.py --data perov.h5 [--layers 10] [--epochs 2] [--target heat_ref]``

The store is made with ``deepergat pack ../shared/data/perov5_dev.csv --target heat_ref:eV -o
perov.h5``. Prints a table; timings are wall seconds on this machine.

Side by side with the paper's reference code (usccolumbia/deeperGATGNN, see
``benchmarks/reference_harness.py``; ``git clone https://github.com/usccolumbia/deeperGATGNN
/work/ref/deeperGATGNN``) instead:

``python benchmarks/bench_train.py --reference /work/ref/deeperGATGNN [-n 3787] [--layers 10]
--epochs 5 [--compile]``

Both sides read the same folder of CIFs written from the first ``-n`` rows of ``perov5_dev.csv``
(``$DEEPERGAT_DATA`` or ``../shared/data``; deepergat packs it; ``--data`` is not used), split
90/10 train/validation (3,408 / 379 of the 3,787 for deepergat; 3,408 / 377 and 1 test structure
for the reference, which needs a test split), batch 100, one thread each
(``OMP_NUM_THREADS=1``), one run at a time: the reference's DEEP_GATGNN_demo with ``--layers``
AGAT layers (its ``--gc_count``), and ``deepergat train --layers`` with ``--graph periodic`` and
``--graph minimum-image``. Prints s/epoch, the median over the epochs after the first, two ways:
the training pass alone (batching, forward, backward, optimizer: deepergat's ``metrics.csv``
seconds; the reference's train step, timed by the harness) and the whole epoch with validation
and checkpoint saving (the reference's own "Time per epoch", epochs 2 … E; deepergat's time
between its epoch lines, epochs 2 … E-1: its last epoch also draws the learning curve).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_harness as rh


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _epoch_seconds(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # the first epoch carries start-up effects: take the later ones when there are some
    seconds = [float(r["seconds"]) for r in rows]
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))


def _run_cli(args: list[str], world: int, workdir: Path) -> float:
    out = workdir / f"world{world}"
    base = [sys.executable, "-m", "deepergat.cli", "train", *args, "--out", str(out),
            "--device", "cpu", "--cache-dir", str(workdir)]
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        if world > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(base, env=env, stdout=subprocess.DEVNULL))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"training with {world} processes failed")
    return _epoch_seconds(out)


def _data_share(data: str, target: str, layers: int, batch_size: int, workdir: Path,
                form: str) -> tuple[float, float]:
    """(seconds building batches, seconds in the model) over one epoch, in this process."""
    import torch

    from deepergat.nn.deepergatgnn import DeeperGATGNN
    from deepergat.training.data import load_graphs, to_tensors
    from deepergat.training.trainer import epoch_batches

    torch.set_num_threads(1)
    g = load_graphs(data, cache_dir=workdir)
    rows = g.usable
    y = torch.as_tensor(g.targets[target], dtype=torch.float32)
    torch.manual_seed(0)
    model = DeeperGATGNN(layers=layers, agat_form=form)  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=0.005)
    t_data = t_model = 0.0
    for batch in epoch_batches(len(rows), epoch=0, seed=0, batch_size=batch_size):
        t0 = time.perf_counter()
        inputs = to_tensors(g.batch(rows[batch]))
        t1 = time.perf_counter()
        pred = model(*inputs.values())[0][:, 0]
        loss = (pred - y[rows[batch]]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        t_data += t1 - t0
        t_model += t2 - t1
    return t_data, t_model


def _one_thread_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _median_after_first(values: list[float]) -> float:
    return float(np.median(values[1:] if len(values) > 1 else values))


def _deepergat_epochs(args: list[str], out: Path, workdir: Path) -> tuple[float, float]:
    """(training-pass s/epoch from metrics.csv, whole-epoch s/epoch between its epoch lines)
    of one ``deepergat train`` process on one thread."""
    cmd = [sys.executable, "-m", "deepergat.cli", "train", *args, "--out", str(out),
           "--device", "cpu", "--cache-dir", str(workdir)]
    with subprocess.Popen(cmd, env=_one_thread_env(), stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        # the time each epoch line arrives (unbuffered): after validation and saving
        stamps = [time.perf_counter() for line in p.stdout if re.match(r"\s*epoch\s+\d+/", line)]
    if p.returncode != 0:
        raise SystemExit(f"deepergat train failed: {' '.join(cmd)}")
    # epochs 2 … E; the last one also draws the learning curve: left out when there are others
    whole = list(np.diff(stamps))
    whole = whole[:-1] if len(whole) > 1 else whole
    return _epoch_seconds(out), float(np.median(whole)) if whole else float("nan")


def compare_with_reference(opts: argparse.Namespace) -> None:
    """The reference's s/epoch against deepergat's (periodic and minimum-image graphs)."""
    ref = rh.check_reference(opts.reference)
    with tempfile.TemporaryDirectory(prefix="bench-train-ref-") as tmp:
        work = Path(tmp)
        folder = work / "cifs"
        n = len(rh.write_cif_folder(folder, opts.n, Path(opts.csv), target=opts.target))
        store = work / "files.h5"
        subprocess.run([sys.executable, "-m", "deepergat.cli", "pack", str(folder),
                        "--target-name", opts.target, "-o", str(store)], check=True,
                       stdout=subprocess.DEVNULL)
        timings = work / "reference-epochs.jsonl"
        rh.train_reference(ref, folder, work / "reference.pth", work / "reference",
                           layers=opts.layers, epochs=opts.epochs, seed=1,
                           ratios=rh.split_ratios(n), env=_one_thread_env(), timings=timings)
        ref_pass = _median_after_first(rh.read_epoch_timings(timings))
        ref_whole = _median_after_first(rh.printed_epoch_times(work / "reference" / "train.log"))
        info = rh.reference_model_info(ref, work / "reference.pth")
        rows = [(f"reference DEEP_GATGNN, {info['layers']} AGAT layers (its graph: minimum "
                 "image)", ref_pass, ref_whole)]
        for graph in ("periodic", "minimum-image"):
            for compiled in (False, True) if opts.compile else (False,):
                args = ["--data", str(store), "--target", opts.target, "--layers",
                        str(opts.layers), "--epochs", str(opts.epochs), "--batch-size",
                        str(opts.batch_size), "--val-fraction", "0.1", "--seed", "0",
                        "--graph", graph, *(["--compile"] if compiled else [])]
                name = f"deepergat-{graph}{'-compiled' if compiled else ''}"
                t_pass, t_whole = _deepergat_epochs(args, work / name, work)
                rows.append((f"deepergat train --layers {opts.layers} --graph {graph}"
                             + (" --compile" if compiled else ""), t_pass, t_whole))
    print(f"\n{n} structures of {Path(opts.csv).name}, 90/10 split, batch {opts.batch_size}, "
          f"{opts.epochs} epochs (median of epochs 2..), one thread each, one run at a time\n")
    print("| training | s/epoch, training pass | s/epoch, whole epoch | reference / this |")
    print("|---|---:|---:|---:|")
    for name, t_pass, t_whole in rows:
        print(f"| {name} | {t_pass:.2f} | {t_whole:.2f} | {ref_pass / t_pass:.2f}× |")
    print(f"\n(last column: training pass; the reference model has {info['parameters']:,} "
          "parameters)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="structure store (not used with --reference)")
    ap.add_argument("--reference", help="deeperGATGNN checkout: compare with it instead")
    ap.add_argument("-n", type=int, default=None,
                    help="with --reference: CSV rows to use [default: all]")
    ap.add_argument("--csv", default=str(rh.DEFAULT_CSV),
                    help="with --reference: CSV of CIFs [default: perov5_dev.csv in "
                         "$DEEPERGAT_DATA or ../shared/data]")
    ap.add_argument("--target", default="heat_ref")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--compile", action="store_true",
                    help="with --reference: also time deepergat train --compile (its first "
                         "epoch, which compiles, is left out like every first epoch)")
    opts = ap.parse_args()
    if opts.reference:
        compare_with_reference(opts)
        return
    if not opts.data:
        ap.error("--data is required (or --reference)")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        args = ["--data", opts.data, "--target", opts.target, "--layers", str(opts.layers),
                "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size)]
        rows = []
        for form in ("rewritten", "direct"):
            t_data, t_model = _data_share(opts.data, opts.target, opts.layers, opts.batch_size,
                                          work, form)
            rows.append((f"1 process, in-process loop, AGAT {form}", t_data + t_model,
                         t_data / (t_data + t_model)))
        one = _run_cli(args, 1, work)
        two = _run_cli(args, 2, work)
        rows.append(("1 process (deepergat train)", one, float("nan")))
        rows.append(("2 gloo processes (deepergat train)", two, float("nan")))
    print(f"{'configuration':<48} {'s/epoch':>9} {'data share':>11}")
    for name, sec, share in rows:
        share_text = "" if np.isnan(share) else f"{100 * share:.1f} %"
        print(f"{name:<48} {sec:>9.2f} {share_text:>11}")
    print(f"speed-up of 2 processes: {one / two:.2f}×  (layers {opts.layers}, batch "
          f"{opts.batch_size}, {os.cpu_count()} CPUs visible)")


if __name__ == "__main__":
    main()
