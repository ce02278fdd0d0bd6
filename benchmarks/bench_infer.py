"""Inference throughput (structures/s) of every backend: same weights, same batches, one run.

Backends: eager PyTorch of the direct AGAT form ([x ‖ e] W per edge, twice), eager of the
rewritten model (x W_x once per atom + e W_e once per edge), the traced TorchScript file, the
``torch.export`` program (.pt2), ONNX Runtime and, where a C++ compiler is present, the
AOTInductor-compiled package (.aoti.pt2, CPU) — all through `deepergat.export.load`'s
`Predictor` (numpy in, numpy out, as screening calls them), on the CPU and, when present, a
GPU. The model is the bundled 10-layer model when one is installed, else the same architecture
with random weights (said in the output); it is exported once (with its parity check) into a
temporary folder.

Batches are perovskites from perov5_dev.csv in $DEEPERGAT_DATA or ../shared/data (packed
once; repeated to fill 4096), else generated perovskite cells. Each timing is the best of
several runs (the machine is shared); a run is one `predict` call on the whole batch, graph
building excluded.

A second table measures ONNX Runtime session options: graph optimization level, intra-op
threads and sequential vs parallel execution.

``--architectures`` measures instead every architecture of ``deepergat train --arch`` (plain
and Deeper, at the paper's default depths, random weights, exported to ONNX with the parity
check): eager PyTorch and ONNX Runtime structures/s on the same batch, beside DeeperGATGNN in
the same run, so a screening user can trade accuracy for speed knowingly.

Usage::

    python benchmarks/bench_infer.py [--threads 2] [--sizes 1 64 256 1024 4096] [--min-time 2]
        [--clock wall|cpu] [--architectures [--arch-batch 1024]]

``--clock cpu`` times with ``time.process_time`` (CPU seconds of all the process's threads):
on a machine shared with other jobs it measures the work, not the waiting; use it with
``--threads 1``.

Threads are set once for everything: OMP_NUM_THREADS / MKL_NUM_THREADS (before torch loads),
``torch.set_num_threads`` and ONNX Runtime's intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import sys


def _threads_from_argv(default: int = 2) -> int:
    for k, arg in enumerate(sys.argv):
        if arg == "--threads" and k + 1 < len(sys.argv):
            return int(sys.argv[k + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return default


_THREADS = _threads_from_argv()
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(_THREADS)  # before numpy and torch load

import copy  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from deepergat.contract import MAX_Z  # noqa: E402
from deepergat.graphs import build_inputs  # noqa: E402
from deepergat.io.store import StructureBatch  # noqa: E402

#: perov5_dev.csv in $DEEPERGAT_DATA, else in ../shared/data beside the repository.
DATA = Path(os.environ.get("DEEPERGAT_DATA")
            or Path(__file__).resolve().parents[1].parent / "shared" / "data") / "perov5_dev.csv"
SIZES = (1, 64, 256, 1024, 4096)


def perovskites(n: int, workdir: Path) -> tuple[StructureBatch, str]:
    """n perovskite structures: the perov5 data (packed once, repeated) or generated cells."""
    if DATA.exists():
        from deepergat.io.pack import pack
        from deepergat.io.store import Store

        store = workdir / "perov5.h5"
        pack([str(DATA)], store, workers=min(_THREADS, 2))
        with Store(store) as s:
            batch = s.read(0, len(s))
        source = f"perov5_dev.csv ({len(batch)} structures)"
    else:
        from deepergat.export.samples import _perovskite

        rng = np.random.default_rng(0)
        batch = StructureBatch.from_structures(
            [_perovskite(rng, (1, 1, 1)) | {"id": f"gen-{k}"} for k in range(n)])
        source = f"generated perovskite cells ({DATA} absent)"
    rows = np.arange(n) % len(batch)
    return batch.select(rows), source


def model_checkpoint(workdir: Path) -> tuple[Path, str]:
    """The bundled 10-layer model, else a random-weight checkpoint of the same architecture."""
    from deepergat.export.resolve import BUNDLED_CHECKPOINT, bundled_dir, bundled_models

    for name in bundled_models():
        ckpt = bundled_dir() / name / BUNDLED_CHECKPOINT
        if ckpt.is_file():
            return ckpt, f"bundled model {name!r}"
    import torch

    from deepergat.nn.checkpoint import save_checkpoint
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    torch.manual_seed(0)
    model = DeeperGATGNN(layers=10, target_mean=[-1.0], target_std=[1.0])
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "running_mean"):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    path = workdir / "random10.ckpt"
    save_checkpoint(path, model.eval(), targets=["heat_ref"], units=["eV"],
                    elements=list(range(1, 101)))
    return path, "10 layers, dim 64, random weights (no bundled model installed)"


CLOCK: Callable[[], float] = time.perf_counter


def best_rate(fn: Callable[[], object], n: int, *, min_time: float, max_runs: int = 20,
              sync: Callable[[], None] | None = None) -> float:
    """Structures/s of the fastest of several runs (after one warm-up run)."""
    fn()
    if sync:
        sync()
    best = float("inf")
    spent = 0.0
    runs = 0
    while runs < max_runs and (runs < 2 or spent < min_time):
        t = CLOCK()
        fn()
        if sync:
            sync()
        dt = CLOCK() - t
        best = min(best, dt)
        spent += dt
        runs += 1
        if dt > 4 * min_time and runs >= 1:
            break
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="Seconds of timed runs per backend and size (at least 2 runs).")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="Devices to time [default: the CPU, and CUDA when torch sees a GPU].")
    parser.add_argument("--no-options", action="store_true",
                        help="Skip the ONNX Runtime session-option table.")
    parser.add_argument("--no-tune-malloc", action="store_true",
                        help="Leave glibc malloc as it is (torch backends then fault in fresh "
                             "pages on every batch; see deepergat.export.runtime.tune_malloc).")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: time.perf_counter; cpu: time.process_time (shared machines).")
    parser.add_argument("--architectures", action="store_true",
                        help="every architecture (plain and Deeper) instead of every backend")
    parser.add_argument("--arch-batch", type=int, default=1024,
                        help="--architectures: structures per batch (1024)")
    parser.add_argument("--archs", nargs="+", default=None,
                        help="--architectures: only these (e.g. deepergatgnn cgcnn) [default: all]")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    import torch

    from deepergat.export import export_model, load
    from deepergat.export.openvino_runtime import openvino_available
    from deepergat.export.predictor import TorchPredictor
    from deepergat.nn.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    if "cuda" in (args.devices or []) and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no CUDA device")
    if args.no_tune_malloc:
        os.environ["DEEPERGAT_TUNE_MALLOC"] = "0"
    else:
        from deepergat.export.runtime import tune_malloc

        tune_malloc()
    if args.architectures:
        architectures_table(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-infer-") as tmp:
        work = Path(tmp)
        ckpt, what = model_checkpoint(work)
        print(f"model: {what}; threads: {args.threads} (OMP/MKL, torch, ONNX Runtime intra-op); "
              f"clock: {args.clock}; glibc malloc tuned: {not args.no_tune_malloc}")
        t0 = time.perf_counter()
        aoti = shutil.which("g++") is not None or shutil.which("c++") is not None
        aoti = aoti and "cpu" in (args.devices or ["cpu"])
        formats = ["onnx", "torchscript", "pt2"] + (["aoti"] if aoti else [])
        export_model(ckpt, work / "exported", formats=formats, n_check=256, big_batch=512)
        print(f"exported and parity-checked in {time.perf_counter() - t0:.0f} s")
        structures, source = perovskites(max(args.sizes), work)
        print(f"structures: {source}")
        batches = {}
        for size in args.sizes:
            g = build_inputs(structures.select(np.arange(size)), max_z=MAX_Z)
            batches[size] = g.inputs
        base = load_checkpoint(ckpt)
        meta = load(ckpt, device="cpu").metadata

        def eager(form: str, device: str) -> TorchPredictor:
            model = copy.deepcopy(base.model).to(device).eval()
            model.set_agat_form(form)  # type: ignore[arg-type]
            return TorchPredictor(ckpt, model, meta, "", device, f"eager {form}")

        devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            sync = torch.cuda.synchronize if device == "cuda" else None
            backends = {
                "eager direct": eager("direct", device),
                "eager rewritten": eager("rewritten", device),
                "torchscript": load(work / "exported" / "model.pt", device=device,
                                    threads=args.threads, trust=True),  # exported just now
                "pt2": load(work / "exported" / "model.pt2", device=device,
                            threads=args.threads),
                "onnxruntime": load(work / "exported" / "model.onnx", device=device,
                                    threads=args.threads, runtime="onnxruntime"),
            }
            if device == "cpu" and openvino_available():
                backends["openvino"] = load(work / "exported" / "model.onnx", device="cpu",
                                            threads=args.threads, runtime="openvino")
            if aoti and device == "cpu":
                backends["aoti"] = load(work / "exported" / "model.aoti.pt2", device="cpu",
                                        threads=args.threads, trust=True)
            if device == "cuda" and not backends["onnxruntime"].device.startswith("cuda"):
                del backends["onnxruntime"]
            print(f"\n{device}: structures/s (best of runs; N atoms, K slots per batch)")
            header = f"{'batch':>6} {'N':>6} {'K':>3} " + " ".join(f"{b:>16}" for b in backends)
            print(header)
            table: dict[int, dict[str, float]] = {}
            for size, inputs in batches.items():
                n_atoms, k = inputs["neighbors"].shape
                row = {}
                for name, p in backends.items():
                    row[name] = best_rate(lambda p=p, inputs=inputs: p.predict(inputs), size,
                                          min_time=args.min_time, sync=sync)
                table[size] = row
                print(f"{size:>6} {n_atoms:>6} {k:>3} "
                      + " ".join(f"{row[b]:>16.1f}" for b in backends), flush=True)
            ratio = {s: r["eager rewritten"] / r["eager direct"] for s, r in table.items()}
            print("rewritten / direct (eager): "
                  + ", ".join(f"{s}: {v:.2f}x" for s, v in ratio.items()))
            best_eager = max(table.items(), key=lambda kv: kv[1]["eager rewritten"])
            exported = [b for b in backends if not b.startswith("eager")]
            best_exp = max(((s, b, r[b]) for s, r in table.items() for b in exported),
                           key=lambda t: t[2])
            print(f"best eager (rewritten): {best_eager[1]['eager rewritten']:.1f}/s at batch "
                  f"{best_eager[0]}; best exported: {best_exp[1]} {best_exp[2]:.1f}/s at batch "
                  f"{best_exp[0]} ({best_exp[2] / best_eager[1]['eager rewritten']:.2f}x)")

        if not args.no_options:
            from deepergat.export.predictor import OnnxPredictor
            from deepergat.export.runtime import make_session

            print("\nONNX Runtime session options (CPU provider), structures/s")
            sizes = [s for s in args.sizes if s in (64, 256, 1024)] or args.sizes[:1]
            print(f"{'optimization':>12} {'intra':>5} {'mode':>10} "
                  + " ".join(f"{f'batch {s}':>11}" for s in sizes))
            onnx_path = work / "exported" / "model.onnx"
            variants = [(level, args.threads, 1) for level in ("disable", "basic", "extended",
                                                                "all")]
            variants += [("all", 1, 1), ("all", 1, 2)] if args.threads > 1 else [("all", 1, 2)]
            for level, intra, inter in variants:
                session = make_session(onnx_path, device="cpu", threads=intra,
                                       inter_op_threads=inter, optimization=level)
                p = OnnxPredictor(onnx_path, session, meta, "", "cpu")
                rates = [best_rate(lambda p=p, s=s: p.predict(batches[s]), s,
                                   min_time=args.min_time) for s in sizes]
                mode = "parallel" if inter > 1 else "sequential"
                print(f"{level:>12} {intra:>5} {mode:>10} "
                      + " ".join(f"{r:>11.1f}" for r in rates), flush=True)


def architectures_table(args: argparse.Namespace) -> None:
    """Eager and ONNX Runtime structures/s of every architecture on one batch (docstring)."""
    import torch

    from deepergat.architectures import ARCH_DEFAULTS, architecture_name
    from deepergat.export import export_model, load
    from deepergat.nn.checkpoint import save_checkpoint
    from deepergat.nn.registry import count_parameters, make_model

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    variants = [("deepergatgnn", False), ("gatgnn", False)] + [
        (a, d) for a in ARCH_DEFAULTS if a not in ("deepergatgnn", "gatgnn") for d in (False, True)]
    if args.archs:
        unknown = set(args.archs) - set(ARCH_DEFAULTS)
        if unknown:
            raise SystemExit(f"--archs: unknown {', '.join(sorted(unknown))}; "
                             f"choose from {', '.join(ARCH_DEFAULTS)}")
        variants = [(a, d) for a, d in variants if a in args.archs]
    with tempfile.TemporaryDirectory(prefix="bench-infer-arch-") as tmp:
        work = Path(tmp)
        structures, source = perovskites(args.arch_batch, work)
        inputs = build_inputs(structures.select(np.arange(args.arch_batch)), max_z=MAX_Z).inputs
        n_atoms, k = inputs["neighbors"].shape
        print(f"structures: {source}; batch {args.arch_batch} ({n_atoms} atoms, {k} slots); "
              f"threads {args.threads}; clock {args.clock}")
        rows = []
        for arch, deeper in variants:
            torch.manual_seed(0)
            layers = ARCH_DEFAULTS[arch]["layers"][1 if deeper else 0]
            model = make_model(arch, deeper=deeper, layers=layers, target_mean=[-1.0],
                               target_std=[1.0]).eval()
            with torch.no_grad():  # a head whose raw outputs are O(1), as a trained head's
                # are (the Deeper variants' doubled identity path makes random ones ~2^layers)
                raw = model.forward_inputs({n: torch.from_numpy(v) for n, v in inputs.items()})
                size = max(1.0, float(((raw[0] - model.target_mean) / model.target_std)
                                      .abs().mean()))
                model.head.weight /= size
                model.head.bias /= size
            name = architecture_name(model.config)
            ckpt = work / f"{name}.ckpt"
            save_checkpoint(ckpt, model, targets=["heat_ref"], units=["eV"],
                            elements=list(range(1, 101)))
            export_model(ckpt, work / name, formats="onnx", n_check=256, big_batch=256)
            for device in devices:
                sync = torch.cuda.synchronize if device == "cuda" else None
                eager = load(ckpt, device=device, threads=args.threads)
                onnx = load(work / name / "model.onnx", device=device, threads=args.threads,
                            runtime="onnxruntime")
                rates = [best_rate(lambda p=p: p.predict(inputs), args.arch_batch,
                                   min_time=args.min_time, sync=sync) for p in (eager, onnx)]
                rows.append((device, name, layers, count_parameters(model), *rates))
                print(f"{device} {name}: eager {rates[0]:.0f}/s, onnxruntime {rates[1]:.0f}/s",
                      file=sys.stderr, flush=True)
        base = {r[0]: max(r[4], r[5]) for r in rows if r[1] == "DeeperGATGNN"}
        print(f"\n{'device':<6} {'architecture':<14} {'layers':>6} {'parameters':>11} "
              f"{'eager/s':>9} {'onnxruntime/s':>13} {'best vs DeeperGATGNN':>21}")
        for device, name, layers, params, r_eager, r_onnx in rows:
            rel = max(r_eager, r_onnx) / base[device]
            print(f"{device:<6} {name:<14} {layers:>6} {params:>11,} {r_eager:>9.0f} "
                  f"{r_onnx:>13.0f} {rel:>20.2f}x")


if __name__ == "__main__":
    main()
