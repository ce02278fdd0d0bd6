"""`export_model`: checkpoint → parity-checked ``model.onnx``, ``model.pt``, ``model.pt2``
(and on request ``model.aoti.pt2``).

Each file proves itself before the export reports success:

1. the checkpoint's eager model computes reference outputs on the parity cases (≥ 256 check
   structures in chunks, one batch of thousands, the size-1 edge cases);
2. each file is written under a temporary name in OUT_DIR, loaded back through `load` (ONNX
   on ONNX Runtime's CPU provider) and run on the same cases;
3. every prediction must agree with the reference by docs/design.md's rule; the figures go into the
   file's metadata document, and the final file is checked to compute bit for bit what the
   checked one did;
4. only when every requested format passed are the files renamed into place. Otherwise every
   file written by this run is removed (existing files in OUT_DIR are left alone) and a
   `DeepergatError` names the format, the figures and the first disagreements.

One export writes into a folder at a time: it holds the lock ``OUT_DIR/.deepergat-export.lock/``
(`deepergat.screening.lock.OutputLock`, the one screening uses), so a second export into the
same folder is refused with one line, and the staging files a killed export left
(``.deepergat-export-<pid>.*``, their ``.meta-tmp`` copies, ``.deepergat-save-*`` folders) are
removed by the next export.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepergat.contract import MODEL_FORMATS
from deepergat.errors import DeepergatError
from deepergat.graphs import graph_settings
from deepergat.io.store import StructureBatch

from .files import CHECKPOINT_KIND, expect_kind
from .metadata import exported_metadata, meta_tmp_path
from .parity import BIG_BATCH, CHUNK, ParityCase, ParityResult, compare, parity_cases
from .resolve import resolve_model
from .samples import edge_case_structures, parity_structures
from .shapes import example_inputs, sizes, to_tensors

__all__ = ["ALL_FORMATS", "FILE_NAMES", "FORMATS", "ExportResult", "ExportedFile", "export_model"]

#: Names of an export's staging files and folders in OUT_DIR (see `_remove_leftovers`).
STAGING_PREFIXES = (".deepergat-export-", "..deepergat-export-", ".deepergat-save-")

log = logging.getLogger(__name__)

FORMATS = tuple(MODEL_FORMATS)
#: What ``all`` means: the portable formats (``aoti`` is compiled for this machine's CPU).
ALL_FORMATS = tuple(name for name, f in MODEL_FORMATS.items() if f.in_all)
FILE_NAMES = {name: f.file for name, f in MODEL_FORMATS.items()}
#: Fewest check structures (≥ 256 real structures, docs/design.md §8).
MIN_CHECK = 256
#: Most structures read from a --check-data store.
MAX_CHECK = 4096
#: Generated check structures when no store is given.
DEFAULT_CHECK = 1024
#: Cases re-run on the final file (after its metadata is rewritten), compared bit for bit.
_FINAL_CASES = ("one-crystal", "self-loop-in-batch")


@dataclass
class ExportedFile:
    """One written file.

    Attributes:
        format: ``onnx``, ``torchscript`` or ``pt2``.
        path: where it lies.
        size: bytes.
        sha256: of the file.
        parity: its parity check.
        seconds: export + check wall time.
    """

    format: str
    path: Path
    size: int
    sha256: str
    parity: ParityResult
    seconds: float


@dataclass
class ExportResult:
    """What `export_model` did.

    Attributes:
        source: the checkpoint.
        files: the written files, in the requested order.
        check_source: where the check structures came from.
        example_sizes: {N, K, C, A} of the example batch the exporters saw.
    """

    source: Path
    files: list[ExportedFile] = field(default_factory=list)
    check_source: str = ""
    example_sizes: dict[str, int] = field(default_factory=dict)


def _parse_formats(formats: str | Sequence[str]) -> list[str]:
    items = [formats] if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for item in items:
        for f in ALL_FORMATS if item == "all" else [item]:
            if f not in FORMATS:
                raise DeepergatError(
                    f"unknown export format {f!r}; one of {', '.join(FORMATS)} or all"
                )
            if f not in out:
                out.append(f)
    if not out:
        raise DeepergatError("no export format given")
    return out


def check_structures(
    check_data: str | os.PathLike[str] | None, *, n_generated: int = DEFAULT_CHECK
) -> tuple[StructureBatch, str]:
    """The structures an export is checked on, and a description of where they came from.

    A store gives up to `MAX_CHECK` of its first structures; fewer than `MIN_CHECK` are topped
    up with generated ones (`deepergat.export.samples.parity_structures`).
    """
    if check_data is None:
        n = max(n_generated, MIN_CHECK)
        return parity_structures(n), f"{n} generated structures (deepergat.export.samples)"
    from deepergat.io.store import Store

    with Store(check_data) as store:
        m = min(len(store), MAX_CHECK)
        batch = store.read(0, m)
    if m >= MIN_CHECK:
        return batch, f"{m} structures of {check_data}"
    extra = parity_structures(MIN_CHECK - m, seed=1)
    merged = StructureBatch.from_structures(
        [batch.structure(k) for k in range(m)] + [extra.structure(k) for k in range(len(extra))]
    )
    log.warning("%s holds %d structures; topping the check up with %d generated ones",
                check_data, m, MIN_CHECK - m)
    return merged, f"{m} structures of {check_data} + {MIN_CHECK - m} generated"


def _reference(model: Any, cases: Sequence[ParityCase]) -> list[tuple[np.ndarray, ...]]:
    """Per case, the eager model's outputs (prediction, embedding[, std]) as float32 arrays."""
    import torch

    out = []
    with torch.inference_mode():
        for case in cases:
            outputs = model(*to_tensors(case.inputs))
            out.append(tuple(t.float().numpy() for t in outputs))
    return out


