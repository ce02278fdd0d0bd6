"""The within-rank pipeline with a numpy stand-in predictor: order, statuses 1-7, flags, batch
budget (by each structure's real width), chunk-size and worker-mode invariance, errors from any
stage, and memory failures (an allocation error, a killed worker) that cost one structure
status 10, never the run."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from screen_helpers import SPECIAL, write_screen_store

from deepergat.contract import MAX_Z, Status
from deepergat.graphs import build_inputs
from deepergat.io.store import Store, StructureBatch
from deepergat.screening.mpi import ChunkSource
from deepergat.screening.pipeline import FeaturizeSettings, Pipeline, featurize, split_batches
from deepergat.screening.plan import make_plan
from deepergat.screening.predictions import Rows

SETTINGS = FeaturizeSettings(cutoff=6.0, max_neighbors=12, max_atoms=1000, max_z=MAX_Z,
                             overlap_threshold=0.1, seen_elements=tuple(range(1, 84)))


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class SumPredictor:
    """Prediction = Σ over a crystal's atoms of Z + mean edge distance: exact in float32 for
    these sizes, so any batching gives the same numbers; NaN for crystals containing Z = 79."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        self.calls += 1
        z = inputs["atomic_numbers"].astype(np.float64)
        mask = inputs["crystal_mask"]
        atoms = inputs["crystal_atoms"]
        total = (z[atoms] * mask).sum(1)
        has_gold = ((z[atoms] == 79) & mask).any(1)
        d = inputs["distances"].astype(np.float64)
        real = inputs["neighbor_mask"].copy()
        real[:, 0] = False
        per_atom = d.sum(1) / np.maximum(real.sum(1), 1)
        mean_d = (per_atom[atoms] * mask).sum(1) / mask.sum(1)
        pred = np.round(total + mean_d, 3)
        pred[has_gold] = np.inf
        emb = np.stack([total, mask.sum(1)], 1)
        return pred[:, None].astype(np.float32), emb.astype(np.float32), None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_screen_store(tmp_path_factory.mktemp("pipe") / "s.h5", n_candidates=91)


class SpreadPredictor(SumPredictor):
    """`SumPredictor` with an ensemble's spread: σ = 0.01 × the crystal's atom count, NaN for
    crystals with more than 12 atoms (a non-finite spread is status 7 like a prediction)."""

    def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        pred, emb, _ = super().predict(inputs)
        n = inputs["crystal_mask"].sum(1).astype(np.float32)
        std = np.where(n > 12, np.nan, 0.01 * n)[:, None].astype(np.float32)
        return pred, emb, std


def run(store: Path, chunk_size: int, *, workers: int = 0, embeddings: bool = True,
        order: list[int] | None = None, predictor: SumPredictor | None = None,
        **kw: object) -> dict[int, Rows]:
    with Store(store) as s:
        plan = make_plan(s.n_atoms, chunk_size)
    out: dict[int, Rows] = {}
    predictor = predictor or SumPredictor()
    pipe = Pipeline(store, plan, predictor, SETTINGS, n_targets=1,
                    embedding_dim=2 if embeddings else None, workers=workers,
                    spread=isinstance(predictor, SpreadPredictor), **kw)
    todo = order if order is not None else list(range(plan.n_chunks))
    stats = pipe.run(ChunkSource(todo), lambda k, a, rows: out.__setitem__(k, rows))
    assert stats.chunks == len(todo) and stats.structures == sum(len(r) for r in out.values())
    return out


def joined(parts: dict[int, Rows]) -> Rows:
    ks = sorted(parts)
    return Rows(
        index=np.concatenate([parts[k].index for k in ks]),
        ids=[i for k in ks for i in parts[k].ids],
        status=np.concatenate([parts[k].status for k in ks]),
        flags=np.concatenate([parts[k].flags for k in ks]),
        predictions=np.concatenate([parts[k].predictions for k in ks]),
        embeddings=np.concatenate([parts[k].embeddings for k in ks]),  # type: ignore[misc]
        std=(np.concatenate([parts[k].std for k in ks])  # type: ignore[misc]
             if parts[ks[0]].std is not None else None),
    )


