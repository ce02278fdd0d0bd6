"""Run the paper's reference code (usccolumbia/deeperGATGNN, a MatDeepLearn port) side by side
with deepergat: its data layout, a quickly trained model, its cold ``Predict`` and its epoch times.

Get the reference outside this repository (its code is not copied here)::

    git clone https://github.com/usccolumbia/deeperGATGNN /work/ref/deeperGATGNN
    # or, where only the fetch tool reaches GitHub (its bare git dir under /work/.mirror):
    #   git --git-dir=/work/.mirror/usccolumbia+deeperGATGNN/repo archive HEAD main.py config.yml \\
    #       matdeeplearn | tar -x -C /work/ref/deeperGATGNN

It needs ase, scipy, pyyaml and torch-geometric (``ray`` only for its Hyperparameter mode).

The reference is run **unmodified**: its checkout is never edited. ``exec`` starts its
``main.py`` in this process after four run-time fixes for torch 2.13 + PyG 2.8.1 (idempotent,
they touch nothing on disk):

1. ``torch_scatter``: the reference imports ``scatter_mean, scatter_add, scatter_max, scatter``
   from it (only MEGNet calls them; DEEP_GATGNN only imports them). A pure-torch stand-in of our
   own (``_scatter_module``) is put in ``sys.modules`` *after* ``torch_geometric`` is imported,
   so PyG's own probe for torch-scatter has failed and PyG keeps its internal scatter.
2. ``ray``: ``main.py`` imports ``ray`` and ``ray.tune`` at the top; when it is missing a stub
   stands in that fails only if used (the Hyperparameter mode).
3. ``torch_geometric.data.DataLoader`` (deprecated) is pointed at ``torch_geometric.loader``'s.
4. ``torch.load`` defaults to ``weights_only=False`` in that process: the reference pickles its
   whole model and its processed dataset (its own files, written by the same run or the
   training run before).

Command line::

    python benchmarks/reference_harness.py check --reference /work/ref/deeperGATGNN
    python benchmarks/reference_harness.py folder -n 200 -o /tmp/cifs   # CIFs + targets.csv
    python benchmarks/reference_harness.py train --reference REF --data /tmp/cifs --layers 10 \\
        --epochs 2 --model-path /tmp/ref10.pth --workdir /tmp/refrun
    python benchmarks/reference_harness.py predict --reference REF --data /tmp/cifs \\
        --model-path /tmp/ref10.pth --workdir /tmp/refrun          # cold Predict, wall seconds
    python benchmarks/reference_harness.py exec --reference REF -- --config_path REF/config.yml ...

``bench_from_files.py`` (issue 27) and ``bench_train.py --reference`` use the functions.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

log = logging.getLogger("reference_harness")

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
#: perov5_dev.csv in $DEEPERGAT_DATA, else ../shared/data beside the repository.
DEFAULT_CSV = Path(os.environ.get("DEEPERGAT_DATA", PROJECT.parent / "shared" / "data")
                   ) / "perov5_dev.csv"
REFERENCE_URL = "https://github.com/usccolumbia/deeperGATGNN"
#: The reference's config entry for DeeperGATGNN (20 AGAT layers as it ships; --gc_count sets it).
REFERENCE_MODEL = "DEEP_GATGNN_demo"
#: Environment variable naming a JSON-lines file the ``exec`` process appends epoch timings to.
TIMINGS_ENV = "REFERENCE_HARNESS_TIMINGS"


# ---------------------------------------------------------------------------------------------
# The checkout and the run-time fixes
# ---------------------------------------------------------------------------------------------

def check_reference(reference: str | os.PathLike[str]) -> Path:
    """The reference checkout's root; exits with a line saying how to get it when it is not
    one."""
    root = Path(reference).expanduser().resolve()
    needed = [root / "main.py", root / "config.yml",
              root / "matdeeplearn" / "models" / "deep_gatgnn.py"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise SystemExit(f"{root} is not a deeperGATGNN checkout (missing {', '.join(missing)}); "
                         f"git clone {REFERENCE_URL} {root}")
    return root


def _scatter_module() -> types.ModuleType:
    """A pure-torch ``torch_scatter`` with the four names the reference imports."""
    def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
        dim = dim % src.dim()
        if index.dim() == 1:  # broadcast a 1-D index along ``dim``, as torch_scatter does
            index = index.view([-1 if d == dim else 1 for d in range(src.dim())])
        index = index.expand_as(src)
        if dim_size is None:
            dim_size = int(index.max()) + 1 if index.numel() else 0
        shape = list(src.shape)
        shape[dim] = dim_size
        how = {"add": "sum", "max": "amax", "min": "amin"}.get(reduce, reduce)
        base = src.new_zeros(shape) if out is None else out
        return base.scatter_reduce(dim, index, src, reduce=how, include_self=out is not None)

    mod = types.ModuleType("torch_scatter")
    mod.scatter = scatter
    mod.scatter_add = lambda src, index, dim=-1, out=None, dim_size=None: scatter(
        src, index, dim, out, dim_size, "sum")
    mod.scatter_mean = lambda src, index, dim=-1, out=None, dim_size=None: scatter(
        src, index, dim, out, dim_size, "mean")

    def scatter_max(src, index, dim=-1, out=None, dim_size=None):
        # the reference never calls it; torch_scatter also returns the argmax, not given here
        return scatter(src, index, dim, out, dim_size, "max"), None

    mod.scatter_max = scatter_max
    mod.__harness_stand_in__ = True
    return mod


def _ray_stub() -> tuple[types.ModuleType, types.ModuleType]:
    def missing(name: str) -> None:
        raise ImportError(f"ray.tune.{name}: ray is not installed (only the reference's "
                          "Hyperparameter mode needs it)")

    ray = types.ModuleType("ray")
    tune = types.ModuleType("ray.tune")
    tune.__getattr__ = missing  # type: ignore[attr-defined]
    ray.tune = tune  # type: ignore[attr-defined]
    ray.init = lambda *a, **k: missing("init")  # type: ignore[attr-defined]
    return ray, tune


def apply_runtime_fixes(reference: Path) -> None:
    """The four fixes of the module docstring, in this process; idempotent."""
    import torch
    import torch_geometric  # first: PyG's torch_scatter probe must fail
    import torch_geometric.data
    import torch_geometric.loader
    import torch_geometric.typing

    if "torch_scatter" not in sys.modules:
        if torch_geometric.typing.WITH_TORCH_SCATTER:
            log.info("torch-scatter is installed: the reference uses it")
        else:
            sys.modules["torch_scatter"] = _scatter_module()
    try:
        import ray
    except ImportError:
        ray, tune = _ray_stub()
        sys.modules["ray"], sys.modules["ray.tune"] = ray, tune
    torch_geometric.data.DataLoader = torch_geometric.loader.DataLoader
    if not getattr(torch.load, "__harness_fix__", False):
        original = torch.load

        def load(*args, **kwargs):
            kwargs.setdefault("weights_only", False)
            return original(*args, **kwargs)

        load.__harness_fix__ = True  # type: ignore[attr-defined]
        torch.load = load
    if str(reference) not in sys.path:
        sys.path.insert(0, str(reference))


def _time_epochs(path: str) -> None:
    """Append the wall seconds of each call of the reference's train step (one pass over its
    training split: batching, forward, backward, optimizer) to ``path`` as JSON lines."""
    import matdeeplearn.training.training  # noqa: F401

    # the module itself: the package's attribute ``training`` is the package (its star import)
    tr = sys.modules["matdeeplearn.training.training"]
    step = tr.train

    def timed_train(*args, **kwargs):
        t0 = time.perf_counter()
        out = step(*args, **kwargs)
        with open(path, "a") as f:
            f.write(json.dumps({"train_pass_s": time.perf_counter() - t0}) + "\n")
        return out

    tr.train = timed_train


def exec_reference(reference: Path, argv: list[str]) -> None:
    """Run the reference's ``main.py`` with ``argv`` in this process, after the fixes."""
    import runpy

    apply_runtime_fixes(reference)
    if os.environ.get(TIMINGS_ENV):
        _time_epochs(os.environ[TIMINGS_ENV])
    sys.argv = [str(reference / "main.py"), *argv]
    runpy.run_path(str(reference / "main.py"), run_name="__main__")


