"""Checkpoint → ONNX (``model.onnx``).

Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export`` then the onnxscript torchlib).
The legacy TorchScript-based exporter was tried and rejected: it folds a ``full_like`` of the
masked softmax into a constant of the example's shape, so a file traced on 35 atoms fails on
any other N; it also emits twice the nodes (339 Constant, 84 Identity, 30 Mod for 1179 nodes
against 646 at 10 layers). The dynamo graph keeps every size symbolic (N, K, C, A).

One translation is our own: ``aten.softplus`` becomes ``Max(x, Log(1 + Exp(Min(x, 20))))``
instead of torchlib's ``Where(x > 20, x, Softplus(x))``. Equal to float32 rounding (for
x > 20 both give x; below, log(1 + eˣ) ≥ x), and 4× faster on ONNX Runtime's CPU provider,
whose Softplus kernel is scalar (≈ 19 ns per element against ≈ 4.5 ns for the four vectorized
ops); softplus on the [N, K, H·D] edge tensors is most of the model's time. All five ops run on
the CUDA provider.

The file: opset `OPSET` (≥ 18), IR version lowered to what the installed onnxruntime reads
(`deepergat.export.runtime.max_ir_version`), ``onnx.checker.check_model(full_check=True)``,
only op types of `CUDA_OP_TYPES`, the metadata document in ``metadata_props["deepergat"]``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError
from deepergat.system.files import atomic_path

from .metadata import METADATA_KEY, encode_metadata, with_exporter
from .metadata import meta_tmp_path as _meta_tmp
from .shapes import INPUT_NAMES, OUTPUT_NAMES, dynamic_shapes

__all__ = [
    "CUDA_OP_TYPES",
    "OPSET",
    "check_op_types",
    "set_onnx_metadata",
    "write_onnx",
]

log = logging.getLogger(__name__)

#: Default opset (ONNX Runtime's CUDA provider implements every op of the graph at 18).
OPSET = 18
#: The oldest opset accepted (the reductions take axes as inputs from 18 on).
MIN_OPSET = 18
#: Op types (default domain) the model may use: each has a kernel in ONNX Runtime's CUDA
#: execution provider at opset 18 (onnxruntime/core/providers/cuda/cuda_execution_provider.cc).
#: Scatter ops with a reduction (ScatterElements/ScatterND ``reduction=add``) are deliberately
#: absent: their CUDA kernels use atomics (non-deterministic) and the padded layout needs none.
#: TopK (opset 11 on, onnxruntime/core/providers/cuda/math/topk.cc) serves an ensemble's
#: local error term.
CUDA_OP_TYPES = frozenset({
    "Abs", "Add", "And", "ArgMax", "BatchNormalization", "Cast", "CastLike", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Cos", "Div", "Equal", "Erf", "Exp", "Expand", "Flatten",
    "Gather", "GatherElements", "GatherND", "Gemm", "Greater", "GreaterOrEqual", "Identity",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "MatMul", "Max", "Min", "Mul", "Neg", "Not", "Or",
    "Pow", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu",
    "Reshape", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "Split", "Sqrt", "Squeeze",
    "Sub", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})
#: Never allowed, whatever their attributes: a reduction scatter uses atomics.
_SCATTER_OPS = frozenset({"ScatterElements", "ScatterND", "Scatter"})


def _softplus(self: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    """``aten.softplus`` → Max(x, Log(1 + Exp(Min(x, threshold)))) (beta = 1).

    For x > threshold both give x (torch returns x; log(1 + e^threshold) < x there). For
    x ≤ threshold it is log(1 + eˣ), which is ≥ x, so the Max changes nothing but rounding.
    beta ≠ 1 keeps torchlib's form.
    """
    from onnxscript import opset18 as op

    if beta != 1.0:
        scaled = op.Mul(self, op.CastLike(beta, self))
        soft = op.Div(op.Softplus(scaled), op.CastLike(beta, self))
        return op.Where(op.Greater(scaled, op.CastLike(threshold, self)), self, soft)
    limit = op.CastLike(threshold, self)
    one = op.CastLike(1.0, self)
    return op.Max(self, op.Log(op.Add(op.Exp(op.Min(self, limit)), one)))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's stdout progress lines, warnings and torch logging."""
    loggers = [logging.getLogger(n) for n in (
        "torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir",
        "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    out = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if out.getvalue().strip():
            log.debug("exporter output:\n%s", out.getvalue().strip())


def check_op_types(model: Any, allowed: Iterable[str] = CUDA_OP_TYPES) -> None:
    """Refuse a graph with an op type outside ``allowed`` or a scatter op.

    Args:
        model: onnx.ModelProto.
        allowed: op types of the default domain that may appear.

    Raises:
        DeepergatError: naming the offending op types.
    """
    allowed = frozenset(allowed)
    bad: set[str] = set()
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            bad.add(f"{node.domain}::{node.op_type}")
        elif node.op_type in _SCATTER_OPS or node.op_type not in allowed:
            bad.add(node.op_type)
    if bad:
        raise DeepergatError(
            f"the ONNX graph uses op types outside the CUDA-provider allow-list: "
            f"{', '.join(sorted(bad))}"
        )


def _all_nodes(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def write_onnx(
    model: Any,
    example: tuple[Any, ...],
    path: str | os.PathLike[str],
    metadata: dict[str, Any],
    *,
    opset: int = OPSET,
) -> dict[str, Any]:
    """Export ``model`` to an ONNX file.

    Args: see `deepergat.export.exporter.Writer`; opset: ONNX opset (≥ 18).

    Returns:
        the exporter facts stored in the metadata: torch and onnx versions, opset, IR version,
        exporter name, op-type counts.

    Raises:
        DeepergatError: an opset below 18, a failed export, checker or op-type check.
    """
    import onnx
    import torch

    from .runtime import max_ir_version

    if opset < MIN_OPSET:
        raise DeepergatError(f"ONNX opset {opset} is too old; use {MIN_OPSET} or newer")
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                dynamic_shapes=dynamic_shapes(),
                input_names=list(INPUT_NAMES),
                output_names=list(metadata.get("outputs", OUTPUT_NAMES)),
                opset_version=opset,
                optimize=True,
                verbose=False,
                custom_translation_table={torch.ops.aten.softplus.default: _softplus},
            )
    except Exception as e:
        raise DeepergatError(f"ONNX export failed: {' '.join(str(e).split())[:500]}") from e
    proto = program.model_proto
    written_ir = int(proto.ir_version)
    proto.ir_version = min(written_ir, max_ir_version())
    from deepergat._version import __version__

    proto.producer_name = "deepergat"
    proto.producer_version = __version__
    proto.doc_string = "DeeperGATGNN crystal property predictor (deepergat export)"
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    facts = {
        "exporter": "torch.onnx.export(dynamo=True)",
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "opset": opset,
        "ir_version": int(proto.ir_version),
        "nodes": len(proto.graph.node),
        "op_types": dict(sorted(counts.items())),
    }
    meta = with_exporter(metadata, facts)
    _set_props(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise DeepergatError(f"the exported ONNX graph fails the ONNX checker: {e}") from None
    check_op_types(proto)
    onnx.save_model(proto, os.fspath(path))
    log.info("wrote %s (%d nodes, opset %d, IR %d; exporter wrote IR %d)", path,
             facts["nodes"], opset, proto.ir_version, written_ir)
    return facts


def _set_props(proto: Any, meta: dict[str, Any]) -> None:
    keep = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = encode_metadata(meta)


def set_onnx_metadata(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Replace the metadata document of an ONNX file (the graph is untouched)."""
    import onnx

    proto = onnx.load_model(os.fspath(path))
    _set_props(proto, meta)
    with atomic_path(path, tmp=_meta_tmp(Path(path))) as tmp:
        onnx.save_model(proto, os.fspath(tmp))