def test_every_status_and_flag(store: Path) -> None:
    rows = joined(run(store, 16))
    np.testing.assert_array_equal(rows.index, np.arange(100))
    by_id = dict(zip(rows.ids, range(len(rows)), strict=True))
    for sid, (_, status, flags) in SPECIAL.items():
        k = by_id[sid]
        assert (rows.status[k], rows.flags[k]) == (status, flags), sid
        assert np.isnan(rows.predictions[k]).all() == (status != 0)
    # Status 7: the stand-in predicts inf for gold-bearing crystals (B = Au in the candidates).
    gold = [k for k in range(len(rows)) if rows.status[k] == 7]
    assert gold, "no candidate with Au: pick another seed"
    assert np.isnan(rows.predictions[gold]).all() and np.isnan(rows.embeddings[gold]).all()
    ok = rows.status == 0
    assert np.isfinite(rows.predictions[ok]).all() and np.isfinite(rows.embeddings[ok]).all()


def test_an_ensembles_spread_travels_with_its_predictions(store: Path) -> None:
    plain = joined(run(store, 16))
    assert plain.std is None
    rows = joined(run(store, 16, predictor=SpreadPredictor()))
    with Store(store) as s:
        n_atoms = s.n_atoms
    nan_spread = (plain.status == 0) & (n_atoms > 12)
    assert nan_spread.any(), "no candidate over 12 atoms: pick another seed"
    np.testing.assert_array_equal(rows.status, np.where(nan_spread, 7, plain.status))
    ok = rows.status == 0
    want = np.float32(0.01) * n_atoms[ok].astype(np.float32)
    np.testing.assert_array_equal(rows.std[ok, 0], want)
    assert np.isnan(rows.std[~ok]).all() and np.isnan(rows.predictions[~ok]).all()
    np.testing.assert_array_equal(rows.predictions[ok], plain.predictions[ok])


def test_chunk_size_order_and_worker_processes_do_not_matter(store: Path) -> None:
    ref = joined(run(store, 100))
    for chunk, order, workers in [(2, None, 0), (13, [7, 0, 3, 1, 6, 2, 4, 5], 0),
                                  (33, None, 2)]:
        got = joined(run(store, chunk, order=order, workers=workers, batch_atoms=100))
        assert got.ids == ref.ids
        np.testing.assert_array_equal(got.status, ref.status)
        np.testing.assert_array_equal(got.flags, ref.flags)
        np.testing.assert_array_equal(got.predictions, ref.predictions)


def test_small_batch_budget_gives_more_batches_same_numbers(store: Path) -> None:
    ref = joined(run(store, 50))
    got = joined(run(store, 50, batch_atoms=64, batch_edges=64 * 13))
    np.testing.assert_array_equal(got.predictions, ref.predictions)


def test_split_batches_respects_the_budget() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(0, 60, 500)
    n[10] = 5000  # over max_atoms: costs nothing
    spans = split_batches(n, max_atoms=1000, max_neighbors=12, batch_atoms=256,
                          batch_edges=256 * 13)
    assert spans[0][0] == 0 and spans[-1][1] == 500
    assert all(a < b for a, b in spans)
    assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    for a, b in spans:
        cost = np.where(n[a:b] <= 1000, n[a:b], 0)
        assert cost.sum() <= 256 or b - a == 1
    # the edge budget binds for many neighbors
    tight = split_batches(n, max_atoms=1000, max_neighbors=40, batch_atoms=256,
                          batch_edges=256 * 13)
    assert len(tight) > len(spans)


def test_build_inputs_and_settings_agree_with_direct_call(store: Path) -> None:
    # The pipeline's featurize is build_inputs with the model's settings: same status codes.
    with Store(store) as s:
        batch = s.read(0, 100)
    g = build_inputs(batch, cutoff=6.0, max_neighbors=12, max_atoms=1000, max_z=MAX_Z,
                     overlap_threshold=0.1)
    rows = joined(run(store, 100))
    np.testing.assert_array_equal(np.where(rows.status == 7, 0, rows.status), g.status)


class Boom(SumPredictor):
    def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        if self.calls == 2:
            raise RuntimeError("predictor exploded")
        return super().predict(inputs)