def reference_command(reference: Path, args: list[str]) -> list[str]:
    """The command that runs the reference's main.py with ``args`` (through ``exec``)."""
    return [sys.executable, str(Path(__file__).resolve()), "exec", "--reference",
            str(reference), "--", "--config_path", str(reference / "config.yml"), *args]


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def write_cif_folder(out: Path, n: int | None = None, csv_path: Path = DEFAULT_CSV,
                     target: str = "heat_ref", id_column: str = "material_id",
                     cif_column: str = "cif") -> list[str]:
    """The first ``n`` rows (all: None) of ``csv_path`` as ``<id>.cif`` files and a
    ``targets.csv`` without header (``id,value``): the reference's layout, which ``deepergat
    pack`` reads as a MatDeepLearn folder. Returns the ids in order."""
    csv.field_size_limit(1 << 30)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.cif"):
        old.unlink()
    shutil.rmtree(out / "processed", ignore_errors=True)
    ids: list[str] = []
    with open(csv_path, newline="") as f, open(out / "targets.csv", "w", newline="") as t:
        writer = csv.writer(t)
        for row in csv.DictReader(f):
            if n is not None and len(ids) >= n:
                break
            sid = row[id_column]
            (out / f"{sid}.cif").write_text(row[cif_column])
            writer.writerow([sid, row[target]])
            ids.append(sid)
    log.info("%d CIFs and targets.csv in %s", len(ids), out)
    return ids


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------

