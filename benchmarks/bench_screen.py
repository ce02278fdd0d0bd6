"""Screening throughput and memory: end to end, stage by stage, and per rank.

``python benchmarks/bench_screen.py [--model MODEL] [-n 100000] [--big 1000000] [--workdir DIR]``

On ``-n`` generated candidates (benchmarks/make_candidates.py):

* each stage alone, in this process on one core: reading chunks, the neighbor search, the
  predictor (single-threaded session), committing parts, merging — and the rate their serial
  sum would give (compare with the 1-core end-to-end run: the pipeline overlaps them);
* end to end, ``deepergat-screen`` as real processes: default settings on one process; one core
  per rank (``taskset`` / ``mpiexec -bind-to core``) on 1 and 2 ranks — structures/s of the
  screen itself (its closing summary) and of the whole command (start-up and merge included),
  peak RSS per rank;
* peak RSS per rank of a separate ``--big``-candidate run (2 ranks, default settings; it can
  be stopped after ``--big-seconds``), and of the same candidates all screened out
  (``--max-atoms 1``: the full read → commit → merge → top-K path at full length, in minutes).

Prints one table. Goals (issue 5, this 2-core machine, the 10-layer bundled model): end to end
≥ 450 structures/s; 2 ranks ≥ 1.7× 1 rank at one core per rank; peak RSS per rank < 2 GB on
1 M candidates.

``--null-model``: the CPU proxy of a GPU screen instead (issue 12). The rank runs exactly as
with ``--device cuda`` — worker processes do the neighbor search and hand padded batches to the
rank's main process, which predicts and writes — but the predictor answers at once (zeros of
the model's shapes). Measured with 1 … ``--proxy-workers`` featurizing workers, in this
process: structures/s end to end, structures/s per featurizing worker, and the rank main
process's CPU cost per structure in µs (all its threads: reading, batch hand-over, assembling
rows, writing parts). A GPU node's rate is then bounded by
``min(workers × per-worker rate, 10⁶ / main µs, model-alone rate)``; at 100k/s the main
process has 10 µs per structure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_candidates  # noqa: E402


def candidates(workdir: Path, n: int, seed: int = 0) -> Path:
    """The candidate store of n structures (cached in workdir)."""
    path = workdir / f"candidates-{n}-s{seed}.h5"
    if not path.exists():
        t0 = time.perf_counter()
        make_candidates.write_candidates(path, n, seed=seed)
        print(f"generated {n} candidates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


# ------------------------------------------------------------------------------ stages alone


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def stage_rates(store_path: Path, model: str | None, n_predict: int, chunk: int,
                workdir: Path) -> dict[str, float]:
    """Structures/s of each stage alone."""
    from deepergat.io import store as store_mod
    from deepergat.io.store import Store
    from deepergat.screening.merge import merge_parts
    from deepergat.screening.model import load_model
    from deepergat.screening.options import StructureChecks
    from deepergat.screening.parts import MANIFEST_FORMAT, PartsDir
    from deepergat.screening.pipeline import featurize, split_batches
    from deepergat.screening.plan import make_plan
    from deepergat.screening.predictions import Rows

    out: dict[str, float] = {}
    with Store(store_path) as store:
        n = store.n_structures
        plan = make_plan(store.n_atoms, chunk)

    # the baseline: HDF5's default 1 MiB chunk cache (smaller than a positions chunk), while
    # no other handle holds the file (HDF5 shares one open file's settings among its opens);
    # one untimed pass first, so that neither timing pays for a cold page cache
    for timed in (False, True):
        with mock.patch.object(store_mod, "_READ_CACHE_BYTES", 1 << 20), Store(store_path) as s:
            t0 = time.perf_counter()
            for k in range(plan.n_chunks):
                s.read(*plan.bounds(k))
            if timed:
                out["read, HDF5's default chunk cache (baseline)"] = _rate(
                    n, time.perf_counter() - t0)
    store = Store(store_path)
    t0 = time.perf_counter()
    batches = [store.read(*plan.bounds(k)) for k in range(plan.n_chunks)]
    out["read"] = _rate(n, time.perf_counter() - t0)

    m = load_model(model, device=("cpu", 0), threads=1,
                   checks=StructureChecks(max_atoms=1000, overlap_threshold=0.1))
    settings = m.settings
    model_batches = []
    t_feat = 0.0
    count = 0
    for b in batches:
        spans = split_batches(b.n_atoms, max_atoms=1000, max_neighbors=settings.max_neighbors)
        for s, e in spans:
            sub = b.select(np.arange(s, e))
            t0 = time.perf_counter()
            f = featurize(sub, settings)
            t_feat += time.perf_counter() - t0
            count += e - s
            model_batches.append(f)
    out["featurize (1 core)"] = _rate(count, t_feat)

    m.predictor.predict(model_batches[0].graph.inputs)  # warm-up
    todo, done = [], 0
    for f in model_batches:
        if done >= n_predict:
            break
        todo.append(f)
        done += len(f.graph.rows)
    t0 = time.perf_counter()
    for f in todo:
        m.predictor.predict(f.graph.inputs)
    out["predict (1 core)"] = _rate(done, time.perf_counter() - t0)

    parts = PartsDir(workdir / "stage-write.h5")
    parts.clear()
    manifest = {
        "format": MANIFEST_FORMAT, "version": 1, "input": str(store_path),
        "input_digest": store.content_digest, "n_structures": n, "model": "bench",
        "model_sha256": "0" * 64, "model_metadata": {}, "chunk_size": chunk,
        "n_chunks": plan.n_chunks, "max_atoms": 1000, "overlap_threshold": 0.1,
        "embeddings": False, "embedding_dim": 64,
        "targets": [{"name": "y", "units": ""}],
    }
    parts.prepare(manifest, resume=False)
    t0 = time.perf_counter()
    for k, b in enumerate(batches):
        a, _ = plan.bounds(k)
        m = len(b)
        parts.commit(k, a, Rows(index=b.index, ids=b.ids, status=np.zeros(m, np.uint8),
                                flags=np.zeros(m, np.uint8),
                                predictions=np.zeros((m, 1), np.float32)))
    out["write parts"] = _rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    merge_parts(parts, plan, manifest)
    out["merge"] = _rate(n, time.perf_counter() - t0)
    (workdir / "stage-write.h5").unlink(missing_ok=True)
    store.close()
    serial = ("read", "featurize (1 core)", "predict (1 core)", "write parts", "merge")
    out["serial sum of stages (1 core)"] = 1.0 / sum(1.0 / out[k] for k in serial)
    return out


# ------------------------------------------------------------------- the CPU proxy of a GPU


class NullPredictor:
    """A loaded predictor's metadata and shapes, answering at once (zeros): the screening
    pipeline's own cost with the model's time taken out. Claims to be on a GPU so the rank
    takes the GPU path (workers featurize, this process predicts, GPU batch sizes)."""

    def __init__(self, real: Any, *, targets: int, dim: int, spread: bool) -> None:
        self.metadata = real.metadata
        self.sha256 = real.sha256
        self.path = real.path
        self.device = "cuda:0 (null model)"
        self.backend = "null"
        self._shapes = (targets, dim, spread)

    def predict(self, inputs: Any) -> Any:
        from deepergat.export.predictor import Prediction

        t, d, spread = self._shapes
        c = inputs["crystal_atoms"].shape[0]
        z = np.zeros((c, t), np.float32)
        return Prediction(z, np.zeros((c, d), np.float32), z if spread else None)


def null_model_proxy(store: Path, model: str | None, workdir: Path, max_workers: int
                     ) -> list[tuple[str, str, str, str]]:
    """Table rows of the CPU proxy (module docstring): each worker count, in this process."""
    from deepergat.io import store as store_mod
    from deepergat.screening import pipeline as pipeline_mod
    from deepergat.screening import run as run_mod
    from deepergat.screening import setup as setup_mod
    from deepergat.screening.mpi import connect
    from deepergat.screening.pipeline import start_forkserver

    real_load = setup_mod.load_model
    real_pick = setup_mod.pick_device
    real_run = pipeline_mod.Pipeline.run
    measured: dict[str, float] = {}

    def load(model: str | None, *, device: tuple[str, int], threads: int | None,
             **kw: Any) -> Any:
        m = real_load(model, device=("cpu", 0), threads=1, **kw)
        return dataclasses.replace(m, predictor=NullPredictor(
            m.predictor, targets=len(m.targets), dim=m.embedding_dim, spread=m.spread))

    def timed_run(self: Any, *args: Any, **kw: Any) -> Any:
        cpu0 = time.process_time()
        stats = real_run(self, *args, **kw)
        measured["main_cpu"] = time.process_time() - cpu0
        measured["workers_featurize"] = stats.featurize
        measured["seconds"] = stats.seconds
        measured["structures"] = stats.structures
        return stats

    setup_mod.load_model = load  # type: ignore[assignment]
    setup_mod.pick_device = lambda *a, **k: ("cuda", 0)  # type: ignore[assignment]
    pipeline_mod.Pipeline.run = timed_run  # type: ignore[method-assign]
    start_forkserver()
    ranks = connect({})
    rows: list[tuple[str, str, str, str]] = []
    # 1 worker with HDF5's default chunk cache first: the baseline of the store's own cache
    plan = [(1, True)] + [(w, False) for w in range(1, max_workers + 1)]
    try:
        for workers, baseline in plan:
            opts = run_mod.ScreenOptions.create(store, model=model,
                                                output=workdir / "proxy.predictions.h5",
                                                workers=workers, resume=False)
            cache = 1 << 20 if baseline else store_mod._READ_CACHE_BYTES
            with mock.patch.object(store_mod, "_READ_CACHE_BYTES", cache):
                run_mod.screen(opts, ranks)
            n, secs = measured["structures"], measured["seconds"]
            main_us = 1e6 * measured["main_cpu"] / n
            if baseline:
                rows.append(("null model, 1 worker, HDF5's default chunk cache (baseline)",
                             f"{n / secs:,.0f}", f"{main_us:.1f} µs/structure", ""))
                continue
            per_worker = _rate(n, measured["workers_featurize"])
            bound = min(workers * per_worker, 1e6 / main_us)
            rows.append((f"null model, {workers} featurizing worker(s): end to end",
                         f"{n / secs:,.0f}", f"{main_us:.1f} µs/structure", ""))
            rows.append((f"null model, {workers} worker(s): neighbor search per worker",
                         f"{per_worker:,.0f}", f"bound {bound:,.0f}/s", ""))
            print(f"proxy, {workers} workers: {n / secs:,.0f} structures/s, main process "
                  f"{main_us:.1f} µs/structure, {per_worker:,.0f}/s per featurizing worker",
                  file=sys.stderr)
    finally:
        setup_mod.load_model = real_load  # type: ignore[assignment]
        setup_mod.pick_device = real_pick  # type: ignore[assignment]
        pipeline_mod.Pipeline.run = real_run  # type: ignore[method-assign]
    return rows


# ------------------------------------------------------------------------------ end to end


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _is_rank(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().split(b"\0")
    except OSError:
        return False
    return ("python" in os.path.basename(cmd[0]).decode(errors="replace")
            and any(c.endswith(b"deepergat.cli.screen") for c in cmd))


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def run_screen(cmd: list[str], env: dict[str, str], timeout: float | None = None
               ) -> dict[str, Any]:
    """Run a screen command: wall time, the summary's rate, and per rank the peak RSS (MB) of
    the rank process and of the rank with its worker processes (sum of their peaks)."""
    peaks: dict[int, int] = {}
    owner: dict[int, int] = {}  # process -> its rank process
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    stop = threading.Event()

    def sample() -> list[int]:
        family = _descendants(proc.pid)
        for p in [proc.pid, *family]:
            if p not in owner and _is_rank(p):
                owner[p] = p
        for rank in [p for p, r in owner.items() if p == r]:
            for p in _descendants(rank):
                owner.setdefault(p, rank)
        for p in owner:
            peaks[p] = max(peaks.get(p, 0), _hwm_kb(p))
        return family

    def watch() -> None:
        while not stop.wait(0.2):
            sample()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    partial = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        partial = True
        family = sample()
        proc.kill()
        for p in family:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    if proc.returncode != 0 and not partial:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-3000:]}")
    m = re.search(r"screened (\d+) structures in ([\d.]+) s", stdout)
    screened, seconds = (int(m.group(1)), float(m.group(2))) if m else (0, float("nan"))
    ranks = sorted(p for p, r in owner.items() if p == r)
    rss = [(peaks.get(r, 0) / 1024,
            sum(peaks.get(p, 0) for p, o in owner.items() if o == r) / 1024) for r in ranks]
    return {"wall": wall, "screened": screened, "rate": _rate(screened, seconds),
            "wall_rate": _rate(screened, wall), "rss_mb": rss, "partial": partial,
            "stdout": stdout}


def _fmt_rss(rss: list[tuple[float, float]]) -> str:
    return ", ".join(f"{own:,.0f}" + (f" ({total:,.0f} with workers)" if total > own + 1 else "")
                     for own, total in rss)


def screen_cmd(store: Path, out: Path, model: str | None, *extra: str,
               ranks: int | None = None, bind: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "deepergat.cli.screen", "--input", str(store),
           "--output", str(out), "--no-resume", *extra]
    if model:
        cmd += ["--model", model]
    if ranks is None:
        return ["taskset", "-c", "0", *cmd] if bind else cmd
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found (pip install mpich)")
    return [mpiexec, "-n", str(ranks), *(["-bind-to", "core"] if bind else []), *cmd]


def timings(store: Path, model: str | None, n_predict: int, workdir: Path,
            env: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """Table rows: each stage alone, then the three end-to-end runs."""
    rows: list[tuple[str, str, str, str]] = []
    stages = stage_rates(store, model, n_predict, 2048, workdir)
    for name, rate in stages.items():
        rows.append((f"stage alone: {name}", f"{rate:,.0f}", "", ""))

    runs = [
        ("end to end, default settings, 1 process", {}),
        ("end to end, 1 core/rank, 1 rank", {"bind": True}),
        ("end to end, 1 core/rank, 2 ranks", {"bind": True, "ranks": 2}),
    ]
    results = {}
    for label, kw in runs:
        out = workdir / "bench.predictions.h5"
        r = run_screen(screen_cmd(store, out, model, **kw), env)
        results[label] = r
        rows.append((label, f"{r['rate']:,.0f}", f"{r['wall_rate']:,.0f}", _fmt_rss(r["rss_mb"])))
        print(f"{label}: {r['rate']:,.0f} structures/s", file=sys.stderr)
    one = results["end to end, 1 core/rank, 1 rank"]["rate"]
    two = results["end to end, 1 core/rank, 2 ranks"]["rate"]
    rows.append(("speed-up 2 ranks / 1 rank (1 core/rank)", f"{two / one:.2f}x", "", ""))

    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model (default: the bundled model)")
    p.add_argument("-n", type=int, default=100_000, help="candidates for the timings (100,000)")
    p.add_argument("--big", type=int, default=1_000_000,
                   help="candidates of the memory run (1,000,000; 0 skips it)")
    p.add_argument("--big-seconds", type=float, default=None,
                   help="stop the memory run with the model after this long (peak RSS so far; "
                        "default: finish)")
    p.add_argument("--stage-predict", type=int, default=5000,
                   help="structures the predictor stage is timed on (5,000)")
    p.add_argument("--workdir", default=None,
                   help="folder for stores and outputs (default: <tmp>/deepergat-bench-screen)")
    p.add_argument("--skip-timings", action="store_true",
                   help="only the memory runs (skip the stages and the -n runs)")
    p.add_argument("--null-model", action="store_true",
                   help="the CPU proxy of a GPU screen instead (see the module docstring)")
    p.add_argument("--proxy-workers", type=int, default=None,
                   help="--null-model: up to this many featurizing workers (default: cores − 1, "
                        "at least 1)")
    args = p.parse_args(argv)
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "deepergat-bench-screen")
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PMI_"))}
    store = candidates(workdir, args.n)
    cores = len(os.sched_getaffinity(0))

    rows: list[tuple[str, str, str, str]] = []
    if args.null_model:
        rows += null_model_proxy(store, args.model, workdir,
                                 args.proxy_workers or max(1, cores - 1))
        args.big = 0
    elif not args.skip_timings:
        rows += timings(store, args.model, args.stage_predict, workdir, env)

    if args.big:
        big = candidates(workdir, args.big)
        out = workdir / "big.predictions.h5"
        r = run_screen(screen_cmd(big, out, args.model, ranks=2), env,
                       timeout=args.big_seconds)
        rss = _fmt_rss(r["rss_mb"])
        stopped = f" (stopped after {args.big_seconds:.0f} s)" if r["partial"] else ""
        rows.append((f"memory run: {args.big:,} candidates, 2 ranks{stopped}",
                     f"{r['rate']:,.0f}" if r["screened"] else "-",
                     f"{r['wall_rate']:,.0f}" if r["screened"] else "-", rss))
        # The whole path at full length, merge and top-K included, without the model's time:
        # --max-atoms 1 screens every structure out (status 2).
        r = run_screen(screen_cmd(big, out, args.model, "--max-atoms", "1", "--top", "10",
                                  ranks=2), env)
        rss = _fmt_rss(r["rss_mb"])
        rows.append((f"memory run: {args.big:,}, 2 ranks, no model calls, merged",
                     f"{r['rate']:,.0f}", f"{r['wall_rate']:,.0f}", rss))

    head = (("what", "structures/s", "main process / bound", "") if args.null_model else
            ("what", "structures/s (screen)", "structures/s (whole command)", "peak RSS/rank MB"))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    print(f"\nbench_screen: {args.n:,} candidates, {cores} cores, model "
          f"{args.model or '(bundled)'}")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