def test_errors_in_predictor_or_writer_stop_the_pipeline(store: Path) -> None:
    with Store(store) as s:
        plan = make_plan(s.n_atoms, 10)
    pipe = Pipeline(store, plan, Boom(), SETTINGS, n_targets=1, embedding_dim=None)
    with pytest.raises(RuntimeError, match="exploded"):
        pipe.run(ChunkSource(range(plan.n_chunks)), lambda k, a, rows: None)

    def bad_commit(k: int, a: int, rows: Rows) -> None:
        if k == 3:
            raise OSError("disk full")

    pipe = Pipeline(store, plan, SumPredictor(), SETTINGS, n_targets=1, embedding_dim=None)
    with pytest.raises(OSError, match="disk full"):
        pipe.run(ChunkSource(range(plan.n_chunks)), bad_commit)


class SlowPredictor(SumPredictor):
    """`SumPredictor` taking 20 ms a batch: the reader and workers run ahead of it."""

    def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        time.sleep(0.02)
        return super().predict(inputs)


@pytest.mark.parametrize("max_batches", [1, 5])
def test_batches_in_flight_reach_and_keep_the_cap(store: Path, max_batches: int) -> None:
    """With a slow predictor the reader hands out chunks until `max_batches` batches are out
    (beyond one chunk of read-ahead: on a GPU a chunk is one batch, and every worker needs
    one), never more than the cap plus one chunk's batches, and the file is unchanged."""
    with Store(store) as s:
        plan = make_plan(s.n_atoms, 8)
    out: dict[int, Rows] = {}
    pipe = Pipeline(store, plan, SlowPredictor(), SETTINGS, n_targets=1, embedding_dim=2,
                    workers=0, batch_atoms=100_000, max_batches=max_batches)
    stats = pipe.run(ChunkSource(list(range(plan.n_chunks))),
                     lambda k, a, rows: out.__setitem__(k, rows))
    assert stats.batches == plan.n_chunks  # one batch a chunk, as on a GPU
    assert stats.max_in_flight == max_batches
    got, ref = joined(out), joined(run(store, 8))
    assert got.ids == ref.ids
    np.testing.assert_array_equal(got.status, ref.status)
    np.testing.assert_array_equal(got.predictions, ref.predictions)


def _die() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would


def test_a_killed_worker_is_one_clear_error(store: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from deepergat.errors import DeepergatError

    def dying_pool(self: Pipeline, workers: int | None = None) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, initializer=_die,
                                   mp_context=multiprocessing.get_context("spawn"))

    monkeypatch.setattr(Pipeline, "_executor", dying_pool)
    with Store(store) as s:
        plan = make_plan(s.n_atoms, 25)
    committed: list[int] = []
    pipe = Pipeline(store, plan, SumPredictor(), SETTINGS, n_targets=1, embedding_dim=None,
                    workers=1)
    with pytest.raises(DeepergatError, match="a worker process of this rank died"):
        pipe.run(ChunkSource(range(plan.n_chunks)), lambda k, a, rows: committed.append(k))


# ---- one structure never stops a run: real widths, memory failures, killed workers -------


def _sphere(n: int, radius: float = 3.0, box: float = 40.0) -> dict[str, object]:
    """A centre atom and n - 1 atoms at exactly one distance from it (on a Fibonacci sphere)
    in a large cell: the centre's n - 1 neighbors all tie."""
    k = n - 1
    i = np.arange(k) + 0.5
    phi, theta = np.arccos(1 - 2 * i / k), np.pi * (1 + 5**0.5) * i
    shell = radius * np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi),
                               np.cos(phi)], 1)
    centre = np.full(3, box / 2)
    return {"lattice": np.eye(3) * box, "pbc": (True, True, True), "atomic_numbers": [6] * n,
            "positions": np.vstack([centre, centre + shell])}


def test_split_batches_counts_each_structures_real_width() -> None:
    n = np.full(6, 10)
    width = np.array([13, 13, 61, 13, 0, 13])
    spans = split_batches(n, max_atoms=1000, max_neighbors=12, width=width, batch_atoms=1000,
                          batch_edges=40 * 61)
    for a, b in spans:  # atoms × the batch's largest width within the budget, or one structure
        counted = width[a:b] > 0
        assert n[a:b][counted].sum() * width[a:b].max() <= 40 * 61 or b - a == 1
    assert spans == [(0, 5), (5, 6)]  # the unpredicted structure 4 costs nothing
    # without widths (before the search) every structure counts max_neighbors + 1
    assert split_batches(n, max_atoms=1000, max_neighbors=12, batch_atoms=1000,
                         batch_edges=40 * 61) == [(0, 6)]


