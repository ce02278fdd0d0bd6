"""Training speed on perov5_dev: seconds per epoch with 1 process and with 2 gloo processes (one
thread each), the share of time spent outside the model (batch building), and the two AGAT
projection forms (direct [x ‖ e] W vs rewritten x W_x + e W_e).

``python benchmarks/bench_train.py --data perov.h5 [--layers 10] [--epochs 2] [--target heat_ref]``

The store is made with ``deepergat pack ../shared/data/perov5_dev.csv --target heat_ref:eV -o
perov.h5``. Prints a table; timings are wall seconds on this machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--target", default="heat_ref")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    opts = ap.parse_args()
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