def run_timed(cmd: list[str], cwd: Path, env: dict[str, str] | None, logfile: Path) -> float:
    """Wall seconds of ``cmd``; its output goes to ``logfile``; a failure exits with its tail."""
    cwd.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as out:
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
    if rc != 0:
        tail = logfile.read_text().splitlines()[-15:]
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n" + "\n".join(tail))
    return seconds


def split_ratios(n: int, train: float = 0.9) -> tuple[float, float, float]:
    """The reference's train/val/test ratios for ``int(n * train)`` training structures, one
    test structure and the rest but one for validation (3,408 / 377 / 1 of 3,787). A test
    split is needed: with none, the reference crashes after training (``test_error.cpu()``
    on a float NaN). Each ratio is nudged up by 0.3 / n so that its ``int(n * ratio)`` gives
    the count."""
    n_train = int(n * train)
    counts = (n_train, n - n_train - 2, 1)
    return tuple((k + 0.3) / n for k in counts)  # type: ignore[return-value]


def train_reference(reference: Path, data: Path, model_path: Path, workdir: Path, *,
                    layers: int = 10, epochs: int = 1, seed: int = 1,
                    ratios: tuple[float, float, float] = (0.8, 0.05, 0.15),
                    env: dict[str, str] | None = None,
                    timings: Path | None = None) -> float:
    """Train the reference's DEEP_GATGNN_demo with ``layers`` AGAT layers (its ``--gc_count``)
    for ``epochs`` and save its model to ``model_path``; wall seconds of the whole command.
    With ``timings``, each epoch's train pass is appended there (JSON lines)."""
    args = ["--run_mode", "Training", "--model", REFERENCE_MODEL, "--gc_count", str(layers),
            "--epochs", str(epochs), "--seed", str(seed), "--data_path", str(data),
            "--format", "cif", "--model_path", str(model_path), "--save_model", "True",
            "--write_output", "False", "--verbosity", "1", "--job_name", "train",
            "--train_ratio", str(ratios[0]), "--val_ratio", str(ratios[1]),
            "--test_ratio", str(ratios[2])]
    env = dict(os.environ if env is None else env)
    if timings is not None:
        env[TIMINGS_ENV] = str(timings)
    return run_timed(reference_command(reference, args), workdir, env, workdir / "train.log")


def predict_reference(reference: Path, data: Path, model_path: Path, workdir: Path, *,
                      env: dict[str, str] | None = None, cold: bool = True,
                      pin: list[str] | None = None) -> float:
    """Wall seconds of the reference's ``Predict`` on ``data`` as one command (start-up, reading
    the CIFs and building its graphs, the model, writing its CSV). ``cold``: its processed/
    cache is removed first, so the graphs are built. ``pin``: a prefix such as ``taskset -c
    0,1``."""
    if cold:
        shutil.rmtree(data / "processed", ignore_errors=True)
    out = workdir / "predict_predicted_outputs.csv"
    out.unlink(missing_ok=True)
    args = ["--run_mode", "Predict", "--model_path", str(model_path), "--data_path", str(data),
            "--format", "cif", "--write_output", "True", "--job_name", "predict"]
    cmd = (pin or []) + reference_command(reference, args)
    return run_timed(cmd, workdir, env, workdir / "predict.log")