def test_a_wide_structure_is_batched_by_its_real_width() -> None:
    """A structure whose ties take its padded width to 60 is cut from the batch before the
    inputs are padded: no model batch holds more padded edge slots than the budget unless it
    is that one structure (the old code padded all 120 structures' atoms to its width)."""
    from screen_helpers import _PEROV, _cell

    cells = [_cell([38, 22, 8, 8, 8], _PEROV, a=3.9 + 0.01 * k, id=f"p{k}") for k in range(120)]
    cells.insert(60, {**_sphere(60), "id": "wide"})
    batch = StructureBatch.from_structures(cells)
    settings = replace(SETTINGS, batch_atoms=1024, batch_edges=1024 * 16)
    feat = featurize(batch, settings)
    assert (feat.status == 0).all()
    assert len(feat.graphs) > 1
    rows = np.concatenate([g.rows for g in feat.graphs])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(cells)))  # each exactly once
    for g in feat.graphs:
        slots = g.inputs["neighbors"].size
        assert slots <= settings.batch_edges or len(g.rows) == 1
    wide = next(g for g in feat.graphs if 60 in g.rows)
    assert wide.inputs["neighbors"].shape[1] == 60  # 59 tied neighbors and the self loop
    assert wide.rows.tolist() == [60]  # narrow cells are not padded to its width


def test_model_batches_hold_structures_of_like_width() -> None:
    """Cells of widths 13 and 17 alternating in the file: the model batches take them
    narrowest first, so only one batch may mix widths, each batch's rows ascend, and the
    padded slots drop to what sorted widths need."""
    from screen_helpers import _PEROV, _cell

    cubic = _cell([38, 22, 8, 8, 8], _PEROV, a=3.9, id="c")
    lattice = np.array([[3.85, 0.05, 0.02], [0, 3.9, 0.07], [0, 0, 3.97]])  # no ties
    strained = {**cubic, "lattice": lattice, "positions": np.asarray(_PEROV) @ lattice}
    settings = replace(SETTINGS, batch_atoms=100, batch_edges=100 * 20)
    w_narrow, w_wide = (featurize(StructureBatch.from_structures([c]), settings)
                        .graph.inputs["neighbors"].shape[1] for c in (strained, cubic))
    assert w_narrow < w_wide
    cells = [{**(strained if k % 2 else cubic), "id": f"x{k}"} for k in range(80)]
    feat = featurize(StructureBatch.from_structures(cells), settings)
    widths = [g.inputs["neighbors"].shape[1] for g in feat.graphs]
    assert widths == sorted(widths) and set(widths) == {w_narrow, w_wide}
    mixed = [g for g in feat.graphs if len({k % 2 for k in g.rows.tolist()}) > 1]
    assert len(mixed) <= 1
    for g in feat.graphs:
        assert (np.diff(g.rows) > 0).all()
    np.testing.assert_array_equal(np.sort(np.concatenate([g.rows for g in feat.graphs])),
                                  np.arange(80))
    slots = sum(g.inputs["neighbors"].size for g in feat.graphs)
    # 200 atoms of each width, one batch (≤ 100 atoms) may pad narrow cells to the wide width;
    # in file order every batch would: 400 × w_wide
    assert slots <= 200 * w_narrow + 200 * w_wide + 100 * (w_wide - w_narrow) < 400 * w_wide


def _marked(store: Path, k: int = 3) -> str:
    """The id of the k-th structure of status 0 (one the predictor would predict)."""
    rows = joined(run(store, 100))
    return rows.ids[int(np.flatnonzero(rows.status == 0)[k])]


def _only_marked_failed(got: Rows, ref: Rows, marked: str) -> None:
    """``got`` is ``ref`` but for the marked structure, which got status 10 and no values."""
    k = got.ids.index(marked)
    assert got.ids == ref.ids
    assert got.status[k] == Status.OUT_OF_MEMORY and np.isnan(got.predictions[k]).all()
    others = np.arange(len(got.ids)) != k
    np.testing.assert_array_equal(got.status[others], ref.status[others])
    np.testing.assert_array_equal(got.flags, ref.flags)
    np.testing.assert_array_equal(got.predictions[others], ref.predictions[others])


