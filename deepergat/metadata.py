"""`ModelMetadata`: the metadata document of checkpoints and exported model files, typed
(docs/design.md §7, §8).

Checkpoints produce it (`deepergat.nn.checkpoint.model_metadata`), every exported file carries it
as JSON (`deepergat.export.metadata.exported_model_metadata`), and the loader, ``predict``,
``deepergat-screen`` and ``info`` read its attributes. `ModelMetadata.from_dict` checks a
document's types and raises one `DeepergatError` naming the bad key; `ModelMetadata.to_dict`
writes exactly the keys and values the files carry, so a document read and written again is
unchanged (keys this version does not know travel in ``extra``). `check_weights` refuses a
document that the weights it travels with contradict (graph settings, target scaling, sizes).

Plain Python over `deepergat.contract` and `deepergat.architectures` (no torch, no onnx): the
screening path and ``info`` read metadata without paying for either.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NoReturn

from .architectures import architecture_name, embedding_width
from .contract import (
    CHECKPOINT_KIND,
    COMPOSITION_SIZE,
    DEFAULT_GRAPH,
    ENSEMBLE_OUTPUT_NAMES,
    GRAPH_CONSTRUCTIONS,
    MAX_Z,
    MODEL_FORMATS,
    OUTPUT_NAMES,
    GraphConstruction,
    translation_rule,
)
from .errors import DeepergatError

__all__ = [
    "CHECKPOINT_KIND",  # re-exported from deepergat.contract
    "EXPORTED_KINDS",
    "EXPORT_FORMAT",
    "MAX_CUTOFF",
    "MAX_NEIGHBORS",
    "WEIGHTS_RTOL",
    "Calibration",
    "GraphSettings",
    "ModelMetadata",
    "ParityFigures",
    "TargetInfo",
    "WeightsView",
    "check_weights",
]

#: Format integer of exported files' metadata; bumped only when its layout changes
#: incompatibly (not the package version: a release must not orphan exported files).
EXPORT_FORMAT = 1
#: The ``kind`` of each exported file format (`deepergat.contract.MODEL_FORMATS`).
EXPORTED_KINDS: frozenset[str] = frozenset(f.kind for f in MODEL_FORMATS.values())

#: Keys every document holds (checkpoints and exported files alike).
_REQUIRED = ("format", "model", "graph", "targets", "elements")

#: Largest graph cutoff, Å, a model's metadata may hold. Crystal graph models use 4-10 Å; a
#: file claiming far more is damaged or hostile (the neighbor search would run for hours).
MAX_CUTOFF = 30.0
#: Largest neighbor count a model's metadata may hold (models use 12-64).
MAX_NEIGHBORS = 256
#: Most reference values (structures × embedding width) an ensemble's local error term may
#: hold (1 GiB of float32; the bundled one holds 3,408 × 320).
MAX_LOCAL_VALUES = 2**28
#: What to do about a damaged document (the end of every message about one).
_FIX = "use an intact copy of the model file"
#: Integer constructor arguments that count something (at least 1 where present).
_COUNTS = ("members", "dim", "targets", "layers", "heads", "groups", "gaussians",
           "max_neighbors")


# ------------------------------------------------------------------------- reading helpers


class _Reader:
    """One JSON object of a document being read: typed getters whose errors name the key.

    Args:
        data: the object.
        where: the file, for messages.
        path: the object's place in the document (``""``, ``"graph settings: "``,
            ``"targets[0]."``), prefixed to key names in messages.
    """

    def __init__(self, data: Any, where: str, path: str = "") -> None:
        self.where, self.path = where, path
        if not isinstance(data, Mapping):
            self.fail(f"{path.rstrip(': .') or 'the document'} must be a JSON object, got "
                      f"{_show(data)}")
        self.data: Mapping[str, Any] = data

    def fail(self, problem: str) -> NoReturn:
        raise DeepergatError(f"{self.where}: damaged deepergat metadata: {problem}; {_FIX}")

    def bad(self, key: str, what: str, value: Any) -> NoReturn:
        self.fail(f"{self.path}{key} must be {what}, got {_show(value)}")

    def require(self, keys: Sequence[str]) -> None:
        missing = [k for k in keys if k not in self.data]
        if missing:
            self.fail(f"missing {', '.join(self.path + k for k in missing)}")

    def extra(self, known: Sequence[str]) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k not in known}

    def integer(self, key: str, *, low: int | None = None, high: int | None = None) -> int:
        """An integer, within [low, high] where given."""
        value = self.data[key]
        if not _is_int(value):
            self.bad(key, "an integer", value)
        if not _within(value, low, high):
            self.bad(key, _range(low, high), value)
        return int(value)

    def number(self, key: str, *, low: float | None = None, high: float | None = None,
               positive: bool = False) -> float:
        """A finite number, within [low, high] where given (``positive``: above 0)."""
        value = self.data[key]
        if not _is_number(value):
            self.bad(key, "a finite number", value)
        if not _within(value, low, high) or (positive and not value > 0):
            self.bad(key, _range(low, high, positive=positive), value)
        return float(value)

    def number_or_null(self, key: str) -> float | None:
        value = self.data[key]
        if value is not None and not _is_number(value):
            self.bad(key, "a finite number or null", value)
        return None if value is None else float(value)

    def string(self, key: str) -> str:
        value = self.data[key]
        if not isinstance(value, str):
            self.bad(key, "a string", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self.data[key]
        if not isinstance(value, bool):
            self.bad(key, "true or false", value)
        return value

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self.data[key]
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            self.bad(key, "a JSON object", value)
        return value

    def items(self, key: str, check: Callable[[Any], bool], what: str) -> list[Any]:
        value = self.data[key]
        if not isinstance(value, list | tuple) or not all(check(v) for v in value):
            self.bad(key, f"a list of {what}", value)
        return list(value)

    def optional(self, key: str, read: Callable[[str], Any]) -> Any:
        """``read(key)``, or None where the key is absent."""
        return read(key) if key in self.data else None


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _range(low: float | None, high: float | None, *, positive: bool = False) -> str:
    """``from 1 to 256``, ``above 0 and at most 30``, ``at least 0``, ..."""
    if low is not None and high is not None:
        return f"from {low:g} to {high:g}"
    bounds = ["above 0"] if positive else []
    if low is not None:
        bounds.append(f"at least {low:g}")
    if high is not None:
        bounds.append(f"at most {high:g}")
    return " and ".join(bounds)


def _show(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _thaw(value: Any) -> Any:
    """An independent copy of a JSON value, its objects as plain dicts."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_thaw(v) for v in value)
    return value


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A read-only copy of a JSON object."""
    return MappingProxyType(_thaw(value or {}))


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """A plain, independent dict of a (read-only) JSON object."""
    return _thaw(value)


# ------------------------------------------------------------------------------ sections


_TRANSLATION_KEYS = ("translation_tolerance", "translation_max_atoms")


def _read_translations(r: _Reader, construction: str) -> dict[str, Any]:
    """The recorded translation rule of a graph document (see `GraphSettings`), checked
    against this version's."""
    if not any(k in r.data for k in _TRANSLATION_KEYS):
        return {}
    want = translation_rule(construction)
    if not want:
        r.fail(f"graph settings: a {construction} graph merges no atoms, but "
               f"{', '.join(k for k in _TRANSLATION_KEYS if k in r.data)} is set")
    r.require(_TRANSLATION_KEYS)
    got = {"translation_tolerance": r.number("translation_tolerance", low=0.0),
           "translation_max_atoms": r.integer("translation_max_atoms", low=0)}
    if got != want:
        raise DeepergatError(
            f"{r.where}: made with another translation rule for minimum-image graphs "
            f"({got['translation_tolerance']:g} Å, up to {got['translation_max_atoms']} atoms; "
            f"this deepergat: {want['translation_tolerance']:g} Å, up to "
            f"{want['translation_max_atoms']}): its graphs of non-primitive cells would differ "
            "from the model's; use the deepergat version that wrote the file"
        )
    return got


