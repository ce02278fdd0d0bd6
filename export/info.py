"""``deepergat info`` for model files: checkpoints and exported files print their metadata.

`deepergat.info` dispatches here for the kinds of `deepergat.export.files.SUFFIX_KINDS`.
Exported files are described without torch or onnx; a checkpoint imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deepergat.architectures import architecture_name
from deepergat.files import file_sha256
from deepergat.graphs import graph_settings

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
    """``{"format": <kind>, "size", "sha256", "metadata": <the metadata document>}``.

    Raises:
        DeepergatError: damaged file or no deepergat metadata.
    """
    p = Path(path)
    kind = sniff(p)
    meta = read_metadata(p, kind=kind)
    return {"format": kind, "size": p.stat().st_size, "sha256": file_sha256(p), "metadata": meta}


def _short(values: list[Any], n: int = 30) -> str:
    text = " ".join(str(v) for v in values[:n])
    return text + (f" … ({len(values)} in all)" if len(values) > n else "")


def format_model(info: dict[str, Any], path: str) -> list[str]:
    """Lines of text for a `describe_model` description."""
    meta = info["metadata"]
    kind = info["format"]
    title = _TITLES.get(kind, kind)
    fmt = (f"exported-file format {meta.get('format')}" if kind != CHECKPOINT_KIND
           else f"checkpoint format {meta.get('format')}")
    lines = [f"{path}: {title} ({fmt}, {info['size'] / 1e6:.2f} MB)"]
    model_args = meta.get("model", {})
    name = meta.get("architecture") or architecture_name(model_args)  # older files: derived
    members = f", {model_args['members']} members" if "members" in model_args else ""
    lines.append(f"  architecture     {name}, {model_args.get('layers', '?')} layers{members}")
    for t in meta["targets"]:
        units = f" [{t['units']}]" if t.get("units") else ""
        lines.append(f"  target           {t['name']}{units}: training mean {t['mean']:.6g}, "
                     f"std {t['std']:.6g}")
    g = graph_settings(meta["graph"])
    lines.append(f"  graph            {g['construction']}, cutoff {g['cutoff']:g} Å, "
                 f"max_neighbors {g['max_neighbors']}")
    calibration = meta.get("calibration")
    if calibration:
        members = meta.get("model", {}).get("members", "?")
        scales = ", ".join(f"{v:.4g}" for v in calibration.get("std_scale", []))
        lines.append(f"  ensemble         {members} members; std calibrated ×{scales} on "
                     f"{calibration.get('n', '?')} structures ({calibration.get('source', '?')})")
        for name, m in (calibration.get("metrics") or {}).items():
            lines.append(f"                   {name}: |error| ≤ 2σ for "
                         f"{m.get('coverage_2sigma', float('nan')):.3f}, ≤ σ for "
                         f"{m.get('coverage_1sigma', float('nan')):.3f}, Spearman(σ, |error|) "
                         f"{m.get('spearman_std_abs_error') or float('nan'):.3f}")
    model = meta.get("model", {})
    lines.append("  model            " + ", ".join(f"{k} {v}" for k, v in model.items()))
    elements = meta.get("elements", [])
    lines.append(f"  elements ({len(elements)})    Z = {_short(elements)}")
    if meta.get("source_sha256"):
        label = "source checkpoint" if kind != CHECKPOINT_KIND else "sha256          "
        lines.append(f"  {label} {meta['source_sha256']}")
    if meta.get("store_digest"):
        lines.append(f"  training store   {meta['store_digest']}")
    if meta.get("package_version"):
        lines.append(f"  deepergat        {meta['package_version']}")
    exporter = meta.get("exporter") or {}
    if exporter:
        parts = [str(exporter.get("exporter", "?"))]
        parts += [f"{key.replace('_', ' ')} {exporter[key]}"
                  for key in ("opset", "ir_version", "torch", "nodes") if key in exporter]
        compiled = exporter.get("compiled_for")
        if compiled:
            parts.append(f"compiled for {compiled.get('device', '?')} "
                         f"{compiled.get('cpu_isa') or compiled.get('machine', '')}".rstrip())
        lines.append("  exporter         " + ", ".join(parts))
    parity = meta.get("parity")
    if parity:
        units = [t.get("units", "") for t in meta["targets"]]
        diffs = ", ".join(f"{d:.3g}{' ' + u if u else ''}"
                          for d, u in zip(parity["max_abs_diff"], units, strict=False))
        allowed = ", ".join(f"{a:.3g}" for a in parity["max_allowed"])
        state = "passed" if parity.get("passed") else "FAILED"
        lines.append(f"  parity           {state}: {parity['n_structures']} structures, "
                     f"{parity['batches']} batches, max |Δ| {diffs} (allowed {allowed}), worst "
                     f"ratio {parity['worst_ratio']:.3g}, on {parity.get('backend', '?')}")
    if kind != CHECKPOINT_KIND:
        lines.append(f"  sha256           {info['sha256']}")
    return lines
