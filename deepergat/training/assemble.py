"""K trained members assembled into one `DeeperGATGNNEnsemble`, its spread calibrated.

`assemble` checks that the members can form one model (same architecture, graph settings,
targets and units) and stacks their weights. `set_local_error` gives it the local error term
from out-of-fold errors. `calibrate` fits the spread's factors per target on structures no
member trained on (`deepergat.training.uncertainty`) and reports how well the calibrated spread
describes the errors there. `deepergat.training.ensembles.train_ensemble` uses all three.

Why calibrate on structures no member saw, and not on out-of-fold predictions: in a K-fold
ensemble every training structure was seen by K − 1 of the members, so the members' spread
there is the spread of K − 1 fits and one prediction — not the spread on a new structure, where
all K members predict. A shared validation split, held out of every member's training, gives the
spread exactly as screening will see it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from deepergat.architectures import UNWRITTEN
from deepergat.errors import DeepergatError
from deepergat.metadata import GraphSettings
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.ensemble import DeeperGATGNNEnsemble

from .data import GraphSet, require_finite
from .uncertainty import (
    COVERAGE,
    calibration_scale,
    combined_spread,
    local_weight,
    uncertainty_metrics,
)

__all__ = ["assemble", "calibrate", "ensemble_outputs", "member_outputs", "member_predictions",
           "set_local_error"]

log = logging.getLogger(__name__)

#: Constructor arguments members may differ in (how a layer computes, not what it computes).
_FREE = ("agat_form",)


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, list) or len(value) <= 8 else (
        f"[{', '.join(map(repr, value[:8]))}, … {len(value)} in all]")


def _graph(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A member's graph settings as the neighbor search uses them (files written before the
    translation rule was recorded build the same graphs as files that record it)."""
    return GraphSettings.from_dict(data["graph"], where=name).as_kwargs()


def assemble(
    members: Sequence[Mapping[str, Any]],
    *,
    names: Sequence[str],
    allow_element_differences: bool = False,
) -> tuple[DeeperGATGNNEnsemble, list[int]]:
    """One ensemble from K member checkpoint dicts.

    Args:
        members: K ≥ 2 checkpoint dicts (`deepergat.nn.checkpoint.read_checkpoint`), single models.
        names: K labels for messages (their paths).
        allow_element_differences: members trained on different splits may have seen
            different elements; then the ensemble's elements are those every member saw.

    Returns:
        (the ensemble in eval mode with a raw spread (factor 1), the elements every member
        saw in training).

    Raises:
        DeepergatError: fewer than 2 members, an ensemble among them, or members that differ
            in architecture, graph settings, targets, units or (unless allowed) elements; the
            message names the first such member and setting.
    """
    if len(members) < 2:
        raise DeepergatError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for name, data in zip(names, members, strict=True):
        if "members" in data["model"]:
            raise DeepergatError(f"{name}: is an ensemble already; give single models")

    def config(data: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data["model"].items() if k not in _FREE}

    for name, data in zip(names[1:], members[1:], strict=True):
        checks = [("graph settings", _graph(data, name), _graph(first, names[0])),
                  ("targets", list(data["targets"]), list(first["targets"])),
                  ("units", list(data["units"]), list(first["units"]))]
        if not allow_element_differences:
            checks.append(("elements", list(data["elements"]), list(first["elements"])))
        mine, theirs = config(data), config(first)
        checks += [(f"model setting {key}", mine.get(key, UNWRITTEN.get(key)),
                    theirs.get(key, UNWRITTEN.get(key)))
                   for key in sorted(set(mine) | set(theirs))]
        for what, value, want in checks:
            if value != want:
                raise DeepergatError(
                    f"{name}: cannot join an ensemble with {names[0]}: {what} "
                    f"{_describe(value)} vs {_describe(want)}"
                )
    elements = sorted(set.intersection(*(set(int(z) for z in d["elements"]) for d in members)))
    every = sorted(set().union(*(set(int(z) for z in d["elements"]) for d in members)))
    if elements != every:
        log.warning("members saw different elements in training; the ensemble counts as seen "
                    "only the %d that every member saw (of %d)", len(elements), len(every))
    ensemble = DeeperGATGNNEnsemble(members=len(members), **dict(first["model"]))
    for member, data in zip(ensemble.members, members, strict=True):
        member.load_state_dict(data["state_dict"])
    ensemble.set_agat_form(first["model"].get("agat_form", "rewritten"))
    return ensemble.eval(), elements


