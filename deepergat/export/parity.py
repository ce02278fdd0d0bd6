"""Parity between two ways of computing a prediction (docs/design.md §10).

Two predictions y₁ (the reference) and y₂ of the same structure agree when

    |y₁ − y₂| ≤ 1e-5 · std + 4 · ulp₃₂(|y₁|)

with std the target's training standard deviation (stored in the model) and ulp₃₂ one float32
step at |y₁|. `tolerance` and `agree` implement that rule for everyone (export parity, rank and
chunk invariance, resume); `parity_cases` builds the batches an export is checked on, and
`compare` turns reference and candidate outputs into the figures stored in the exported file.

numpy only: the screening path imports this module without torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deepergat.contract import DEFAULT_GRAPH, MAX_Z, GraphConstruction
from deepergat.graphs import build_inputs
from deepergat.io.store import StructureBatch

__all__ = [
    "AGREEMENT_STD_FACTOR",
    "AGREEMENT_ULPS",
    "ParityCase",
    "ParityResult",
    "agree",
    "compare",
    "parity_cases",
    "tolerance",
]

#: The rule's relative part: a fraction of the target's training std.
AGREEMENT_STD_FACTOR = 1e-5
#: The rule's rounding part: float32 steps at |y₁|.
AGREEMENT_ULPS = 4
#: Largest batch of the parity plan ("a batch of thousands").
BIG_BATCH = 2048
#: Batch size of the chunked pass over the check structures.
CHUNK = 64

#: (prediction [C, T], embedding [C, D]) or, for an ensemble, (..., std [C, T]).
Outputs = tuple[np.ndarray, ...]


def tolerance(reference: np.ndarray, std: np.ndarray | Sequence[float]) -> np.ndarray:
    """Allowed |y₁ − y₂| per prediction.

    Args:
        reference: [C, T] y₁, in the targets' units.
        std: [T] training standard deviations of the targets, same units.

    Returns:
        [C, T] float64: 1e-5 · std + 4 · ulp₃₂(|y₁|).
    """
    y = np.abs(np.asarray(reference, dtype=np.float32))
    ulp = np.spacing(y).astype(np.float64)
    return AGREEMENT_STD_FACTOR * np.asarray(std, dtype=np.float64) + AGREEMENT_ULPS * ulp


def agree(
    reference: np.ndarray, candidate: np.ndarray, std: np.ndarray | Sequence[float]
) -> np.ndarray:
    """[C, T] bool: where candidate agrees with reference by the rule (non-finite never agrees,
    except NaN against NaN, which screening writes for failed structures)."""
    y1 = np.asarray(reference, dtype=np.float64)
    y2 = np.asarray(candidate, dtype=np.float64)
    ok = np.abs(y1 - y2) <= tolerance(reference, std)
    return ok | (np.isnan(y1) & np.isnan(y2))


@dataclass
class ParityCase:
    """One batch of a parity check.

    Attributes:
        label: what the batch exercises (``batch-2048``, ``chunk-3``, ``self-loop-only``, ...).
        inputs: the model inputs (docs/design.md layout).
        ids: [C] structure ids, in batch order.
    """

    label: str
    inputs: dict[str, np.ndarray]
    ids: list[str]


def _case(label: str, batch: StructureBatch, settings: Mapping[str, Any]) -> ParityCase:
    g = build_inputs(batch, **settings, max_z=MAX_Z, overlap_threshold=None)
    return ParityCase(label, g.inputs, [batch.ids[int(r)] for r in g.rows])


def parity_cases(
    structures: StructureBatch,
    *,
    cutoff: float,
    max_neighbors: int,
    graph: GraphConstruction = DEFAULT_GRAPH,
    edge_cases: Mapping[str, StructureBatch] | None = None,
    big_batch: int = BIG_BATCH,
    chunk: int = CHUNK,
) -> list[ParityCase]:
    """The batches an export is checked on.

    * the check structures in chunks of ``chunk`` (every structure, batched like screening);
    * one batch of ``big_batch`` structures (the check structures, repeated when fewer):
      sizes far beyond the example the exporter saw;
    * each edge case on its own (size-1 dimensions, self-loop-only atoms).

    Structures the graph builder rejects (status ≠ 0: an element outside Z = 1..MAX_Z, bad
    geometry) are left out.

    Args:
        structures: the check structures (≥ 256 for an export).
        cutoff, max_neighbors, graph: the model's graph settings.
        edge_cases: label -> batch (`deepergat.export.samples.edge_case_structures`).
        big_batch: size of the large batch (0: none).
        chunk: structures per chunk.
    """
    settings = {"cutoff": cutoff, "max_neighbors": max_neighbors, "graph": graph}
    cases = []
    for k, a in enumerate(range(0, len(structures), chunk)):
        rows = np.arange(a, min(a + chunk, len(structures)))
        cases.append(_case(f"chunk-{k}", structures.select(rows), settings))
    if big_batch and len(structures):
        rows = np.arange(big_batch) % len(structures)
        cases.append(_case(f"batch-{big_batch}", structures.select(rows), settings))
    for label, batch in (edge_cases or {}).items():
        cases.append(_case(label, batch, settings))
    return [c for c in cases if c.ids]


@dataclass
class ParityResult:
    """The figures of one parity check (stored in the exported file's metadata).

    Attributes:
        passed: every prediction agreed by the rule.
        n_structures: distinct structures checked.
        n_predictions: predictions compared (structures × batches they appeared in).
        batches: number of batches.
        max_abs_diff: [T] largest |y₁ − y₂| per target.
        max_allowed: [T] the tolerance where |y₁ − y₂| / tolerance is largest, per target.
        worst_ratio: largest |y₁ − y₂| / tolerance over everything (≤ 1 when passed).
        worst: ``{"case", "id", "target"}`` where the worst ratio occurred.
        embedding_max_abs_diff: largest |Δ| of the [C, D] embeddings (reported, not ruled).
        failures: up to 5 disagreements ``{"case", "id", "target", "reference", "candidate",
            "allowed"}``.
        rule: the agreement rule in words.
        backend: what computed the candidate values.
    """

    passed: bool
    n_structures: int
    n_predictions: int
    batches: int
    max_abs_diff: list[float]
    max_allowed: list[float]
    worst_ratio: float
    worst: dict[str, Any]
    embedding_max_abs_diff: float
    failures: list[dict[str, Any]] = field(default_factory=list)
    rule: str = f"|y1 - y2| <= {AGREEMENT_STD_FACTOR:g} * std + {AGREEMENT_ULPS} * ulp32(|y1|)"
    backend: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the metadata document; non-finite numbers become None)."""
        return _finite(asdict(self))

    def summary(self) -> str:
        """One line for logs and error messages."""
        diffs = ", ".join(f"{d:.3g}" for d in self.max_abs_diff)
        allowed = ", ".join(f"{a:.3g}" for a in self.max_allowed)
        return (
            f"{self.n_structures} structures in {self.batches} batches: max |Δ| {diffs} "
            f"(allowed {allowed}), worst ratio {self.worst_ratio:.3g}"
        )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _spread(outputs: Sequence[Any]) -> np.ndarray | None:
    """The std output of an outputs tuple, or None (single models)."""
    if len(outputs) > 2 and outputs[2] is not None:
        return np.asarray(outputs[2])
    return None


class _Tally:
    """What `compare` gathers over the cases: the largest differences, the worst case relative
    to its tolerance, the first failures."""

    def __init__(self, std: np.ndarray, names: list[str]) -> None:
        self.std, self.names = std, names
        t = len(std)
        self.max_diff = np.zeros(t)
        self.allowed_at_worst = np.full(t, np.nan)
        self.ratio_t = np.zeros(t)
        self.worst: dict[str, Any] = {}
        self.worst_ratio = 0.0
        self.emb_diff = 0.0
        self.failures: list[dict[str, Any]] = []
        self.passed = True

    def wrong_shapes(self, case: ParityCase, got: tuple[Any, ...], want: tuple[Any, ...]) -> None:
        self.passed = False
        self.failures.append({"case": case.label, "id": None, "target": None,
                              "error": f"output shapes {got[0]}, {got[1]}; expected "
                                       f"{want[0]}, {want[1]}"})
        self.worst_ratio = float("inf")

    def add(self, case: ParityCase, y1: np.ndarray, e1: np.ndarray, y2: np.ndarray,
            e2: np.ndarray) -> None:
        """One case's [C, T] predictions and [C, D] embeddings, reference and candidate."""
        diff = np.abs(y1.astype(np.float64) - y2.astype(np.float64))
        tol = tolerance(y1, self.std)
        ratio = np.where(np.isfinite(diff), diff / tol, np.inf)
        if e1.size:
            ed = np.abs(e1.astype(np.float64) - e2.astype(np.float64))
            self.emb_diff = max(self.emb_diff,
                                float(np.nanmax(np.where(np.isfinite(ed), ed, np.inf))))
        if diff.size:
            self._track_worst(case, diff, tol, ratio)
        bad = ~agree(y1, y2, self.std)
        if bad.any():
            self.passed = False
            for c, j in zip(*np.nonzero(bad), strict=True):
                if len(self.failures) >= 5:
                    break
                self.failures.append({
                    "case": case.label, "id": case.ids[int(c)], "target": self.names[int(j)],
                    "reference": float(y1[c, j]), "candidate": float(y2[c, j]),
                    "allowed": float(tol[c, j]),
                })

    def _track_worst(self, case: ParityCase, diff: np.ndarray, tol: np.ndarray,
                     ratio: np.ndarray) -> None:
        t = len(self.std)
        self.max_diff = np.maximum(self.max_diff,
                                   np.where(np.isfinite(diff), diff, np.inf).max(0))
        arg = ratio.argmax(0)
        for j in range(t):
            r = float(ratio[arg[j], j])
            if r >= self.ratio_t[j]:
                self.ratio_t[j] = r
                self.allowed_at_worst[j] = float(tol[arg[j], j])
        flat = int(ratio.argmax())
        r = float(ratio.flat[flat])
        if r > self.worst_ratio or not self.worst:
            self.worst_ratio = max(self.worst_ratio, r)
            c, j = divmod(flat, t)
            self.worst = {"case": case.label, "id": case.ids[c], "target": self.names[j]}


def compare(
    cases: Sequence[ParityCase],
    reference: Sequence[Outputs],
    candidate: Callable[[Mapping[str, np.ndarray]], Outputs] | Sequence[Outputs],
    std: Sequence[float],
    *,
    target_names: Sequence[str] = (),
    backend: str = "",
) -> ParityResult:
    """Compare candidate outputs with reference outputs case by case.

    An ensemble's spread is ruled like its predictions (same tolerance, reported as
    ``<target>_std``).

    Args:
        cases: the parity batches.
        reference: per case, (prediction [C, T], embedding [C, D][, std [C, T]]) of the
            reference.
        candidate: a function inputs -> outputs (called once per case), or the outputs.
        std: [T] target training standard deviations.
        target_names: [T] names, for the report.
        backend: what computed the candidate, for the report.

    Returns:
        `ParityResult`; a wrong output shape or a non-finite value counts as a failure.
    """
    std_arr = np.asarray(std, dtype=np.float64)
    names = list(target_names) or [str(k) for k in range(len(std_arr))]
    spread = bool(reference) and _spread(reference[0]) is not None
    if spread:
        std_arr = np.concatenate([std_arr, std_arr])
        names = [*names, *(f"{n}_std" for n in names)]
    tally = _Tally(std_arr, names)
    ids_seen: set[str] = set()
    n_pred = 0
    for k, case in enumerate(cases):
        ref = reference[k]
        got = candidate(case.inputs) if callable(candidate) else candidate[k]
        y1, e1 = ref[0], ref[1]
        y2, e2 = np.asarray(got[0]), np.asarray(got[1])
        if spread:
            s2 = _spread(got)
            if s2 is None:
                s2 = np.full_like(y2, np.nan)
            y1 = np.concatenate([y1, _spread(ref)], axis=1)
            y2 = np.concatenate([y2, np.asarray(s2)], axis=1) if s2.shape == y2.shape else s2
        ids_seen.update(case.ids)
        n_pred += len(case.ids)
        if y2.shape != y1.shape or e2.shape != e1.shape:
            tally.wrong_shapes(case, (y2.shape, e2.shape), (y1.shape, e1.shape))
            continue
        tally.add(case, y1, e1, y2, e2)
    return ParityResult(
        passed=tally.passed,
        n_structures=len(ids_seen),
        n_predictions=n_pred,
        batches=len(cases),
        max_abs_diff=[float(v) for v in tally.max_diff],
        max_allowed=[float(v) for v in tally.allowed_at_worst],
        worst_ratio=float(tally.worst_ratio),
        worst=tally.worst,
        embedding_max_abs_diff=float(tally.emb_diff),
        failures=tally.failures,
        backend=backend,
    )