class Writer(Protocol):
    """What every format's writer (`write_onnx`, `write_torchscript`, `write_pt2`,
    `write_aoti`) does: export ``model`` into ``path`` with ``metadata`` embedded.

    Args:
        model: the `DeeperGATGNN` in eval mode, on the CPU.
        example: example inputs as tensors (`deepergat.export.shapes.example_inputs`: all sizes
            ≥ 2 and distinct, since exporters specialize sizes 0 and 1).
        path: the file to write.
        metadata: the metadata document, embedded in the file with the returned facts merged
            into its ``exporter`` section (the caller's dict is not modified).

    Returns:
        the exporter facts stored in the metadata (exporter name, versions, format specifics).

    Raises:
        DeepergatError: the export failed (the message says why, in one line).
    """

    def __call__(self, model: Any, example: tuple[Any, ...], path: str | os.PathLike[str],
                 metadata: dict[str, Any], /) -> dict[str, Any]: ...


def _writer(fmt: str, *, opset: int) -> tuple[Writer, Callable[..., None]]:
    """The writer of format ``fmt`` and its metadata setter (ONNX: at ``opset``)."""
    if fmt == "onnx":
        from .onnx import set_onnx_metadata, write_onnx

        return functools.partial(write_onnx, opset=opset), set_onnx_metadata
    if fmt == "torchscript":
        from .torchscript import set_torchscript_metadata, write_torchscript

        return write_torchscript, set_torchscript_metadata
    if fmt == "aoti":
        from .aoti import set_aoti_metadata, write_aoti

        return write_aoti, set_aoti_metadata
    from .pt2 import set_pt2_metadata, write_pt2

    return write_pt2, set_pt2_metadata


