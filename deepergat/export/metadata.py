"""The metadata document every exported file carries (docs/design.md §8).

One JSON document, a `deepergat.metadata.ModelMetadata`: in ONNX the ``metadata_props`` key
``deepergat``; in TorchScript and ``.pt2`` the extra file ``deepergat.json``. It is built from
the source checkpoint's metadata (`deepergat.nn.checkpoint.model_metadata`) plus what the export
adds: the exported file's kind and format integer, the exporter's versions, and the figures of
the file's own parity check.

Everything here is plain Python (no torch, no onnx): the screening path reads and checks
metadata without paying for either.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deepergat.architectures import architecture_name
from deepergat.contract import (
    ENSEMBLE_OUTPUT_NAMES,
    INPUT_NAMES,
    MODEL_FORMATS,
    OUTPUT_NAMES,
    translation_rule,
)
from deepergat.errors import DeepergatError
from deepergat.metadata import EXPORT_FORMAT, GraphSettings, ModelMetadata, ParityFigures
from deepergat.system.files import atomic_path

__all__ = [
    "EXPORT_FORMAT",
    "EXTRA_FILE",
    "KINDS",
    "METADATA_KEY",
    "check_settings",
    "decode_metadata",
    "decode_model_metadata",
    "encode_metadata",
    "exported_metadata",
    "exported_model_metadata",
    "meta_tmp_path",
    "output_names",
    "validate_metadata",
    "with_exporter",
]

#: ONNX ``metadata_props`` key holding the document.
METADATA_KEY = "deepergat"
#: Extra file holding the document in TorchScript and ``.pt2`` archives.
EXTRA_FILE = "deepergat.json"
#: Exported file kinds (the ``kind`` field), keyed by the format name used on the CLI.
KINDS: dict[str, str] = {name: f.kind for name, f in MODEL_FORMATS.items()}
#: Relative tolerance when comparing a caller's cutoff with the model's.
_CUTOFF_RTOL = 1e-9


def exported_model_metadata(
    source: ModelMetadata | Mapping[str, Any],
    *,
    kind: str,
    exporter: Mapping[str, Any],
    parity: Mapping[str, Any] | None = None,
) -> ModelMetadata:
    """The metadata of an exported file.

    Args:
        source: the checkpoint's metadata (`deepergat.nn.checkpoint.model_metadata`, or its
            document): ``format`` (checkpoint format), ``model`` (constructor arguments),
            ``graph``, ``targets``, ``elements``, ``store_digest``, ``source_sha256``, ...
        kind: ``"onnx"``, ``"torchscript"``, ``"pt2"`` or ``"aoti"``.
        exporter: versions and settings of the exporter (torch version, opset, IR version, ...).
        parity: the figures of the file's parity check (`deepergat.export.parity`), or None
            while it has not run yet.

    Returns:
        `ModelMetadata` with ``kind``, ``format`` (`EXPORT_FORMAT`), ``checkpoint_format``,
        ``architecture`` (the paper's name of the model), ``model``, ``graph`` {cutoff Å,
        max_neighbors, construction, and for minimum-image graphs the translation rule},
        ``targets`` [{name, units, mean, std}], ``elements`` [Z],
        ``store_digest``, ``package_version``, ``source_sha256``, ``inputs``, ``outputs``,
        ``exporter``, ``parity``; an ensemble's adds ``calibration``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    from deepergat._version import __version__

    src = (source if isinstance(source, ModelMetadata)
           else ModelMetadata.from_dict(source, where="source checkpoint metadata"))
    graph = src.graph
    return ModelMetadata(
        kind=KINDS[kind],
        format=EXPORT_FORMAT,
        checkpoint_format=src.format,
        architecture=architecture_name(src.model),
        model=src.model,
        # the parity check ran this version's translation rule (a source checkpoint with
        # another one was refused on load): the file records it
        graph=GraphSettings(graph.cutoff, graph.max_neighbors, graph.construction,
                            translations=translation_rule(graph.construction)),
        targets=src.targets,
        elements=src.elements,
        store_digest=src.store_digest or "",
        package_version=__version__,
        source_sha256=src.source_sha256 or "",
        inputs=INPUT_NAMES,
        outputs=src.output_names,
        exporter=exporter,
        parity=ParityFigures.from_dict(parity) if parity is not None else None,
        calibration=src.calibration,
    )


