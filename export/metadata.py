"""The metadata document every exported file carries (docs/design.md §8).

One JSON document: in ONNX the ``metadata_props`` key ``deepergat``; in TorchScript and ``.pt2``
the extra file ``deepergat.json``. It is built from the source checkpoint's metadata
(`deepergat.checkpoint.metadata`) plus what the export adds: the exported file's kind and format
integer, the exporter's versions, and the figures of the file's own parity check.

Everything here is plain Python (no torch, no onnx): the screening path reads and checks
metadata without paying for either.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deepergat.architectures import architecture_name
from deepergat.contract import MODEL_FORMATS
from deepergat.errors import DeepergatError
from deepergat.graphs import graph_settings

from .shapes import INPUT_NAMES, OUTPUT_NAMES

__all__ = [
    "EXPORT_FORMAT",
    "EXTRA_FILE",
    "KINDS",
    "METADATA_KEY",
    "check_settings",
    "decode_metadata",
    "encode_metadata",
    "exported_metadata",
    "meta_tmp_path",
    "validate_metadata",
    "with_exporter",
]

#: Format integer of exported files' metadata; bumped only when its layout changes
#: incompatibly (not the package version: a release must not orphan exported files).
EXPORT_FORMAT = 1
#: ONNX ``metadata_props`` key holding the document.
METADATA_KEY = "deepergat"
#: Extra file holding the document in TorchScript and ``.pt2`` archives.
EXTRA_FILE = "deepergat.json"
#: Exported file kinds (the ``kind`` field), keyed by the format name used on the CLI.
KINDS: dict[str, str] = {name: f.kind for name, f in MODEL_FORMATS.items()}
#: Fields every metadata document holds (exported files and checkpoints alike).
_REQUIRED = ("format", "model", "graph", "targets", "elements")
#: Relative tolerance when comparing a caller's cutoff with the model's.
_CUTOFF_RTOL = 1e-9


def exported_metadata(
    source: Mapping[str, Any],
    *,
    kind: str,
    exporter: Mapping[str, Any],
    parity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata document of an exported file.

    Args:
        source: the checkpoint's metadata (`deepergat.checkpoint.metadata`): ``format``
            (checkpoint format), ``model`` (constructor arguments), ``graph``, ``targets``,
            ``elements``, ``store_digest``, ``package_version``, ``source_sha256``.
        kind: ``"onnx"``, ``"torchscript"``, ``"pt2"`` or ``"aoti"``.
        exporter: versions and settings of the exporter (torch version, opset, IR version, ...).
        parity: the figures of the file's parity check (`deepergat.export.parity`), or None
            while it has not run yet.

    Returns:
        JSON-ready dict: ``kind``, ``format`` (`EXPORT_FORMAT`), ``checkpoint_format``,
        ``architecture`` (the paper's name of the model), ``model``, ``graph`` {cutoff Å,
        max_neighbors, construction}, ``targets`` [{name, units, mean, std}], ``elements`` [Z],
        ``store_digest``, ``package_version``, ``source_sha256``, ``inputs``, ``outputs``,
        ``exporter``, ``parity``; an ensemble's adds ``calibration``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    from deepergat import __version__

    return {
        "kind": KINDS[kind],
        "format": EXPORT_FORMAT,
        "checkpoint_format": int(source["format"]),
        "architecture": architecture_name(dict(source["model"])),
        "model": dict(source["model"]),
        "graph": graph_settings(source["graph"]),
        "targets": [dict(t) for t in source["targets"]],
        "elements": [int(z) for z in source["elements"]],
        "store_digest": str(source.get("store_digest", "")),
        "package_version": __version__,
        "source_sha256": str(source.get("source_sha256", "")),
        "inputs": list(INPUT_NAMES),
        "outputs": output_names(source),
        "exporter": dict(exporter),
        "parity": dict(parity) if parity is not None else None,
        **({"calibration": dict(source["calibration"])} if source.get("calibration") else {}),
    }


def output_names(meta: Mapping[str, Any]) -> list[str]:
    """The outputs of the model a metadata document describes: ``prediction``, ``embedding``,
    and for an ensemble (``model.members``) ``std``."""
    names = list(OUTPUT_NAMES)
    return [*names, "std"] if "members" in meta.get("model", {}) else names



def with_exporter(metadata: Mapping[str, Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``metadata`` whose ``exporter`` section has ``facts`` merged in."""
    meta = dict(metadata)
    meta["exporter"] = {**meta.get("exporter", {}), **facts}
    return meta


