"""``deepergat info`` for model files: checkpoints and exported files print their metadata.

`deepergat.info` dispatches here for the kinds of `deepergat.export.files.SUFFIX_KINDS`.
Exported files are described without torch or onnx; a checkpoint imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepergat.elements import symbol
from deepergat.metadata import ModelMetadata
from deepergat.system.files import file_sha256

from .files import CHECKPOINT_KIND, read_metadata, sniff
from .metadata import KINDS

__all__ = ["describe_model", "format_model"]

_TITLES = {
    KINDS["onnx"]: "deepergat ONNX model",
    KINDS["torchscript"]: "deepergat TorchScript model",
    KINDS["pt2"]: "deepergat torch.export program",
    KINDS["aoti"]: "deepergat AOTInductor package",
    CHECKPOINT_KIND: "deepergat checkpoint",
}


def describe_model(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"format": <kind>, "size", "sha256", "metadata": <the metadata document>}`` (the
    document as the file carries it: `deepergat.metadata.ModelMetadata.to_dict`).

    Raises:
        DeepergatError: damaged file or no deepergat metadata.
    """
    p = Path(path)
    kind = sniff(p)
    meta = read_metadata(p, kind=kind)
    return {"format": kind, "size": p.stat().st_size, "sha256": file_sha256(p), "metadata": meta}


def _g(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_model(info: dict[str, Any], path: str) -> list[str]:
    """Lines of text for a `describe_model` description.

    Raises:
        DeepergatError: metadata that `ModelMetadata.from_dict` refuses.
    """
    meta = ModelMetadata.from_dict(info["metadata"], where=path)
    kind = info["format"]
    title = _TITLES.get(kind, kind)
    fmt = (f"exported-file format {meta.format}" if kind != CHECKPOINT_KIND
           else f"checkpoint format {meta.format}")
    lines = [f"{path}: {title} ({fmt}, {info['size'] / 1e6:.2f} MB)"]
    model = meta.model
    members = f", {model['members']} members" if meta.is_ensemble else ""
    lines.append(f"  architecture     {meta.architecture_name}, {model.get('layers', '?')} "
                 f"layers{members}")
    for t in meta.targets:
        units = f" [{t.units}]" if t.units else ""
        lines.append(f"  target           {t.name}{units}: training mean {t.mean:.6g}, "
                     f"std {t.std:.6g}")
    g = meta.graph
    lines.append(f"  graph            {g.construction}, cutoff {g.cutoff:g} Å, "
                 f"max_neighbors {g.max_neighbors}")
    calibration = meta.calibration
    if calibration is not None:
        scales = ", ".join(f"{v:.4g}" for v in calibration.std_scale)
        n = calibration.n if calibration.n is not None else "?"
        lines.append(f"  ensemble         {model.get('members', '?')} members; std calibrated "
                     f"×{scales} on {n} structures ({calibration.source or '?'})")
        local = model.get("local_error")
        weights = calibration.extra.get("local_weight")
        if isinstance(local, dict) and isinstance(weights, list):
            lines.append(f"                   local error term: out-of-fold errors of "
                         f"{local.get('references', '?')} reference structures, weight "
                         f"{', '.join(f'{w:.4g}' for w in weights)} (docs/design.md §6)")
        for name, m in (calibration.metrics or {}).items():
            lines.append(f"                   {name}: |error| ≤ 2σ for "
                         f"{m.get('coverage_2sigma', float('nan')):.3f}, ≤ σ for "
                         f"{m.get('coverage_1sigma', float('nan')):.3f}, Spearman(σ, |error|) "
                         f"{m.get('spearman_std_abs_error') or float('nan'):.3f}")
    lines.append("  model            " + ", ".join(f"{k} {v}" for k, v in model.items()))
    lines.append(f"  elements ({len(meta.elements)})    "
                 + " ".join(symbol(int(z)) for z in meta.elements))
    if meta.source_sha256:
        label = "source checkpoint" if kind != CHECKPOINT_KIND else "sha256          "
        lines.append(f"  {label} {meta.source_sha256}")
    if meta.store_digest:
        lines.append(f"  training store   {meta.store_digest}")
    if meta.package_version:
        lines.append(f"  deepergat        {meta.package_version}")
    exporter = meta.exporter or {}
    if exporter:
        parts = [str(exporter.get("exporter", "?"))]
        parts += [f"{key.replace('_', ' ')} {exporter[key]}"
                  for key in ("opset", "ir_version", "torch", "nodes") if key in exporter]
        compiled = exporter.get("compiled_for")
        if compiled:
            parts.append(f"compiled for {compiled.get('device', '?')} "
                         f"{compiled.get('cpu_isa') or compiled.get('machine', '')}".rstrip())
        lines.append("  exporter         " + ", ".join(parts))
    parity = meta.parity
    if parity is not None:
        diffs = ", ".join(f"{_g(d, '.3g')}{' ' + u if u else ''}"
                          for d, u in zip(parity.max_abs_diff, meta.units, strict=False))
        allowed = ", ".join(_g(a, ".3g") for a in parity.max_allowed)
        state = "passed" if parity.passed else "FAILED"
        lines.append(f"  parity           {state}: {parity.n_structures} structures, "
                     f"{parity.batches} batches, max |Δ| {diffs} (allowed {allowed}), worst "
                     f"ratio {_g(parity.worst_ratio, '.3g')}, on {parity.backend or '?'}")
    if kind != CHECKPOINT_KIND:
        lines.append(f"  sha256           {info['sha256']}")
    return lines