def test_a_structure_that_runs_out_of_memory_alone_gets_status_10(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError on one structure (in the search: any batch holding it fails) costs its
    batch a retry in halves, and the structure status 10; every other row is unchanged."""
    from deepergat.screening import pipeline

    ref = joined(run(store, 25))
    marked = _marked(store)
    search = pipeline.search_inputs

    def hungry(batch: StructureBatch, **kw: object) -> object:
        if marked in batch.ids:
            raise MemoryError("Unable to allocate 3.64 TiB for an array")
        return search(batch, **kw)

    monkeypatch.setattr(pipeline, "search_inputs", hungry)
    got = joined(run(store, 25, batch_atoms=100))
    _only_marked_failed(got, ref, marked)


class TightPredictor(SumPredictor):
    """`SumPredictor` whose runtime cannot allocate a batch of more than 3 crystals (the
    message is onnxruntime's)."""

    def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        if len(inputs["crystal_mask"]) > 3:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate "
                               "memory for requested buffer of size 1073741824")
        return super().predict(inputs)


def test_batches_too_large_for_the_model_are_split_until_they_fit(store: Path) -> None:
    ref = joined(run(store, 25))
    got = joined(run(store, 25, predictor=TightPredictor()))
    assert got.ids == ref.ids
    np.testing.assert_array_equal(got.status, ref.status)
    np.testing.assert_array_equal(got.predictions, ref.predictions)


class NoMemory(SumPredictor):
    def predict(self, inputs: dict[str, np.ndarray]) -> Outputs:
        raise MemoryError()


def test_a_rank_without_memory_for_anything_stops_with_one_line(store: Path) -> None:
    """When even a one-atom structure fails, the failure is not the structures': the run
    stops (no status 10 for everything) with one line, and commits nothing wrong."""
    from deepergat.errors import DeepergatError

    with Store(store) as s:
        plan = make_plan(s.n_atoms, 25)
    committed: list[int] = []
    pipe = Pipeline(store, plan, NoMemory(), SETTINGS, n_targets=1, embedding_dim=None)
    with pytest.raises(DeepergatError, match="out of memory even on a one-atom structure"):
        pipe.run(ChunkSource(range(plan.n_chunks)), lambda k, a, rows: committed.append(k))
    assert committed == []


def _killer_init(marked: str, how: str, parent: int) -> None:
    """A worker that dies as the out-of-memory killer would kill it (SIGKILL) or exits
    (``os._exit``) on any batch holding the marked structure."""
    import os
    import signal

    from deepergat.screening import pipeline

    pipeline._worker_init(None, parent)
    search = pipeline.search_inputs

    def deadly(batch: StructureBatch, **kw: object) -> object:
        if marked in batch.ids:
            if how == "exit":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        return search(batch, **kw)

    pipeline.search_inputs = deadly  # type: ignore[assignment]


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_worker_killed_on_one_structure_costs_that_structure_only(
        store: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Worker processes die on every batch that holds one marked structure: the batches are
    computed again in a worker of their own, in halves, and the marked structure alone gets
    status 10; the run finishes and every other row is what it was."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    ref = joined(run(store, 25))
    marked = _marked(store)

    def pool(self: Pipeline, workers: int | None = None) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers or self.workers,
                                   mp_context=multiprocessing.get_context("forkserver"),
                                   initializer=_killer_init, initargs=(marked, how, os.getpid()))

    monkeypatch.setattr(Pipeline, "_executor", pool)
    got = joined(run(store, 25, workers=2, batch_atoms=12))
    _only_marked_failed(got, ref, marked)


def test_memory_failures_are_told_apart() -> None:
    from concurrent.futures.process import BrokenProcessPool

    from deepergat.screening.pipeline import memory_failure

    for e in [MemoryError(), BrokenProcessPool("A child process terminated abruptly"),
              RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for buffer"),
              RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
              OSError(12, "Cannot allocate memory"), RuntimeError("std::bad_alloc")]:
        assert memory_failure(e), e
    for e in [RuntimeError("predictor exploded"), ValueError("shapes"), KeyboardInterrupt()]:
        assert not memory_failure(e), e


def test_the_screen_flags_minimum_image_supercells_above_the_translation_limit() -> None:
    """Flag bit 1 in the screen's featurizer (and for a structure that failed for memory)
    exactly as `deepergat predict` sets it: a minimum-image model's 320-atom supercell."""
    from screen_helpers import _PEROV, _cell

    from deepergat.contract import FLAG_TRANSLATIONS_UNTESTED

    def supercell(reps: int) -> dict[str, object]:
        shifts = np.stack(np.meshgrid(*[np.arange(reps)] * 3, indexing="ij"), -1).reshape(-1, 3)
        frac = (np.asarray(_PEROV)[None] + shifts[:, None]).reshape(-1, 3) / reps
        return _cell([38, 22, 8, 8, 8] * len(shifts), frac.tolist(), a=3.9 * reps,
                     id=f"x{reps}")

    batch = StructureBatch.from_structures([supercell(1), supercell(4)])
    for graph, want in [("minimum-image", [0, FLAG_TRANSLATIONS_UNTESTED]), ("periodic", [0, 0])]:
        settings = replace(SETTINGS, graph=graph, max_neighbors=4, cutoff=4.0)
        assert featurize(batch, settings).flags.tolist() == want, graph
        pipe = Pipeline("unused.h5", make_plan(np.array([5, 320]), 2), SumPredictor(), settings,
                        n_targets=1, embedding_dim=None)
        assert pipe._out_of_memory(batch).flags.tolist() == want, graph


# ---- workers started ahead of the pipeline ------------------------------------------------


def test_workers_started_ahead_are_taken_only_for_the_same_setup(store: Path) -> None:
    from deepergat.screening.pipeline import start_workers

    with Store(store) as s:
        plan = make_plan(s.n_atoms, 40)

    def pipe(started: object, workers: int = 2) -> Pipeline:
        return Pipeline(store, plan, SumPredictor(), SETTINGS, n_targets=1, embedding_dim=2,
                        workers=workers, started=started)  # type: ignore[arg-type]

    same = start_workers(2, None)
    p = pipe(same)
    assert p._executor() is same.executor  # taken once ...
    own = p._executor()
    assert own is not same.executor  # ... then the pipeline makes its own
    own.shutdown()
    same.close()
    for other in (start_workers(1, None), start_workers(2, ("m.onnx", "0" * 64, False, True))):
        got = pipe(other)._executor()
        assert got is not other.executor
        assert other.executor._shutdown_thread  # the unmatched ones are stopped
        got.shutdown()
    # a run on workers started ahead gives what a run on its own workers gives
    ref = joined(run(store, 40, workers=2))
    got = joined(run(store, 40, workers=2, started=start_workers(2, None)))
    assert got.ids == ref.ids
    np.testing.assert_array_equal(got.status, ref.status)
    np.testing.assert_array_equal(got.predictions, ref.predictions)


def test_a_worker_that_cannot_load_the_model_is_one_line(store: Path, tmp_path: Path) -> None:
    from deepergat.errors import DeepergatError

    bad = tmp_path / "gone.onnx"
    bad.write_bytes(b"not a model")
    with Store(store) as s:
        plan = make_plan(s.n_atoms, 40)
    pipe = Pipeline(store, plan, SumPredictor(), SETTINGS, n_targets=1, embedding_dim=None,
                    workers=1, worker_model=(str(bad), "0" * 64, False))
    with pytest.raises(DeepergatError, match=r"a worker process could not load the model "
                                             r".*gone\.onnx") as err:
        pipe.run(ChunkSource(range(plan.n_chunks)), lambda k, a, rows: None)
    assert "\n" not in str(err.value)


def test_the_forkserver_warm_up_never_fails_its_import(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    import importlib
    import logging

    import deepergat.graphs
    import deepergat.screening.warm as warm

    def broken(*a: object, **k: object) -> None:
        raise ValueError("no kernel")

    monkeypatch.setattr(deepergat.graphs, "warm_kernels", broken)
    with caplog.at_level(logging.DEBUG, logger="deepergat.screening.warm"):
        importlib.reload(warm)  # the forkserver would stop on this exception: kept inside
    assert "not preloaded: no kernel" in caplog.text