def archive_name(path: Path) -> str:
    """The name a staged file will have in the end (``model.pt2`` for the exporter's
    ``.deepergat-export-<pid>.model.pt2`` and its ``.meta-tmp`` copies): zip-based formats name
    their archive's top folder after the file they are saved to."""
    name = re.sub(r"^\.+(deepergat-export-\d+\.)?", "", path.name)
    return name.replace(".meta-tmp", "") or path.name


def save_named(path: Path, save: Callable[[Path], None]) -> None:
    """Call ``save(p)`` with ``p`` named as the final file (`archive_name`) in a private folder
    beside ``path``, then move the result to ``path``: the archive's top folder is the plain
    final name, never a staging name."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".deepergat-save-") as tmp:
        staged = Path(tmp) / archive_name(path)
        save(staged)
        os.replace(staged, path)


def meta_tmp_path(path: Path) -> Path:
    """Where a file is re-saved with new metadata before it replaces the original (same
    folder, same suffix: savers and loaders judge files by it)."""
    return path.with_name(f".{path.stem}.meta-tmp{path.suffix}")


def encode_metadata(meta: Mapping[str, Any]) -> str:
    """The document as compact, key-sorted JSON (non-finite numbers are refused)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode_metadata(text: str | bytes, *, where: str) -> dict[str, Any]:
    """Parse and validate a metadata document.

    Args:
        text: the JSON document.
        where: the file it came from, for error messages.

    Raises:
        DeepergatError: not JSON, or a document without the required fields.
    """
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise DeepergatError(f"{where}: damaged deepergat metadata (not JSON: {e})") from None
    if not isinstance(meta, dict):
        raise DeepergatError(f"{where}: damaged deepergat metadata (not a JSON object)")
    validate_metadata(meta, where=where)
    return meta


def validate_metadata(meta: Mapping[str, Any], *, where: str) -> None:
    """Check that a metadata document has the fields loaders rely on.

    Raises:
        DeepergatError: a missing field, or an exported file of a newer format.
    """
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise DeepergatError(f"{where}: damaged deepergat metadata: missing {', '.join(missing)}")
    kind = meta.get("kind")
    if kind in KINDS.values() and meta["format"] != EXPORT_FORMAT:
        from deepergat import __version__

        raise DeepergatError(
            f"{where}: exported-file format {meta['format']!r} is not supported (deepergat "
            f"{__version__} reads format {EXPORT_FORMAT}); use a matching deepergat version"
        )
    graph = meta["graph"]
    if not isinstance(graph, Mapping) or "cutoff" not in graph or "max_neighbors" not in graph:
        raise DeepergatError(f"{where}: damaged deepergat metadata: graph settings missing")
    try:
        graph_settings(graph)
    except (TypeError, ValueError) as e:
        raise DeepergatError(f"{where}: damaged deepergat metadata: graph settings: {e}") from None
    targets = meta["targets"]
    if not isinstance(targets, list) or not all(
        isinstance(t, Mapping) and {"name", "units", "mean", "std"} <= set(t) for t in targets
    ):
        raise DeepergatError(f"{where}: damaged deepergat metadata: targets malformed")


def check_settings(
    meta: Mapping[str, Any],
    *,
    cutoff: float | None = None,
    max_neighbors: int | None = None,
    graph: str | None = None,
    where: str = "model",
) -> None:
    """Check a caller's graph settings against the model's.

    A model is only valid on graphs built with its own cutoff, neighbor count and construction
    (docs/design.md §4); a mismatch is refused, never silently accepted.

    Args:
        meta: a metadata document (``graph`` {cutoff, max_neighbors, construction}).
        cutoff: the caller's cutoff, Å (None: not checked).
        max_neighbors: the caller's neighbor count (None: not checked).
        graph: the caller's graph construction (None: not checked).
        where: the model's name or path, for the message.

    Raises:
        DeepergatError: naming both values of each mismatched setting.
    """
    settings = meta["graph"]
    problems = []
    if cutoff is not None:
        want = float(settings["cutoff"])
        if not math.isclose(float(cutoff), want, rel_tol=_CUTOFF_RTOL, abs_tol=0.0):
            problems.append(
                f"cutoff {float(cutoff):g} Å given, the model was trained with {want:g} Å"
            )
    if max_neighbors is not None:
        want_k = int(settings["max_neighbors"])
        if int(max_neighbors) != want_k:
            problems.append(
                f"max_neighbors {int(max_neighbors)} given, the model was trained with {want_k}"
            )
    if graph is not None:
        want_g = graph_settings(meta["graph"])["construction"]
        if graph != want_g:
            problems.append(f"graph {graph!r} given, the model was trained with {want_g!r}")
    if problems:
        raise DeepergatError(
            f"{where}: graph settings do not match the model: {'; '.join(problems)}; "
            "build graphs with the model's settings (omit the option to use them)"
        )