def export_model(
    model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    formats: str | Sequence[str] = "all",
    check_data: str | os.PathLike[str] | None = None,
    n_check: int = DEFAULT_CHECK,
    big_batch: int = BIG_BATCH,
    chunk: int = CHUNK,
    opset: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a checkpoint to parity-checked files in ``out_dir``.

    Args:
        model: a checkpoint path or a bundled model name (its checkpoint).
        out_dir: folder for ``model.onnx``, ``model.pt``, ``model.pt2`` (created).
        formats: ``"onnx"``, ``"torchscript"``, ``"pt2"``, ``"aoti"``, ``"all"`` (the first
            three), or a list of them.
        check_data: a structure store to check on (else `n_check` generated structures).
        n_check: generated check structures when no store is given (≥ 256).
        big_batch: size of the large parity batch.
        chunk: structures per parity chunk.
        opset: ONNX opset (default `deepergat.export.onnx.OPSET`).
        progress: called with a short message at each step (the CLI prints them).

    Returns:
        `ExportResult` listing the files and their parity figures.

    Raises:
        DeepergatError: bad arguments, a model that is not a checkpoint, an export or parity
            failure (then no file of this run is left behind), another export writing into
            the same folder.
    """
    from deepergat.system.lock import OutputLock, run_token

    say = progress or (lambda message: log.info("%s", message))
    fmts = _parse_formats(formats)
    source = resolve_model(model, prefer="checkpoint")
    kind = expect_kind(source)
    if kind != CHECKPOINT_KIND:
        raise DeepergatError(
            f"{source}: is a {kind} file; export starts from a checkpoint (.ckpt) or a bundled "
            "model name"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DeepergatError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)  # before any work: an unwritable folder fails now
    lock = OutputLock(out / ".deepergat-export", run_token(), label=str(out),
                      way_out="export into another folder")
    lock.acquire()
    try:
        _remove_leftovers(out)  # we own the folder's exports: any staging file here is dead
        return _export(source, out, fmts, check_data=check_data, n_check=n_check,
                       big_batch=big_batch, chunk=chunk, opset=opset, say=say)
    finally:
        lock.release()


def _remove_leftovers(out: Path) -> None:
    """Remove what a killed export left in ``out`` (the caller holds the folder's lock)."""
    try:
        names = os.listdir(out)
    except OSError:
        return
    for name in names:
        if not name.startswith(STAGING_PREFIXES):
            continue
        p = out / name
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as e:
            log.warning("cannot remove %s, left by a killed export: %s", p, e)
            continue
        log.info("removed %s, left by a killed export", p)


def _export(source: Path, out: Path, fmts: list[str], *,
            check_data: str | os.PathLike[str] | None, n_check: int, big_batch: int,
            chunk: int, opset: int | None, say: Callable[[str], None]) -> ExportResult:
    """`export_model` once the folder is ours."""
    from deepergat.nn.checkpoint import load_checkpoint
    from deepergat.nn.checkpoint import metadata as checkpoint_metadata
    from deepergat.system.files import file_sha256

    from .onnx import OPSET
    from .predictor import load

    ckpt = load_checkpoint(source)
    reference_model = ckpt.model.eval()
    source_meta = checkpoint_metadata(ckpt.data)
    source_meta["source_sha256"] = file_sha256(source)
    std = [float(t["std"]) for t in source_meta["targets"]]
    names = [str(t["name"]) for t in source_meta["targets"]]
    graph = graph_settings(source_meta["graph"])
    cutoff, max_neighbors = graph["cutoff"], graph["max_neighbors"]

    structures, check_source = check_structures(check_data, n_generated=n_check)
    say(f"parity cases from {check_source}")
    cases = parity_cases(structures, cutoff=cutoff, max_neighbors=max_neighbors,
                         graph=graph["construction"], edge_cases=edge_case_structures(cutoff),
                         big_batch=big_batch, chunk=chunk)
    say(f"eager reference on {sum(len(c.ids) for c in cases)} predictions in {len(cases)} batches")
    reference = _reference(reference_model, cases)

    export_net = copy.deepcopy(reference_model).eval()
    if hasattr(export_net, "set_agat_form"):
        export_net.set_agat_form("rewritten")
    example_np = example_inputs(cutoff, max_neighbors, graph["construction"])
    example = to_tensors(example_np)
    result = ExportResult(source=source, check_source=check_source,
                          example_sizes=sizes(example_np))

    staged: dict[str, Path] = {}
    failures: list[str] = []
    try:
        for fmt in fmts:
            t0 = time.perf_counter()
            tmp = out / f".deepergat-export-{os.getpid()}.{FILE_NAMES[fmt]}"
            staged[fmt] = tmp
            write, set_metadata = _writer(fmt, opset=opset or OPSET)
            facts0 = {"agat_form": "rewritten", "example_sizes": result.example_sizes}
            meta = exported_metadata(source_meta, kind=fmt, exporter=facts0)
            say(f"{fmt}: exporting")
            facts = write(export_net, example, tmp, meta)
            meta["exporter"] = {**meta["exporter"], **facts}
            say(f"{fmt}: parity check")
            # the file this run just wrote, on ONNX Runtime for .onnx (what CUDA and ensembles
            # run; OpenVINO's agreement is tested on the bundled and test models)
            predictor = load(tmp, device="cpu", trust=True, runtime="onnxruntime")
            candidate = [predictor.predict(case.inputs) for case in cases]
            where = ", ".join(getattr(predictor, "providers", [predictor.device]))
            parity = compare(cases, reference, candidate, std, target_names=names,
                             backend=f"{predictor.backend} ({where})")
            if not parity.passed:
                failures.append(_failure_message(fmt, parity))
                continue
            meta["parity"] = parity.to_dict()
            set_metadata(tmp, meta)
            _check_final(tmp, cases, candidate)
            result.files.append(ExportedFile(
                format=fmt, path=out / FILE_NAMES[fmt], size=tmp.stat().st_size,
                sha256=file_sha256(tmp), parity=parity, seconds=time.perf_counter() - t0,
            ))
            say(f"{fmt}: parity ok ({parity.summary()})")
        if failures:
            raise DeepergatError(
                f"export of {source} failed its parity check; no files written to {out}: "
                + " | ".join(failures)
            )
        for fmt in fmts:
            os.replace(staged[fmt], out / FILE_NAMES[fmt])
        staged.clear()
    finally:
        for tmp in staged.values():
            for p in (tmp, meta_tmp_path(tmp)):
                p.unlink(missing_ok=True)
    return result


def _failure_message(fmt: str, parity: ParityResult) -> str:
    first = parity.failures[0] if parity.failures else {}
    if "error" in first:
        detail = f"{first['case']}: {first['error']}"
    elif first:
        detail = (f"first disagreement: {first['id']} ({first['case']}), {first['target']} "
                  f"{first['reference']:.9g} vs {first['candidate']:.9g}, allowed "
                  f"±{first['allowed']:.3g}")
    else:
        detail = "no details"
    return f"{fmt}: {parity.summary()}; {detail}"


def _check_final(path: Path, cases: Sequence[ParityCase], candidate: Sequence[Any]) -> None:
    """The final file (metadata rewritten) computes bit for bit what the checked one did."""
    from .predictor import load

    predictor = load(path, device="cpu", trust=True, runtime="onnxruntime")  # as checked
    for k, case in enumerate(cases):
        if case.label not in _FINAL_CASES:
            continue
        again = predictor.predict(case.inputs)
        same = all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
            for a, b in zip(again, candidate[k], strict=True)
        )
        if not same:
            raise DeepergatError(f"{path}: rewriting the metadata changed the model's outputs")
