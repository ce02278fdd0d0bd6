"""From CIF files, side by side with the paper's reference code (issue 27): the reference's cold
``Predict`` against ``deepergat pack`` + ``deepergat-screen`` on the same folder, same cores.

``python benchmarks/bench_from_files.py --reference /work/ref/deeperGATGNN [-n 3787] [--pairs 3]
[--layers 10] [--model M ...] [--workdir DIR] [--threads N] [--cores 0,1]``

Get the reference first (kept outside this repository, run unmodified with run-time fixes, see
``benchmarks/reference_harness.py``)::

    git clone https://github.com/usccolumbia/deeperGATGNN /work/ref/deeperGATGNN

(or the ``fetch`` tool with ``github:usccolumbia/deeperGATGNN``, then ``git --git-dir=<its bare
git dir> archive HEAD main.py config.yml matdeeplearn | tar -x -C /work/ref/deeperGATGNN``).

What it does: writes the first ``-n`` rows of ``perov5_dev.csv`` (``$DEEPERGAT_DATA`` or
``../shared/data``) as ``<id>.cif``
files with the reference's ``targets.csv`` (one folder, read by both); trains the reference's
DEEP_GATGNN_demo with ``--layers`` AGAT layers for ``--ref-epochs`` epochs (the weights do not
change its speed; ``--reference-model`` reuses a saved one); then, after one untimed warm-up of
each side, ``--pairs`` alternating pairs (the side that goes first alternates), each command a
whole subprocess timed by wall clock:

* the reference: ``main.py --run_mode Predict`` with its ``processed/`` cache removed first
  (cold: it reads the CIFs and builds its graphs), batch 128, writing its CSV;
* deepergat: ``python -m deepergat.cli pack <folder> -o X.h5`` then ``deepergat-screen --input
  X.h5 --output P.h5 --model M`` for each ``--model`` (bundled names or files; default: the
  bundled default model, ``perovskite-heat-single``, 10 layers, periodic graphs).
  ``--model perovskite-heat-single --model perovskite-heat-mic`` adds the bundled model on the
  reference's own graph (minimum-image, 10 layers): the same work as the reference's model.

Prints a markdown table: median seconds of the pairs, structures/s (``-n`` / median) for the
reference, ``pack``, ``deepergat-screen`` and the two together (per model), and the ratio of the
medians per model (the goal: ≥ 4×). In each pair the reference and every model's commands run
once, in an order that alternates. Both sides get the same cores: by default every core
visible and each program's own thread defaults (torch's intra-op threads for the reference;
``pack``'s parser processes and ``deepergat-screen``'s worker processes for deepergat);
``--threads N`` sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` for both, ``--cores`` pins both
with ``taskset -c``.
The table names the runtime the bundled model ran on (``DEEPERGAT_ONNX_RUNTIME`` in the
environment chooses, as for any screen).
Run it with the machine otherwise quiet; compare only numbers from one sitting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import reference_harness as rh  # noqa: E402

log = logging.getLogger("bench_from_files")


def _screen_command() -> list[str]:
    script = Path(sys.executable).with_name("deepergat-screen")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deepergat.cli.screen"]


def _deepergat_model(model: str | None) -> dict:
    """Path, layers, graph and runtime of the model ``deepergat-screen --model`` uses (None:
    the bundled default)."""
    from deepergat.screening.model import model_path

    path = model_path(model)
    out = subprocess.run([sys.executable, "-m", "deepergat.cli", "info", str(path), "--json"],
                         check=True, capture_output=True, text=True).stdout
    meta = json.loads(out).get("metadata", {})
    graph = "?"
    try:  # what the screen's loader picks on the CPU (a compiled model, OpenVINO, ONNX Runtime)
        from deepergat.export import load

        predictor = load(path, device="cpu")
        runtime, graph = predictor.backend, predictor.graph
    except Exception as exc:  # an older checkout or a bad setting: say so, measure anyway
        runtime = f"unknown ({exc})"
    name = model or Path(path).parent.name
    return {"name": name, "path": str(path), "layers": meta.get("model", {}).get("layers"),
            "graph": graph, "runtime": runtime}


class Sides:
    """The two sides' commands on one folder, with the same environment and cores."""

    def __init__(self, opts: argparse.Namespace, ref: Path, folder: Path, model: Path,
                 work: Path) -> None:
        self.ref, self.folder, self.model, self.work = ref, folder, model, work
        self.env = dict(os.environ)
        if opts.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                self.env[var] = str(opts.threads)
        self.pin = ["taskset", "-c", opts.cores] if opts.cores else []
        self.store = work / "files.h5"
        self.predictions = work / "files.predictions.h5"
        self.ref_rows = self.screened = -1

    def reference(self) -> float:
        run = self.work / "reference"
        seconds = rh.predict_reference(self.ref, self.folder, self.model, run, env=self.env,
                                       cold=True, pin=self.pin)
        self.ref_rows = rh.predicted_rows(run)
        return seconds

    def deepergat(self, model: str | None) -> tuple[float, float]:
        self.store.unlink(missing_ok=True)
        self.predictions.unlink(missing_ok=True)
        shutil.rmtree(self.predictions.with_name(self.predictions.name + ".parts"),
                      ignore_errors=True)
        pack = [*self.pin, sys.executable, "-m", "deepergat.cli", "pack", str(self.folder),
                "-o", str(self.store)]
        screen = [*self.pin, *_screen_command(), "--input", str(self.store), "--output",
                  str(self.predictions), *(["--model", model] if model else [])]
        t_pack = rh.run_timed(pack, self.work, self.env, self.work / "pack.log")
        t_screen = rh.run_timed(screen, self.work, self.env, self.work / "screen.log")
        found = re.search(r"wrote .*\((\d+) structures", (self.work / "screen.log").read_text())
        self.screened = int(found.group(1)) if found else -1
        return t_pack, t_screen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="deeperGATGNN checkout")
    ap.add_argument("-n", type=int, default=None, help="CIFs [default: all 3,787 rows]")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=10, help="the reference's AGAT layers")
    ap.add_argument("--ref-epochs", type=int, default=1, help="epochs of its timing model")
    ap.add_argument("--reference-model", help="reuse this reference .pth (else one is trained)")
    ap.add_argument("--csv", default=str(rh.DEFAULT_CSV))
    ap.add_argument("--workdir", help="keep files here [default: a temporary folder]")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP/MKL threads for both sides [default: each program's own]")
    ap.add_argument("--cores", default=None, help="taskset -c list for both sides")
    ap.add_argument("--model", action="append", default=None,
                    help="deepergat-screen's --model, repeatable [default: the bundled default]")
    ap.add_argument("--no-warmup", action="store_true")
    opts = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ref = rh.check_reference(opts.reference)
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        work = Path(opts.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        folder = work / "cifs"
        n = len(rh.write_cif_folder(folder, opts.n, Path(opts.csv)))
        if opts.reference_model:
            model = Path(opts.reference_model).resolve()
        else:
            model = work / f"reference-{opts.layers}layers.pth"
            log.info("training the reference (%d layers, %d epoch(s)) for its model file",
                     opts.layers, opts.ref_epochs)
            rh.train_reference(ref, folder, model, work / "reference-train",
                               layers=opts.layers, epochs=opts.ref_epochs)
        ref_info = rh.reference_model_info(ref, model)
        models: list[str | None] = list(opts.model) if opts.model else [None]
        ours = [_deepergat_model(m) for m in models]
        sides = Sides(opts, ref, folder, model, work)
        if not opts.no_warmup:
            log.info("warm-up (untimed): one run of each side")
            sides.reference()
            for m in models:
                sides.deepergat(m)
        ref_s: list[float] = []
        pack_s: list[list[float]] = [[] for _ in models]
        screen_s: list[list[float]] = [[] for _ in models]
        screened: list[int] = [-1 for _ in models]
        for pair in range(opts.pairs):
            order: list[int | None] = [None, *range(len(models))]  # None: the reference
            if pair % 2:
                order.reverse()
            for side in order:
                if side is None:
                    ref_s.append(sides.reference())
                    log.info("pair %d: reference cold Predict %.2f s", pair + 1, ref_s[-1])
                else:
                    p, s = sides.deepergat(models[side])
                    pack_s[side].append(p)
                    screen_s[side].append(s)
                    screened[side] = sides.screened
                    log.info("pair %d: deepergat pack %.2f s + screen %.2f s (%s)", pair + 1,
                             p, s, ours[side]["name"])

    def row(name: str, times: list[float]) -> str:
        med = statistics.median(times)
        runs = ", ".join(f"{t:.2f}" for t in times)
        return f"| {name} | {med:.2f} | {n / med:.0f} | {runs} |"

    cores = opts.cores or f"all {len(os.sched_getaffinity(0))} visible"
    threads = f"OMP/MKL_NUM_THREADS={opts.threads}" if opts.threads else "each program's defaults"
    print(f"\n{n} perovskite CIFs from {Path(opts.csv).name}, {opts.pairs} alternating pair(s); "
          f"cores: {cores}; threads: {threads}\n")
    print("| command (whole process, from the CIF folder) | median s | structures/s | runs (s) |")
    print("|---|---:|---:|---|")
    print(row(f"reference cold `Predict` (DEEP_GATGNN, {ref_info['layers']} AGAT layers, "
              f"{ref_info['parameters']:,} parameters)", ref_s))
    totals = [[p + s for p, s in zip(ps, ss, strict=True)]
              for ps, ss in zip(pack_s, screen_s, strict=True)]
    for info, ps, ss, total in zip(ours, pack_s, screen_s, totals, strict=True):
        print(row(f"`deepergat pack` (before {info['name']})", ps))
        print(row(f"`deepergat-screen --model {info['name']}` ({info['layers']} layers, "
                  f"{info['graph']} graphs, on {info['runtime']})", ss))
        print(row(f"`deepergat pack` + `deepergat-screen` ({info['name']})", total))
    print()
    for info, total in zip(ours, totals, strict=True):
        ratio = statistics.median(ref_s) / statistics.median(total)
        pairs = ", ".join(f"{r / t:.2f}" for r, t in zip(ref_s, total, strict=True))
        print(f"ratio of medians, reference / (pack + screen) with {info['name']} "
              f"({info['graph']} graphs): **{ratio:.2f}×** (goal ≥ 4×); per pair: {pairs}")
    print(f"rows out: reference CSV {sides.ref_rows} of {n} (it drops the last structure); "
          "deepergat predictions " + ", ".join(f"{k} of {n} ({i['name']})"
                                              for k, i in zip(screened, ours, strict=True)))


if __name__ == "__main__":
    main()
