"""Before any work: what a rank runs on, and an input store edited in place since it was
packed (the driver's end-to-end checks are in test_run.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from deepergat.screening.parts import PartsDir
from deepergat.screening.setup import Resources, open_input, rank_resources, verified_input


@pytest.mark.parametrize(("workers", "device", "cpus", "expected"), [
    (None, "cpu", 4, (4, 1, True)),   # one single-threaded model session per core
    (None, "cpu", 1, (0, 1, False)),  # one core: the rank does everything
    (0, "cpu", 4, (0, 4, False)),     # no workers: the rank's predictor takes the cores
    (2, "cpu", 4, (2, 1, True)),
    (None, "cuda", 8, (7, 1, False)),  # a GPU: cores − 1 workers feed the rank's predictor
    (None, "cuda", 1, (1, 1, False)),
    (3, "cuda", 8, (3, 1, False)),
])
def test_rank_resources(workers: int | None, device: str, cpus: int,
                        expected: tuple[int, int, bool]) -> None:
    assert rank_resources(workers, (device, 0), cpus) == Resources((device, 0), *expected)


def test_a_store_edited_in_place_is_told_apart(tmp_path: Path, screen_store: Path) -> None:
    store = tmp_path / "s.h5"
    shutil.copy(screen_store, store)
    parts = PartsDir(tmp_path / "o.h5")
    inp = open_input(store)
    assert inp.path == store.resolve() and not inp.edited
    assert verified_input(inp, parts) is inp  # unchanged
    with h5py.File(store, "a") as f:
        f["positions"][0] = f["positions"][0] + 0.01
    edited = verified_input(open_input(store), parts)
    assert edited.edited and edited.recorded_digest == inp.digest
    assert edited.digest != inp.digest and len(edited.n_atoms) == len(inp.n_atoms)


def test_workers_start_ahead_only_when_they_will_run_the_loaded_model(
        screen_store: Path, small_model: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepergat.screening import setup
    from deepergat.screening.options import ScreenOptions
    from deepergat.system.files import file_sha256

    onnx = str(small_model["onnx"])
    cpu = Resources(("cpu", 0), 2, 1, True)

    def opts(**kw: object) -> ScreenOptions:
        return ScreenOptions.create(screen_store, model=onnx, **kw)  # type: ignore[arg-type]

    started = setup.early_workers(opts(compile="no", embeddings=True), cpu)
    assert started is not None
    try:
        assert started.workers == 2
        assert started.model == (onnx, file_sha256(onnx), False, True)
    finally:
        started.close()
    only_search = setup.early_workers(opts(), Resources(("cuda", 0), 3, 1, False))
    assert only_search is not None and only_search.model is None
    only_search.close()
    # never: rank 0 may compile first (the workers must load the compiled model), no workers,
    # or a model that is not there (the rank's own load says so)
    assert setup.early_workers(opts(compile="yes"), cpu) is None
    monkeypatch.setattr(setup, "AUTO_COMPILE_MIN", 300)  # screen_store holds 300 structures
    assert setup.early_workers(opts(), cpu) is None
    assert setup.early_workers(opts(), Resources(("cpu", 0), 0, 2, False)) is None
    missing = ScreenOptions.create(screen_store, model=onnx + ".gone", compile="no")
    assert setup.early_workers(missing, cpu) is None