def reference_model_info(reference: Path, model_path: Path) -> dict[str, int]:
    """AGAT layers and parameters of a model file the reference saved (read by ``model-info``
    in a subprocess, which applies the fixes)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "model-info", "--reference",
           str(reference), "--model-path", str(model_path)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def predicted_rows(workdir: Path) -> int:
    """Rows (without header) of the last ``predict_reference``'s CSV."""
    with open(workdir / "predict_predicted_outputs.csv") as f:
        return max(sum(1 for _ in f) - 1, 0)


def read_epoch_timings(path: Path) -> list[float]:
    """Train-pass seconds per epoch recorded by a ``train_reference(timings=path)`` run."""
    if not path.exists():
        return []
    return [json.loads(line)["train_pass_s"] for line in path.read_text().splitlines() if line]


def printed_epoch_times(log_path: Path) -> list[float]:
    """The reference's own "Time per epoch (s)" lines (train pass, validation and its
    checkpoint save) from a training log written with ``--verbosity 1``."""
    return [float(line.rsplit(":", 1)[1]) for line in log_path.read_text().splitlines()
            if "Time per epoch (s):" in line]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exec"]:  # pass everything after "--" to the reference untouched
        ap = argparse.ArgumentParser(prog="reference_harness.py exec")
        ap.add_argument("--reference", required=True)
        split = argv.index("--") if "--" in argv else len(argv)
        opts = ap.parse_args(argv[1:split])
        exec_reference(check_reference(opts.reference), argv[split + 1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("exec", help="run the reference's main.py: exec --reference REF -- ARGS")
    p = sub.add_parser("check", help="check a checkout and that it imports with the fixes")
    p.add_argument("--reference", required=True)
    p = sub.add_parser("folder", help="write CIFs + targets.csv from the perov5_dev CSV")
    p.add_argument("-n", type=int, default=None)
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p = sub.add_parser("model-info", help="AGAT layers and parameters of a saved model (JSON)")
    p.add_argument("--reference", required=True)
    p.add_argument("--model-path", required=True)
    for name in ("train", "predict"):
        p = sub.add_parser(name)
        p.add_argument("--reference", required=True)
        p.add_argument("--data", required=True, help="folder of CIFs + targets.csv")
        p.add_argument("--model-path", required=True)
        p.add_argument("--workdir", required=True)
        if name == "train":
            p.add_argument("--layers", type=int, default=10)
            p.add_argument("--epochs", type=int, default=1)
    opts = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if opts.cmd == "folder":
        write_cif_folder(Path(opts.out), opts.n, Path(opts.csv))
        return
    ref = check_reference(opts.reference)
    if opts.cmd == "check":
        apply_runtime_fixes(ref)
        import matdeeplearn.models
        import torch_geometric.typing

        log.info("%s imports with the fixes (DEEP_GATGNN: %s); PyG uses torch-scatter: %s",
                 ref, hasattr(matdeeplearn.models, "DEEP_GATGNN"),
                 torch_geometric.typing.WITH_TORCH_SCATTER)
        return
    if opts.cmd == "model-info":
        apply_runtime_fixes(ref)
        import torch

        model = torch.load(opts.model_path, map_location="cpu")["full_model"]
        print(json.dumps({"layers": len(model.conv_list),
                          "parameters": sum(p.numel() for p in model.parameters())}))
        return
    workdir = Path(opts.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if opts.cmd == "train":
        s = train_reference(ref, Path(opts.data).resolve(), Path(opts.model_path).resolve(),
                            workdir, layers=opts.layers, epochs=opts.epochs)
        log.info("trained in %.1f s: %s", s, opts.model_path)
    else:
        s = predict_reference(ref, Path(opts.data).resolve(), Path(opts.model_path).resolve(),
                              workdir)
        log.info("cold Predict: %.2f s, %d rows in %s", s, predicted_rows(workdir),
                 workdir / "predict_predicted_outputs.csv")


if __name__ == "__main__":
    main()
