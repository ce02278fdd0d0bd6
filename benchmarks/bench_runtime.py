"""The CPU default screen on ONNX Runtime, OpenVINO and the model compiled on this machine:
whole commands, alternating rounds.

``python benchmarks/bench_runtime.py [-n 50000] [--pairs 3] [--model perovskite-heat-single]``

On ``-n`` generated candidates (benchmarks/make_candidates.py), in one run:

* ``deepergat compile MODEL`` into a fresh private cache (its time is printed; ``--cache DIR``
  uses an existing one), so the ``compiled`` runtime exists;
* the model alone, one thread: structures/s per core of each runtime on the same screen-sized
  batches (120 candidates, ≈ the screen's 1,024 atoms) of 2,048 candidates (median of
  alternating timings, CPU time of the process);
* the whole command ``deepergat-screen --input X.h5 --model M`` (all cores, the defaults) with
  ``DEEPERGAT_ONNX_RUNTIME=onnxruntime`` (the baseline: the screen before OpenVINO),
  ``=openvino`` and ``=compiled``, ``--pairs`` alternating rounds, median wall time each, and
  the ratios;
* the output files against ONNX Runtime's: the same rows, statuses and flags, predictions within
  the agreement rule (`deepergat.export.agree`).

Goal (issue 27): the CPU default ≥ 1,000 structures/s on 2 cores, no trust flag. Set
``OMP_NUM_THREADS`` as the screen would run (unset: the screen's own choice).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_candidates  # noqa: E402

RUNTIMES = ("onnxruntime", "openvino", "compiled")
#: Candidates per model batch in the model-alone timing (≈ the screen's 1,024 atoms).
ALONE_BATCH = 120
#: the installed command, as users run it
SCREEN = shutil.which("deepergat-screen") or "deepergat-screen"


def screen(store: Path, out: Path, model: str, runtime: str) -> float:
    """Wall seconds of the whole ``deepergat-screen`` command on ``runtime``."""
    env = {**os.environ, "DEEPERGAT_ONNX_RUNTIME": runtime}
    t0 = time.perf_counter()
    r = subprocess.run([SCREEN, "--input", str(store), "--model", model, "--output", str(out),
                        "--no-resume"], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"screen on {runtime} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def model_alone(store: Path, model: str, pairs: int) -> dict[str, float]:
    """Structures/s per core (process CPU time, one thread) of each runtime, same batches."""
    from deepergat.contract import MAX_Z
    from deepergat.export import load
    from deepergat.graphs import build_inputs
    from deepergat.io.store import Store

    predictors = {rt: load(model, device="cpu", threads=1, runtime=rt) for rt in RUNTIMES}
    settings = predictors["onnxruntime"].graph_settings
    with Store(store) as s:
        n = min(2048, s.n_structures)
        batches = [build_inputs(s.read(a, a + ALONE_BATCH), **settings, max_z=MAX_Z).inputs
                   for a in range(0, n, ALONE_BATCH)]
    times: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
    for p in predictors.values():
        p.predict(batches[0])  # warm
    for _ in range(max(pairs, 3)):
        for rt, p in predictors.items():
            t0 = time.process_time()
            for b in batches:
                p.predict(b)
            times[rt].append(time.process_time() - t0)
    return {rt: n / statistics.median(t) for rt, t in times.items()}


def compile_into(cache: Path, model: str) -> float:
    """``deepergat compile MODEL`` into ``cache`` (this process uses it from now on); seconds."""
    from deepergat.export.compile import compile_model
    from deepergat.export.compiled import ENV_CACHE

    os.environ[ENV_CACHE] = str(cache)
    t0 = time.perf_counter()
    compile_model(model)
    return time.perf_counter() - t0


def compare_files(a: Path, b: Path) -> str:
    """How the two runtimes' files compare (rows, statuses, flags equal; predictions by the
    agreement rule)."""
    from deepergat.export import agree

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        stds = {t["name"]: t["std"] for t in json.loads(fa.attrs["model_metadata"])["targets"]}
        for key in ("index", "status", "flags"):
            if not np.array_equal(fa[key][:], fb[key][:]):
                return f"{key} differ"
        worst = 0.0
        for name in fa["predictions"]:
            y1, y2 = fa["predictions"][name][:], fb["predictions"][name][:]
            ok = agree(y1[:, None], y2[:, None], [stds[name]]).all()
            if not ok:
                return f"{name} outside the agreement rule"
            both = np.isfinite(y1)
            worst = max(worst, float(np.abs(y1[both] - y2[both]).max()))
    return f"equal rows, statuses and flags; predictions agree (max |Δ| {worst:.2g})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=50_000, help="candidates (50,000)")
    p.add_argument("--pairs", type=int, default=3, help="alternating rounds of screens (3)")
    p.add_argument("--model", default="perovskite-heat-single",
                   help="model (the screen's default, perovskite-heat-single)")
    p.add_argument("--cache", type=Path, default=None,
                   help="a compiled-model cache to use (default: compile into a fresh one)")
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        work = Path(tmp)
        store = work / "candidates.h5"
        make_candidates.main(["-n", str(a.n), "-o", str(store)])
        compile_s = compile_into(a.cache or work / "compiled", a.model)
        print(f"compiled in {compile_s:.1f} s", file=sys.stderr, flush=True)
        alone = model_alone(store, a.model, a.pairs)
        walls: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
        for k in range(a.pairs):
            order = RUNTIMES if k % 2 == 0 else RUNTIMES[::-1]  # alternate who goes first
            for rt in order:
                walls[rt].append(screen(store, work / f"{rt}.h5", a.model, rt))
                print(f"pair {k + 1} {rt}: {walls[rt][-1]:.1f} s", file=sys.stderr, flush=True)
        agreement = {rt: compare_files(work / "onnxruntime.h5", work / f"{rt}.h5")
                     for rt in RUNTIMES[1:]}
    med = {rt: statistics.median(w) for rt, w in walls.items()}
    print(f"\nCPU default screen, {a.n:,} generated candidates, model {a.model}, {cores} cores, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; median of {a.pairs} "
          f"alternating rounds; compiling took {compile_s:.1f} s (once per user, CPU kind and "
          "torch version)\n")
    print("| runtime | model alone, 1 thread (structures/s per core) | whole command (s) "
          "| structures/s | vs onnxruntime |")
    print("|---|---|---|---|---|")
    for rt in RUNTIMES:
        walls_txt = ", ".join(f"{w:.1f}" for w in walls[rt])
        print(f"| {rt} | {alone[rt]:.0f} | {med[rt]:.1f} ({walls_txt}) | {a.n / med[rt]:.0f} "
              f"| {med['onnxruntime'] / med[rt]:.2f}× |")
    for rt, text in agreement.items():
        print(f"\nfiles, {rt} against onnxruntime: {text}")


if __name__ == "__main__":
    main()