def member_outputs(
    model: DeeperGATGNNEnsemble | DeeperGATGNN, g: GraphSet, rows: np.ndarray, *,
    batch_size: int = 100, device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """([K, n, T] float64 predictions, [K, n, D] float32 embeddings) of each member for usable
    rows of a graph set."""
    members = list(model.members) if isinstance(model, DeeperGATGNNEnsemble) else [model]
    preds, embs = [], []
    with torch.no_grad():
        for member in members:
            member.eval()
            parts = [member(*g.tensors(rows[a : a + batch_size], device).values())
                     for a in range(0, len(rows), batch_size)]
            preds.append(torch.cat([p for p, _ in parts]).double().cpu().numpy())
            embs.append(torch.cat([e for _, e in parts]).float().cpu().numpy())
    preds_k, embs_k = np.stack(preds), np.stack(embs)
    # a spread, calibration or reference built on an overflowed output would be NaN
    require_finite(preds_k, g, rows, what="an ensemble member", axis=1)
    require_finite(embs_k, g, rows, what="an ensemble member's embedding", axis=1)
    return preds_k, embs_k


def member_predictions(
    model: DeeperGATGNNEnsemble | DeeperGATGNN, g: GraphSet, rows: np.ndarray, *,
    batch_size: int = 100, device: torch.device | str = "cpu",
) -> np.ndarray:
    """[K, n, T] float64 predictions of each member for usable rows of a graph set."""
    return member_outputs(model, g, rows, batch_size=batch_size, device=device)[0]


def ensemble_outputs(
    ensemble: DeeperGATGNNEnsemble, g: GraphSet, rows: np.ndarray, *, batch_size: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """([n, T] mean, [n, T] raw member spread, [n, T] local error ê; zeros without the term)
    of an ensemble on usable rows, float64."""
    preds, embs = member_outputs(ensemble, g, rows, batch_size=batch_size)
    with torch.no_grad():
        local = ensemble.local_error(torch.from_numpy(embs)).double().numpy()
    return preds.mean(0), preds.std(0, ddof=1), local


def set_local_error(
    ensemble: DeeperGATGNNEnsemble, g: GraphSet, rows: np.ndarray, errors: np.ndarray, *,
    neighbors: int, batch_size: int = 100,
) -> None:
    """Give an ensemble its local error term (`DeeperGATGNNEnsemble.set_local_error`).

    Args:
        ensemble: the assembled ensemble.
        g, rows: the reference structures (usable rows): training structures whose errors
            are out-of-fold, e.g. every training structure of a K-fold cross-validation.
        errors: [n, T] their out-of-fold |errors|, in the targets' units.
        neighbors: references averaged per structure (capped at n).

    Raises:
        DeepergatError: fewer than 2 references, or errors that are not finite.
    """
    errors = np.abs(np.asarray(errors, dtype=np.float64)).reshape(len(rows), -1)
    if len(rows) < 2 or not np.isfinite(errors).all():
        raise DeepergatError(f"the local error term needs at least 2 reference structures "
                             f"with finite errors, got {len(rows)}")
    _, embs = member_outputs(ensemble, g, rows, batch_size=batch_size)
    ensemble.set_local_error(torch.from_numpy(embs), torch.from_numpy(errors),
                             neighbors=min(int(neighbors), len(rows)))


def calibrate(
    ensemble: DeeperGATGNNEnsemble, g: GraphSet, rows: np.ndarray, y: np.ndarray, *,
    target_names: Sequence[str], source: str, batch_size: int = 100,
) -> dict[str, Any]:
    """Fit the ensemble's spread factors on structures no member trained on; set them.

    Args:
        ensemble: the assembled ensemble (its factors are overwritten).
        g, rows: the calibration structures (usable rows of a graph set).
        y: [n, T] their true values.
        target_names: [T] names, for the report.
        source: where the structures came from, for the report.

    Returns:
        The calibration document stored in the checkpoint: ``std_scale`` [T], ``coverage``
        (the target share of |error| ≤ 2σ), ``n``, ``source``, and per target the metrics of
        the calibrated spread on these structures (``coverage_1sigma``, ``coverage_2sigma``,
        ``spearman_std_abs_error``, ``mean_std``, ``mae``).

    Raises:
        DeepergatError: fewer than 20 calibration structures.
    """
    if len(rows) < 20:
        raise DeepergatError(
            f"{source}: {len(rows)} structures cannot calibrate an ensemble's spread; give a "
            "validation split of at least 20 structures"
        )
    mean, raw, local = ensemble_outputs(ensemble, g, rows, batch_size=batch_size)
    y = np.asarray(y, dtype=np.float64).reshape(mean.shape)
    doc: dict[str, Any] = {"method": "quantile of |y - mean| / (2 std_raw)"}
    if ensemble.neighbors:
        weight = local_weight(y, mean, raw, local)
        ensemble.set_local_weight(torch.as_tensor(weight))
        raw = combined_spread(raw, local, weight)
        doc = {"method": "local_weight by Gaussian likelihood, then the quantile of |y - mean| / "
                         "(2 sqrt(std_raw^2 + (local_weight * local_error)^2))",
               "local_weight": [float(w) for w in weight],
               "local_neighbors": ensemble.neighbors,
               "local_references": int(ensemble.reference_errors.shape[0])}
    scale = calibration_scale(y, mean, raw)
    ensemble.set_std_scale(torch.as_tensor(scale))
    per_target = {}
    for j, name in enumerate(target_names):
        m = uncertainty_metrics(y[:, j], mean[:, j], raw[:, j] * scale[j])
        per_target[str(name)] = {"mae": float(np.abs(y[:, j] - mean[:, j]).mean()), **m}
    return {"std_scale": [float(s) for s in scale], "coverage": COVERAGE, "n": len(rows),
            "source": source, **doc, "metrics": per_target}