def exported_metadata(
    source: ModelMetadata | Mapping[str, Any],
    *,
    kind: str,
    exporter: Mapping[str, Any],
    parity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`exported_model_metadata` as its JSON-ready document (`ModelMetadata.to_dict`)."""
    return exported_model_metadata(source, kind=kind, exporter=exporter,
                                   parity=parity).to_dict()


def output_names(meta: ModelMetadata | Mapping[str, Any]) -> list[str]:
    """The outputs of the model a metadata document describes: ``prediction``, ``embedding``,
    and for an ensemble (``model.members``) ``std``."""
    if isinstance(meta, ModelMetadata):
        return list(meta.output_names)
    return list(ENSEMBLE_OUTPUT_NAMES if "members" in meta.get("model", {}) else OUTPUT_NAMES)


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
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".deepergat-save-") as tmp, \
            atomic_path(path, tmp=Path(tmp) / archive_name(path)) as staged:
        save(staged)


def meta_tmp_path(path: Path) -> Path:
    """Where a file is re-saved with new metadata before it replaces the original (same
    folder, same suffix: savers and loaders judge files by it)."""
    return path.with_name(f".{path.stem}.meta-tmp{path.suffix}")


def encode_metadata(meta: Mapping[str, Any]) -> str:
    """The document as compact, key-sorted JSON (non-finite numbers are refused)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _parse(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise DeepergatError(f"{where}: damaged deepergat metadata (not JSON: {e})") from None
    if not isinstance(meta, dict):
        raise DeepergatError(f"{where}: damaged deepergat metadata (not a JSON object)")
    return meta


def decode_model_metadata(text: str | bytes, *, where: str) -> ModelMetadata:
    """Parse and check a metadata document.

    Args:
        text: the JSON document.
        where: the file it came from, for error messages.

    Raises:
        DeepergatError: not JSON, or a document `ModelMetadata.from_dict` refuses.
    """
    return ModelMetadata.from_dict(_parse(text, where), where=where)


def decode_metadata(text: str | bytes, *, where: str) -> dict[str, Any]:
    """`decode_model_metadata`, returning the checked document as a dict."""
    meta = _parse(text, where)
    validate_metadata(meta, where=where)
    return meta


def validate_metadata(meta: Mapping[str, Any], *, where: str) -> ModelMetadata:
    """Check a metadata document (`ModelMetadata.from_dict`) and return it typed.

    Raises:
        DeepergatError: a missing field or one of the wrong type, or an exported file of a
            newer format.
    """
    return ModelMetadata.from_dict(meta, where=where)


def check_settings(
    meta: ModelMetadata | Mapping[str, Any],
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
        meta: a model's metadata, or its document (``graph`` {cutoff, max_neighbors,
            construction}).
        cutoff: the caller's cutoff, Å (None: not checked).
        max_neighbors: the caller's neighbor count (None: not checked).
        graph: the caller's graph construction (None: not checked).
        where: the model's name or path, for the message.

    Raises:
        DeepergatError: naming both values of each mismatched setting.
    """
    settings = (meta.graph if isinstance(meta, ModelMetadata)
                else GraphSettings.from_dict(meta["graph"], where=where))
    problems = []
    if cutoff is not None:
        want = settings.cutoff
        if not math.isclose(float(cutoff), want, rel_tol=_CUTOFF_RTOL, abs_tol=0.0):
            problems.append(
                f"cutoff {float(cutoff):g} Å given, the model was trained with {want:g} Å"
            )
    if max_neighbors is not None:
        want_k = settings.max_neighbors
        if int(max_neighbors) != want_k:
            problems.append(
                f"max_neighbors {int(max_neighbors)} given, the model was trained with {want_k}"
            )
    if graph is not None:
        want_g = settings.construction
        if graph != want_g:
            problems.append(f"graph {graph!r} given, the model was trained with {want_g!r}")
    if problems:
        raise DeepergatError(
            f"{where}: graph settings do not match the model: {'; '.join(problems)}; "
            "build graphs with the model's settings (omit the option to use them)"
        )