@dataclass(frozen=True)
class GraphSettings:
    """How the model's graphs are built (docs/design.md §4).

    Attributes:
        cutoff: neighbor cutoff, Å (above 0, at most `MAX_CUTOFF`).
        max_neighbors: neighbors kept per atom (1 to `MAX_NEIGHBORS`).
        construction: ``"periodic"`` or ``"minimum-image"``.
        construction_recorded: False for documents older than the ``construction`` setting
            (all periodic); `to_dict` then leaves the key out, as they did.
        translations: the minimum-image translation rule the file records
            (``translation_tolerance`` Å, ``translation_max_atoms``:
            `deepergat.contract.translation_rule`); empty for periodic graphs and for files
            written before the rule was recorded (read with this version's rule).
        extra: keys this version does not know.
    """

    cutoff: float
    max_neighbors: int
    construction: GraphConstruction = DEFAULT_GRAPH
    construction_recorded: bool = field(default=True, repr=False)
    translations: Mapping[str, Any] = field(default_factory=dict, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))
        object.__setattr__(self, "translations", _frozen(self.translations))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model metadata") -> GraphSettings:
        """Read a ``graph`` document.

        Raises:
            DeepergatError: missing settings, or a value of the wrong type or out of range
                (a cutoff that is not a finite length in (0, `MAX_CUTOFF`] Å, a neighbor
                count that is not an integer from 1 to `MAX_NEIGHBORS`); a translation rule
                on a periodic graph, or one other than this version's (the model's graphs of
                non-primitive cells would differ from the ones it was trained on).
        """
        if not isinstance(data, Mapping) or "cutoff" not in data or "max_neighbors" not in data:
            raise DeepergatError(f"{where}: damaged deepergat metadata: graph settings missing; "
                                 f"{_FIX}")
        r = _Reader(data, where, "graph settings: ")
        construction = data.get("construction", DEFAULT_GRAPH)
        if construction not in GRAPH_CONSTRUCTIONS:
            r.fail(f"graph settings: construction {_show(construction)} is not one of "
                   f"{', '.join(GRAPH_CONSTRUCTIONS)}")
        return cls(
            cutoff=r.number("cutoff", positive=True, high=MAX_CUTOFF),
            max_neighbors=r.integer("max_neighbors", low=1, high=MAX_NEIGHBORS),
            construction=construction,
            construction_recorded="construction" in data,
            translations=_read_translations(r, construction),
            extra=r.extra(("cutoff", "max_neighbors", "construction", *_TRANSLATION_KEYS)),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # read-only mappings do not pickle: a copy is rebuilt from the document
        return (self.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The ``graph`` document."""
        out: dict[str, Any] = {"cutoff": self.cutoff, "max_neighbors": self.max_neighbors}
        if self.construction_recorded:
            out["construction"] = self.construction
        return {**out, **_plain(self.translations), **_plain(self.extra)}

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `deepergat.graphs.build_inputs`: ``cutoff``,
        ``max_neighbors``, ``graph``."""
        return {"cutoff": self.cutoff, "max_neighbors": self.max_neighbors,
                "graph": self.construction}


@dataclass(frozen=True)
class TargetInfo:
    """One predicted target.

    Attributes:
        name: the target's name (a column of the training data).
        units: its units (may be empty).
        mean, std: the training mean and standard deviation the model's output is scaled by
            (finite; std above 0).
        extra: keys this version does not know.
    """

    name: str
    units: str
    mean: float
    std: float
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _frozen(self.extra))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model metadata",
                  path: str = "targets[0].") -> TargetInfo:
        """Read one entry of ``targets``.

        Raises:
            DeepergatError: a missing key, a value of the wrong type, an empty name, a mean
                that is not finite or a std that is not a finite number above 0.
        """
        r = _Reader(data, where, path)
        r.require(("name", "units", "mean", "std"))
        name = r.string("name")
        if not name.strip():
            r.bad("name", "a non-empty string", name)
        return cls(name=name, units=r.string("units"),
                   mean=r.number("mean"), std=r.number("std", positive=True),
                   extra=r.extra(("name", "units", "mean", "std")))

    def __reduce__(self) -> tuple[Any, ...]:
        # read-only mappings do not pickle: a copy is rebuilt from the document
        return (self.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The ``targets`` entry."""
        return {"name": self.name, "units": self.units, "mean": self.mean, "std": self.std,
                **_plain(self.extra)}


@dataclass(frozen=True)
class Calibration:
    """An ensemble's spread calibration (docs/design.md §6; `deepergat.training.ensemble`).

    Attributes:
        std_scale: [T] factor applied to the members' raw spread, per target.
        coverage: the share of |error| ≤ 2σ the scale was fitted for.
        n: structures it was fitted on.
        source: where they came from.
        method: how the scale was fitted, in words.
        metrics: target -> figures on the calibration structures (``coverage_1sigma``,
            ``coverage_2sigma``, ``spearman_std_abs_error``, ...).
        extra: keys this version does not know.

    Optional attributes are None where the document lacks them (`to_dict` leaves them out).
    """

    std_scale: tuple[float, ...]
    coverage: float | None = None
    n: int | None = None
    source: str | None = None
    method: str | None = None
    metrics: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    _KEYS = ("std_scale", "coverage", "n", "source", "method", "metrics")

    def __post_init__(self) -> None:
        object.__setattr__(self, "std_scale", tuple(float(s) for s in self.std_scale))
        if self.metrics is not None:
            object.__setattr__(self, "metrics", _frozen(self.metrics))
        object.__setattr__(self, "extra", _frozen(self.extra))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model metadata") -> Calibration:
        """Read a ``calibration`` document.

        Raises:
            DeepergatError: a missing ``std_scale``, a value of the wrong type or out of
                range (scales ≥ 0, a coverage in (0, 1], a count ≥ 0).
        """
        r = _Reader(data, where, "calibration.")
        r.require(("std_scale",))
        return cls(
            std_scale=tuple(r.items("std_scale", lambda v: _is_number(v) and v >= 0,
                                    "finite numbers ≥ 0")),
            coverage=r.optional("coverage",
                                lambda k: r.number(k, positive=True, high=1.0)),
            n=r.optional("n", lambda k: r.integer(k, low=0)),
            source=r.optional("source", r.string),
            method=r.optional("method", r.string),
            metrics=r.optional("metrics", r.mapping),
            extra=r.extra(cls._KEYS),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # read-only mappings do not pickle: a copy is rebuilt from the document
        return (self.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The ``calibration`` document."""
        out: dict[str, Any] = {"std_scale": list(self.std_scale)}
        for key in ("coverage", "n", "source", "method"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.metrics is not None:
            out["metrics"] = _plain(self.metrics)
        return {**out, **_plain(self.extra)}


@dataclass(frozen=True)
class ParityFigures:
    """The figures of an exported file's parity check (`deepergat.export.parity.ParityResult`;
    non-finite numbers are null).

    Attributes:
        passed: every prediction agreed by the rule.
        n_structures, n_predictions, batches: what was compared.
        max_abs_diff, max_allowed: [T] largest |y₁ − y₂| and its tolerance, per target.
        worst_ratio: largest |y₁ − y₂| / tolerance.
        worst: ``{"case", "id", "target"}`` of the worst ratio.
        embedding_max_abs_diff: largest |Δ| of the embeddings (reported, not ruled).
        failures: up to 5 disagreements.
        rule: the agreement rule in words.
        backend: what computed the candidate values.
        extra: keys this version does not know.
    """

    passed: bool
    n_structures: int
    n_predictions: int
    batches: int
    max_abs_diff: tuple[float | None, ...]
    max_allowed: tuple[float | None, ...]
    worst_ratio: float | None
    worst: Mapping[str, Any]
    embedding_max_abs_diff: float | None
    failures: tuple[Mapping[str, Any], ...] = ()
    rule: str = ""
    backend: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    _REQUIRED = ("passed", "n_structures", "n_predictions", "batches", "max_abs_diff",
                 "max_allowed", "worst_ratio", "worst", "embedding_max_abs_diff")
    _KEYS = (*_REQUIRED, "failures", "rule", "backend")

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_abs_diff", tuple(self.max_abs_diff))
        object.__setattr__(self, "max_allowed", tuple(self.max_allowed))
        object.__setattr__(self, "worst", _frozen(self.worst))
        object.__setattr__(self, "failures", tuple(_frozen(f) for f in self.failures))
        object.__setattr__(self, "extra", _frozen(self.extra))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model metadata") -> ParityFigures:
        """Read a ``parity`` document.

        Raises:
            DeepergatError: a missing figure or a value of the wrong type.
        """
        r = _Reader(data, where, "parity.")
        r.require(cls._REQUIRED)

        def finite_or_null(v: Any) -> bool:
            return v is None or _is_number(v)

        return cls(
            passed=r.boolean("passed"),
            n_structures=r.integer("n_structures", low=0),
            n_predictions=r.integer("n_predictions", low=0),
            batches=r.integer("batches", low=0),
            max_abs_diff=tuple(r.items("max_abs_diff", finite_or_null, "numbers or nulls")),
            max_allowed=tuple(r.items("max_allowed", finite_or_null, "numbers or nulls")),
            worst_ratio=r.number_or_null("worst_ratio"),
            worst=r.mapping("worst"),
            embedding_max_abs_diff=r.number_or_null("embedding_max_abs_diff"),
            failures=tuple(r.items("failures", lambda v: isinstance(v, Mapping), "objects")
                           if "failures" in r.data else ()),
            rule=r.string("rule") if "rule" in r.data else "",
            backend=r.string("backend") if "backend" in r.data else "",
            extra=r.extra(cls._KEYS),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # read-only mappings do not pickle: a copy is rebuilt from the document
        return (self.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The ``parity`` document."""
        return {
            "passed": self.passed, "n_structures": self.n_structures,
            "n_predictions": self.n_predictions, "batches": self.batches,
            "max_abs_diff": list(self.max_abs_diff), "max_allowed": list(self.max_allowed),
            "worst_ratio": self.worst_ratio, "worst": _plain(self.worst),
            "embedding_max_abs_diff": self.embedding_max_abs_diff,
            "failures": [_plain(f) for f in self.failures], "rule": self.rule,
            "backend": self.backend, **_plain(self.extra),
        }


# ------------------------------------------------------------------------ the document


@dataclass(frozen=True)
class ModelMetadata:
    """The metadata of a checkpoint or an exported model file (docs/design.md §7, §8).

    Attributes:
        format: the checkpoint format (a checkpoint's metadata) or `EXPORT_FORMAT` (an
            exported file's).
        model: the model's constructor arguments (``members`` K for an ensemble).
        graph: the graph settings the model was trained with.
        targets: [T] the predicted targets, in output order.
        elements: atomic numbers seen in training, ascending.
        kind: `CHECKPOINT_KIND` or one of `EXPORTED_KINDS`.
        checkpoint_format: an exported file's source checkpoint format.
        architecture: the paper's name ("DeeperGATGNN", "CGCNN", …; older exported files
            lack it: see `architecture_name`).
        store_digest: content digest of the training store.
        package_version: the deepergat version that wrote the document.
        source_sha256: sha256 of the source checkpoint (of the checkpoint itself for a
            checkpoint's metadata read from its file).
        inputs, outputs: an exported file's input and output names.
        exporter: an exported file's exporter facts (name, versions, opset, op counts, …;
            they differ by format).
        parity: an exported file's parity figures; None until the check has run.
        calibration: an ensemble's spread calibration.
        extra: keys this version does not know, kept so that they are written back.

    Optional attributes are None where the document lacks them; `to_dict` leaves them out,
    except ``parity``, which an exported file's document always holds (null until the check
    has run).
    """

    format: int
    model: Mapping[str, Any]
    graph: GraphSettings
    targets: tuple[TargetInfo, ...]
    elements: tuple[int, ...]
    kind: str | None = None
    checkpoint_format: int | None = None
    architecture: str | None = None
    store_digest: str | None = None
    package_version: str | None = None
    source_sha256: str | None = None
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    exporter: Mapping[str, Any] | None = None
    parity: ParityFigures | None = None
    calibration: Calibration | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    _KEYS = ("kind", "format", "checkpoint_format", "architecture", "model", "graph",
             "targets", "elements", "store_digest", "package_version", "source_sha256",
             "inputs", "outputs", "exporter", "parity", "calibration")

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", _frozen(self.model))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "elements", tuple(int(z) for z in self.elements))
        for key in ("inputs", "outputs"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(getattr(self, key)))
        if self.exporter is not None:
            object.__setattr__(self, "exporter", _frozen(self.exporter))
        object.__setattr__(self, "extra", _frozen(self.extra))

    # ------------------------------------------------------------------ reading, writing

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "model metadata") -> ModelMetadata:
        """Read and check a metadata document.

        Args:
            data: the JSON object (a checkpoint's or an exported file's document).
            where: the file it came from, for messages.

        Raises:
            DeepergatError: one line naming the file and the bad key: a missing field, a
                value of the wrong type or out of range (see `GraphSettings.from_dict`,
                `TargetInfo.from_dict`, `Calibration.from_dict`; elements are atomic numbers
                1 to `MAX_Z`; constructor counts such as ``model.members`` are at least 1;
                one target per model output), or an exported file of a newer format.
        """
        r = _Reader(data, where)
        r.require(_REQUIRED)
        fmt = r.integer("format")
        kind = r.optional("kind", r.string)
        if kind in EXPORTED_KINDS and fmt != EXPORT_FORMAT:
            from ._version import __version__

            raise DeepergatError(
                f"{where}: exported-file format {fmt!r} is not supported (deepergat "
                f"{__version__} reads format {EXPORT_FORMAT}); use a matching deepergat version"
            )
        model = r.mapping("model")
        for key in _COUNTS:
            if key in model and not _is_int(model[key]):
                r.bad(f"model.{key}", "an integer", model[key])
            if key in model and model[key] < 1:
                r.bad(f"model.{key}", "at least 1", model[key])
        if "local_error" in model:
            le = _Reader(model["local_error"], where, "model.local_error.")
            le.require(("neighbors", "bandwidth", "references", "features"))
            refs = le.integer("references", low=1, high=MAX_LOCAL_VALUES)
            le.integer("neighbors", low=1, high=refs)
            le.integer("features", low=1, high=MAX_LOCAL_VALUES // refs)
            le.number("bandwidth", positive=True)
        if "cutoff" in model and not (_is_number(model["cutoff"]) and model["cutoff"] > 0):
            r.bad("model.cutoff", "a finite number above 0", model["cutoff"])
        targets = r.items("targets", lambda v: True, "objects")
        if not targets:
            r.fail("targets is empty (a model predicts at least one target)")
        infos = tuple(TargetInfo.from_dict(t, where=where, path=f"targets[{i}].")
                      for i, t in enumerate(targets))
        names = [t.name for t in infos]
        for i, name in enumerate(names):
            if name in names[:i]:
                r.fail(f"targets[{i}].name {name!r} repeats targets[{names.index(name)}].name")
        if "targets" in model and model["targets"] != len(infos):
            r.fail(f"model.targets is {model['targets']} but targets lists {len(infos)}")
        calibration = (Calibration.from_dict(data["calibration"], where=where)
                       if "calibration" in data else None)
        elements = tuple(r.items("elements", _is_int, "integers (atomic numbers)"))
        if not all(1 <= z <= MAX_Z for z in elements):
            r.bad("elements", f"atomic numbers from 1 to {MAX_Z}", list(elements))
        if calibration is not None and len(calibration.std_scale) != len(infos):
            r.fail(f"calibration.std_scale has {len(calibration.std_scale)} values for "
                   f"{len(infos)} targets")
        return cls(
            format=fmt,
            model=model,
            graph=GraphSettings.from_dict(data["graph"], where=where),
            targets=infos,
            elements=elements,
            kind=kind,
            checkpoint_format=r.optional("checkpoint_format", r.integer),
            architecture=r.optional("architecture", r.string),
            store_digest=r.optional("store_digest", r.string),
            package_version=r.optional("package_version", r.string),
            source_sha256=r.optional("source_sha256", r.string),
            inputs=r.optional("inputs", lambda k: r.items(k, _is_str, "strings")),
            outputs=r.optional("outputs", lambda k: r.items(k, _is_str, "strings")),
            exporter=r.optional("exporter", r.mapping),
            parity=(ParityFigures.from_dict(data["parity"], where=where)
                    if data.get("parity") is not None else None),
            calibration=calibration,
            extra=r.extra(cls._KEYS),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # read-only mappings do not pickle: a copy is rebuilt from the document
        return (self.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, with exactly the keys and values the files carry (an
        independent copy: changing it changes nothing here)."""
        out: dict[str, Any] = {}
        if self.kind is not None:
            out["kind"] = self.kind
        out["format"] = self.format
        for key in ("checkpoint_format", "architecture"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["model"] = _plain(self.model)
        out["graph"] = self.graph.to_dict()
        out["targets"] = [t.to_dict() for t in self.targets]
        out["elements"] = list(self.elements)
        for key in ("store_digest", "package_version", "source_sha256"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key in ("inputs", "outputs"):
            if getattr(self, key) is not None:
                out[key] = list(getattr(self, key))
        if self.exporter is not None:
            out["exporter"] = _plain(self.exporter)
        if self.parity is not None or self.is_exported:
            out["parity"] = self.parity.to_dict() if self.parity is not None else None
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return {**out, **_plain(self.extra)}

    def replace(self, **changes: Any) -> ModelMetadata:
        """A copy with ``changes`` (`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ derived facts

    @property
    def is_exported(self) -> bool:
        """Whether this is an exported file's document (its ``kind`` is an exported one)."""
        return self.kind in EXPORTED_KINDS

    @property
    def architecture_name(self) -> str:
        """The paper's name of the architecture: ``architecture``, or for older files that
        lack it the name its constructor arguments give."""
        if self.architecture:
            return self.architecture
        try:
            return architecture_name(self.model)
        except KeyError:  # an architecture this version does not know
            return str(self.model.get("arch", "?"))

    @property
    def members(self) -> int:
        """Ensemble members (1 for a single model)."""
        return int(self.model.get("members", 1))

    @property
    def is_ensemble(self) -> bool:
        """Whether the model is an ensemble (its outputs add the calibrated ``std``)."""
        return "members" in self.model

    @property
    def output_names(self) -> tuple[str, ...]:
        """The model's outputs: ``prediction``, ``embedding`` and for an ensemble ``std``."""
        return ENSEMBLE_OUTPUT_NAMES if self.is_ensemble else OUTPUT_NAMES

    @property
    def embedding_dim(self) -> int:
        """Width D of the ``embedding`` output (MEGNet's: 3 × its dim)."""
        return embedding_width(self.model)

    @property
    def target_names(self) -> list[str]:
        """[T] target names, in output order."""
        return [t.name for t in self.targets]

    @property
    def units(self) -> list[str]:
        """[T] target units."""
        return [t.units for t in self.targets]

    @property
    def target_std(self) -> list[float]:
        """[T] training standard deviations."""
        return [t.std for t in self.targets]


# ------------------------------------------------------------- metadata against the weights


#: Relative tolerance when a recorded number is compared with the float32 buffer it describes
#: (an ensemble's recorded target mean is a float32 mean of its members': ~1e-7 apart).
WEIGHTS_RTOL = 1e-6
#: Module lists with one entry per layer: their indices count ``model.layers`` (MEGNet's
#: blocks are ``node_mlps``; ``norms`` follow the layers where a model has them).
_LAYER_STACKS = ("convs", "norms", "node_mlps")
#: The first layer, whose input is the atom features (Z one-hot ‖ degree one-hot).
_FIRST_LAYERS = ("node_embedding.weight", "pre.weight")


@dataclass(frozen=True)
class WeightsView:
    """What a model file's weights say about themselves, without torch: the shape of every
    named tensor and, on request, the values of a small one.

    Attributes:
        shapes: tensor name (``state_dict`` names: ``degree_classes``,
            ``members.0.target_mean``, …) → shape.
        read: name → its values as a float64 array, or None where they cannot be read (an
            ONNX data type this reader does not decode); only called for small tensors.
        complete: every tensor of the model is named (checkpoints, ``.pt2`` programs and
            TorchScript files hold the whole ``state_dict``). ONNX files are not complete: the
            exporter folds some tensors into constants under other names and keeps one copy
            of identical ones (a member's target scaling equal to another member's).
    """

    shapes: Mapping[str, tuple[int, ...]]
    read: Callable[[str], Any]
    complete: bool

    @classmethod
    def of(cls, tensors: Mapping[str, Any], *, complete: bool = True) -> WeightsView:
        """The view of a ``state_dict``-like mapping of arrays (numpy arrays or tensors: any
        value with ``shape`` that ``numpy.asarray`` reads once on the CPU; other values, such
        as a program's script objects, are left out)."""

        def read(name: str) -> Any:
            import numpy as np

            value = tensors[name]
            if hasattr(value, "detach"):  # a tensor, maybe on a GPU
                value = value.detach().cpu()
            return np.asarray(value, dtype=np.float64)

        return cls({k: tuple(int(n) for n in v.shape) for k, v in tensors.items()
                    if hasattr(v, "shape")}, read, complete)


def check_weights(meta: ModelMetadata, weights: WeightsView, *, where: str) -> None:
    """Refuse metadata that contradicts the weights it travels with (docs/design.md §7, §8).

    A caller builds graphs from the metadata (cutoff, neighbor count, construction), labels and
    counts outputs by it and rules agreement with its target scaling, while the weights compute
    the answer: a file whose two disagree gives confident, wrong predictions. Checked, where
    the file holds the tensor (`WeightsView.complete`): the graph settings against the model's
    arguments; ``max_neighbors`` against the degree classes (``degree_classes``, the
    ``max_neighbors`` buffer, the first layer's input width, which also holds the element
    table's); the cutoff or ``distance_scale`` against the Gaussian expansion's scale, and
    ``gaussians``/``gaussian_width`` against its centres and coefficient; the target count
    against the head and the scaling buffers, each target's mean and std against those
    buffers; ``dim``, ``layers`` and ``heads`` against the parameters' shapes; ``members``
    against the members the weights hold; ``calibration.std_scale`` (and ``local_weight``)
    against the spread's buffers; ``local_error``'s reference and feature counts against its
    tensors.

    Raises:
        DeepergatError: one line naming the first contradicting key and both values.
    """
    _WeightCheck(meta, weights, where).run()


class _WeightCheck:
    """One `check_weights` call: the metadata, the weights and the first contradiction."""

    def __init__(self, meta: ModelMetadata, weights: WeightsView, where: str) -> None:
        self.meta, self.w, self.where = meta, weights, where
        self.model = meta.model
        self.t = len(meta.targets)

    def fail(self, key: str, value: Any, weights: str) -> NoReturn:
        self.refuse(f"{key} is {_show(value)} but {weights}")

    def refuse(self, problem: str) -> NoReturn:
        raise DeepergatError(f"{self.where}: the metadata contradicts the model's weights: "
                             f"{problem}; {_FIX}")

    def targets(self, weights: str) -> NoReturn:
        self.refuse(f"targets lists {self.t} but {weights}")

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.w.shapes.get(name)

    def value(self, name: str) -> Any:
        """The values of a small tensor, or None where the file does not name it."""
        return self.w.read(name) if name in self.w.shapes else None

    def run(self) -> None:
        self.settings()
        prefixes = self.members()
        for prefix in prefixes:
            self.single(prefix)
        self.scaling(prefixes)
        if self.meta.is_ensemble:
            self.spread()

    # -- the metadata's own parts: the graph section and the constructor arguments
    def settings(self) -> None:
        g, model = self.meta.graph, self.model
        if "cutoff" in model and not math.isclose(float(model["cutoff"]), g.cutoff,
                                                  rel_tol=1e-9):
            self.fail("graph.cutoff", g.cutoff, f"model.cutoff is {_show(model['cutoff'])}")
        if "max_neighbors" in model and model["max_neighbors"] != g.max_neighbors:
            self.fail("graph.max_neighbors", g.max_neighbors,
                      f"model.max_neighbors is {_show(model['max_neighbors'])}")
        if model.get("graph", DEFAULT_GRAPH) != g.construction:
            self.fail("graph.construction", g.construction,
                      f"model.graph is {_show(model.get('graph', DEFAULT_GRAPH))}")

    # -- ensembles: the member count
    def members(self) -> list[str]:
        """The name prefixes of the models the weights hold (``""`` for a single one)."""
        held = sorted({int(k.split(".")[1]) for k in self.w.shapes
                       if k.startswith("members.") and k.split(".")[1].isdigit()})
        if not self.meta.is_ensemble:
            if held:
                self.refuse("it describes a single model (no model.members) but the weights "
                            f"hold an ensemble of {held[-1] + 1} members")
            return [""]
        k = self.meta.members
        if not held:
            self.fail("model.members", k, "the weights hold a single model")
        if held[-1] != k - 1 or (self.w.complete and held != list(range(k))):
            self.fail("model.members", k, f"the weights hold {held[-1] + 1} members")
        return [f"members.{i}." for i in held]

    # -- one model's buffers and shapes
    def single(self, p: str) -> None:
        g, model = self.meta.graph, self.model
        classes = g.max_neighbors + 2
        shape = self.shape(p + "degree_classes")
        if shape is not None and shape != (classes,):
            built = f"{shape[0] - 2} ({p}degree_classes holds {shape[0]} classes)" if len(
                shape) == 1 else f"another layout ({p}degree_classes has shape {shape})"
            self.fail("graph.max_neighbors", g.max_neighbors, f"the weights are built for {built}")
        stored = self.value(p + "max_neighbors")
        if stored is not None and stored.shape == () and int(stored) != g.max_neighbors:
            self.fail("graph.max_neighbors", g.max_neighbors,
                      f"the weights are built for {int(stored)} ({p}max_neighbors)")
        for name, want in ((p + "element_table", (MAX_Z, MAX_Z)),
                           (p + "composition_index", (COMPOSITION_SIZE,))):
            if self.shape(name) not in (None, want):
                self.fail("the element table", f"{MAX_Z} elements",
                          f"{name} has shape {self.shape(name)}")
        for name in _FIRST_LAYERS:
            shape = self.shape(p + name)
            if shape is None or len(shape) != 2:
                continue
            if shape[1] != MAX_Z + classes:
                self.fail("graph.max_neighbors", g.max_neighbors,
                          f"the weights' atom features are {shape[1]} wide ({p}{name}: "
                          f"{MAX_Z} elements and {shape[1] - MAX_Z} degree classes, built for "
                          f"max_neighbors {shape[1] - MAX_Z - 2})")
            if "dim" in model and shape[0] != model["dim"]:
                self.fail("model.dim", model["dim"], f"{p}{name} has {shape[0]} rows")
        self.expansion(p)
        for name in (p + "target_mean", p + "target_std", p + "head.bias"):
            if self.shape(name) not in (None, (self.t,)):
                self.targets(f"{name} has shape {self.shape(name)}")
        head = self.shape(p + "head.weight")
        if head is not None and (len(head) != 2 or head[0] != self.t):
            self.targets(f"{p}head.weight has shape {head}")
        self.layers(p)

    def expansion(self, p: str) -> None:
        g, model = self.meta.graph, self.model
        centers = self.shape(p + "expansion.centers")
        if "gaussians" in model and centers not in (None, (model["gaussians"],)):
            self.fail("model.gaussians", model["gaussians"],
                      f"{p}expansion.centers has shape {centers}")
        scale = self.value(p + "expansion.cutoff")
        given = model.get("distance_scale")
        want, key = (g.cutoff, "graph.cutoff") if given is None else (given, "model.distance_scale")
        if scale is not None and scale.size == 1 and not _close(float(scale), float(want)):
            self.fail(key, want, f"the weights scale distances by {float(scale):g} Å "
                                 f"({p}expansion.cutoff)")
        coeff = self.value(p + "expansion.coeff")
        width = model.get("gaussian_width")
        if (coeff is not None and coeff.size == 1 and _is_number(width) and width > 0
                and not _close(float(coeff), -0.5 / float(width) ** 2)):
            self.fail("model.gaussian_width", width,
                      f"the weights' Gaussians have width {(-0.5 / float(coeff)) ** 0.5:g} "
                      f"({p}expansion.coeff)" if float(coeff) < 0 else
                      f"{p}expansion.coeff is {float(coeff):g}")

    def layers(self, p: str) -> None:
        model = self.model
        for stack in _LAYER_STACKS:
            start = p + stack + "."
            held = sorted({int(k[len(start):].split(".")[0]) for k in self.w.shapes
                           if k.startswith(start) and k[len(start):].split(".")[0].isdigit()})
            if not held or "layers" not in model:
                continue
            if held[-1] >= model["layers"] or (self.w.complete and held[-1] != model["layers"] - 1):
                self.fail("model.layers", model["layers"],
                          f"the weights hold {held[-1] + 1} layers ({start}*)")
            for i in held:
                att = self.shape(f"{start}{i}.att")
                if att is not None and "heads" in model and (len(att) != 3
                                                             or att[1] != model["heads"]):
                    self.fail("model.heads", model["heads"],
                              f"{start}{i}.att has shape {att}")

    # -- the target scaling: recorded numbers against the buffers
    def scaling(self, prefixes: list[str]) -> None:
        import numpy as np

        k = self.meta.members  # 1 for a single model
        for kind in ("mean", "std"):
            found = [v for p in prefixes
                     if (v := self.value(f"{p}target_{kind}")) is not None and v.shape == (self.t,)]
            if not found:
                continue
            held = np.stack(found)  # [members that name it, T]
            missing = k - len(found)
            # an ONNX ensemble keeps one copy of identical tensors: a member whose scaling is
            # not named holds one of the named members' values, so the mean lies between these
            lo = (held.sum(0) + missing * held.min(0)) / k
            hi = (held.sum(0) + missing * held.max(0)) / k
            for i, target in enumerate(self.meta.targets):
                got = target.mean if kind == "mean" else target.std
                tol = WEIGHTS_RTOL * (abs(got) + target.std)
                if not lo[i] - tol <= got <= hi[i] + tol:
                    shown = f"{lo[i]:.7g}" if lo[i] == hi[i] else f"{lo[i]:.7g} to {hi[i]:.7g}"
                    self.fail(f"targets[{i}].{kind}", got,
                              f"the weights scale by {shown} (target_{kind})")

    # -- an ensemble's spread: calibration and the local error term
    def spread(self) -> None:
        t, cal = self.t, self.meta.calibration
        if self.shape("std_scale") not in (None, (t,)):
            self.targets(f"std_scale has shape {self.shape('std_scale')}")
        for key, name in (("std_scale", "std_scale"), ("local_weight", "local_weight")):
            recorded = (None if cal is None else
                        cal.std_scale if key == "std_scale" else cal.extra.get(key))
            held = self.value(name)
            if (recorded is None or held is None or not isinstance(recorded, list | tuple)
                    or held.shape != (len(recorded),)
                    or not all(_is_number(v) for v in recorded)):
                continue
            if not all(_close(float(a), float(b)) for a, b in zip(recorded, held, strict=True)):
                self.fail(f"calibration.{key}", list(recorded),
                          f"the weights hold {[float(f'{v:.7g}') for v in held]} ({name})")
        local = self.model.get("local_error")
        names = ("reference_embeddings", "reference_errors", "embedding_center",
                 "embedding_scale", "local_weight")
        if not isinstance(local, Mapping):
            held_names = [n for n in names[:2] if n in self.w.shapes]
            if held_names:
                self.refuse("it records no model.local_error but the weights hold a local "
                            f"error term ({held_names[0]} {self.shape(held_names[0])})")
            return
        r, f = local["references"], local["features"]
        want = {"reference_embeddings": (r, f), "reference_errors": (r, t),
                "embedding_center": (f,), "embedding_scale": (f,), "local_weight": (t,)}
        for name, shape in want.items():
            got = self.shape(name)
            if (got is None and self.w.complete) or got not in (None, shape):
                self.fail("model.local_error", {"references": r, "features": f},
                          f"{name} has shape {got}" if got is not None
                          else f"the weights hold no {name}")


def _close(a: float, b: float) -> bool:
    """Two numbers equal up to float32 rounding (`WEIGHTS_RTOL`)."""
    return math.isclose(a, b, rel_tol=WEIGHTS_RTOL, abs_tol=0.0)
