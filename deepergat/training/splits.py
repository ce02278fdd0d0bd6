"""The train / validation / test structures of a run, and the rules they must meet.

`make_splits` loads the stores' graphs (`deepergat.training.data`) and splits them as the
`DataSettings` say, fixed by the run's seed: the usable structures of ``data`` are shuffled, the
test fraction comes first, then the validation fraction, the rest trains; a separate store
replaces a fraction. `require_validation` is the one rule for runs without a validation split
(docs/design.md §5, "Training recipe"): nothing may look at a validation split that is not
there, so the schedule watches the training MAE, the last epoch is kept and nothing stops
early.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deepergat.contract import Status
from deepergat.errors import DeepergatError, SettingError

from .config import DEFAULT_VAL_FRACTION, TrainConfig
from .data import GraphSet, load_graphs

__all__ = [
    "MAX_TARGET_MAGNITUDE",
    "RunSplits",
    "make_splits",
    "needs_validation",
    "require_validation",
    "resolve_distance_scale",
    "targets_of",
]

log = logging.getLogger(__name__)

#: Largest |target| a run trains on. The model computes in float32 (largest value 3.4e38) and
#: predicts raw · std + mean: a bound of 1e30 leaves eight decades for the raw output, and the
#: squared errors of the metrics stay finite in float64. Larger values are refused before
#: anything trains (a 1e308 target overflowed the scaling and every metric became NaN).
MAX_TARGET_MAGNITUDE = 1e30


@dataclass
class RunSplits:
    """The train / validation / test structures: a graph set and its rows for each.

    Attributes:
        train, val: (graph set, [n] int64 usable rows of it); ``val`` may have no rows.
        test: the same, or None without a test split.
    """

    train: tuple[GraphSet, np.ndarray]
    val: tuple[GraphSet, np.ndarray]
    test: tuple[GraphSet, np.ndarray] | None = None

    def ids(self) -> dict[str, list[str]]:
        """Split name → the structure ids in it (``splits.json``)."""
        out = {}
        for name in ("train", "val", "test"):
            part = getattr(self, name)
            if part is not None:
                g, rows = part
                out[name] = [g.ids[r] for r in rows]
        return out


def targets_of(g: GraphSet, name: str, rows: np.ndarray) -> np.ndarray:
    """[n] float64 values of target ``name`` for ``rows``.

    Raises:
        DeepergatError: the store has no such target, or a value is NaN, infinite or
            beyond ±`MAX_TARGET_MAGNITUDE`.
    """
    if not g.targets:
        raise DeepergatError(
            f"{g.source}: the store has no targets; pack it with --target NAME[:UNIT]"
        )
    if name not in g.targets:
        raise DeepergatError(
            f"{g.source}: no target {name!r}; available: {', '.join(sorted(g.targets))}"
        )
    y = g.targets[name][rows]
    bad = ~np.isfinite(y)
    if bad.any():
        ids = [g.ids[r] for r in rows[bad]]
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        raise DeepergatError(
            f"{g.source}: target {name!r} is NaN or infinite for {len(ids)} structures "
            f"(ids {', '.join(ids[:10])}{more}); drop them or fix their values"
        )
    huge = np.abs(y) > MAX_TARGET_MAGNITUDE
    if huge.any():
        ids = [g.ids[r] for r in rows[huge]]
        more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
        raise DeepergatError(
            f"{g.source}: target {name!r} is beyond ±{MAX_TARGET_MAGNITUDE:g} for {len(ids)} "
            f"structures (ids {', '.join(ids[:10])}{more}; largest "
            f"{float(y[huge][np.argmax(np.abs(y[huge]))]):g}), more than a float32 model can "
            "scale; drop them, fix their values or train on them in other units"
        )
    return y


def _usable_rows(g: GraphSet) -> np.ndarray:
    rows = g.usable
    skipped = len(g) - len(rows)
    if skipped:
        bad = [g.ids[r] for r in np.flatnonzero(g.status != Status.OK)[:10]]
        log.warning("%s: %d structures fail the graph checks and are left out (ids %s%s)",
                    g.source, skipped, ", ".join(bad), " …" if skipped > 10 else "")
    return rows


def _fraction(value: float | None, setting: str) -> float:
    v = 0.0 if value is None else float(value)
    if not 0.0 <= v < 1.0:
        raise SettingError(f"{{{setting}}} {value}: must lie in [0, 1)")
    return v


def needs_validation(cfg: TrainConfig) -> bool:
    """Whether the recipe looks at the validation split: a plateau schedule on the validation
    MAE, keeping the best epoch, or stopping early."""
    t = cfg.trainer
    monitored = t.lr_schedule == "plateau" and t.lr_monitor == "val"
    return monitored or t.keep == "best" or t.early_stop is not None


def require_validation(cfg: TrainConfig, splits: RunSplits) -> None:
    """The one rule for a run without validation structures.

    Raises:
        SettingError: ``splits.val`` is empty but the recipe looks at it (`needs_validation`).
    """
    g, rows = splits.val
    if len(rows) or not needs_validation(cfg):
        return
    t = cfg.trainer
    stop = t.early_stop is not None
    raise SettingError(
        f"{g.source}: no validation structures, but lr_monitor is {t.lr_monitor!r} and keep "
        f"is {t.keep!r}" + (f" and early_stop is {t.early_stop}" if stop else "")
        + "; give {val_fraction} > 0 (or {val_data}), or set lr_monitor: train and keep: last"
        + (" and no {early_stop}" if stop else "")
    )


def make_splits(cfg: TrainConfig, *, progress: Callable[[int], None] | None = None,
                require_val: bool = True) -> RunSplits:
    """Load graphs and split them as the configuration says (fixed by the seed).

    Args:
        cfg: the run configuration (its ``dataset`` and ``run.seed``).
        progress: called with structure counts while graphs are built.
        require_val: apply `require_validation` (a cross-validation checks its own).

    Raises:
        DeepergatError: unreadable stores, missing or non-finite targets, an empty split.
        SettingError: fractions out of range or given with a store, no validation split
            where the recipe needs one.
    """
    d = cfg.dataset
    graphs: dict[str, GraphSet] = {}

    def get(path: str) -> GraphSet:
        if path not in graphs:
            graphs[path] = load_graphs(path, cutoff=d.cutoff, max_neighbors=d.max_neighbors,
                                       graph=d.graph, cache_dir=d.cache_dir, progress=progress)
        return graphs[path]

    if d.val_data and d.val_fraction:
        raise SettingError("give either {val_data} or {val_fraction}, not both")
    if d.test_data and d.test_fraction:
        raise SettingError("give either {test_data} or {test_fraction}, not both")
    main = get(d.data)
    rows = _usable_rows(main)
    targets_of(main, d.target, rows)
    rng = np.random.default_rng(cfg.run.seed)
    rows = rows[rng.permutation(len(rows))]
    val_f = (DEFAULT_VAL_FRACTION if (d.val_data is None and d.val_fraction is None)
             else d.val_fraction)
    val_f = _fraction(val_f if d.val_data is None else 0.0, "val_fraction")
    test_f = _fraction(d.test_fraction if d.test_data is None else 0.0, "test_fraction")
    n_test = round(test_f * len(rows))
    n_val = round(val_f * len(rows))
    test_rows, val_rows, train_rows = (
        rows[:n_test], rows[n_test : n_test + n_val], rows[n_test + n_val :]
    )
    val = (main, val_rows)
    if d.val_data:
        g = get(d.val_data)
        val = (g, _usable_rows(g))
    test = (main, test_rows) if n_test else None
    if d.test_data:
        g = get(d.test_data)
        test = (g, _usable_rows(g))
    splits = RunSplits(train=(main, train_rows), val=val, test=test)
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is None:
            continue
        g, r = part
        if name == "val" and require_val:
            require_validation(cfg, splits)
        if len(r) == 0 and name != "val":
            raise DeepergatError(
                f"{g.source}: the {name} split is empty ({len(main.usable)} usable structures); "
                "use more data or other split fractions"
            )
        if len(r):
            targets_of(g, d.target, r)
    return splits


def resolve_distance_scale(cfg: TrainConfig, g: GraphSet, rows: np.ndarray) -> float | None:
    """The model's ``distance_scale`` for this run: None (the cutoff), the given length, or the
    longest edge of the given (training) rows, rounded up to 1e-4 Å.

    Raises:
        DeepergatError: ``data`` asked for, but the rows have no edges.
    """
    scale = cfg.network.distance_scale
    if scale == "cutoff":
        return None
    if scale == "data":
        longest = g.max_distance(rows)
        if longest <= 0:
            raise DeepergatError(f"{g.source}: distance_scale data: the training graphs have no "
                                 "edges; use distance_scale: cutoff")
        return math.ceil(longest * 1e4) / 1e4
    return float(scale)
