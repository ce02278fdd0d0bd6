"""A CPU screen compiles its model for this machine first (``--compile auto|yes|no``): when,
when not, and that the screen's numbers are the same either way."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from screen_helpers import assert_same_predictions, run_inprocess

from deepergat.errors import SettingError
from deepergat.screening import compiling
from deepergat.screening.options import CompileChoice
from deepergat.screening.run import ScreenOptions


@pytest.fixture
def model_folder(tmp_path: Path, small_model: dict[str, Any]) -> Path:
    """The small model's .onnx with its checkpoint beside it (as a bundled model's folder)."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(small_model["onnx"], folder / "model.onnx")
    shutil.copy(small_model["checkpoint"], folder / "best.ckpt")
    return folder


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from deepergat.export.compiled import ENV_CACHE

    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPERGAT_ONNX_RUNTIME", raising=False)
    return tmp_path / "cache"


def loaded(path: Path) -> Any:
    from deepergat.screening.model import load_model
    from deepergat.screening.options import StructureChecks

    return load_model(str(path), device=("cpu", 0), threads=1, checks=StructureChecks())


@pytest.mark.parametrize(("choice", "structures", "device", "compiles"), [
    ("no", 10**7, "cpu", False),
    ("auto", compiling.AUTO_COMPILE_MIN - 1, "cpu", False),  # too few to pay for it
    ("auto", compiling.AUTO_COMPILE_MIN, "cpu", True),
    ("yes", 1, "cpu", True),
    ("auto", 10**7, "cuda", False),
])
def test_when_a_screen_compiles(monkeypatch: pytest.MonkeyPatch, model_folder: Path,
                                empty_cache: Path, choice: CompileChoice, structures: int,
                                device: str, compiles: bool) -> None:
    calls: list[Path] = []
    import deepergat.export.compile as compile_module

    monkeypatch.setattr(compile_module, "compile_model",
                        lambda ckpt, **kw: calls.append(Path(ckpt)))
    model = loaded(model_folder / "model.onnx")
    assert compiling.checkpoint_beside(model) == model_folder / "best.ckpt"
    done = compiling.compile_first(choice, model, structures=structures, device=device)
    assert done is compiles and calls == ([model_folder / "best.ckpt"] if compiles else [])


def test_what_cannot_be_compiled(monkeypatch: pytest.MonkeyPatch, model_folder: Path,
                                 small_model: dict[str, Any], empty_cache: Path) -> None:
    # no checkpoint beside the file (small_model's is named small.ckpt), a checkpoint that is
    # not the file's, a GPU, a runtime the job script chose: auto passes, yes says why
    (model_folder / "other").mkdir()
    shutil.copy(small_model["onnx"], model_folder / "other" / "model.onnx")
    (model_folder / "other" / "best.ckpt").write_bytes(b"not the checkpoint")
    for path, why in [(small_model["onnx"], "not beside"),
                      (model_folder / "other" / "model.onnx", "not beside")]:
        model = loaded(path)
        assert compiling.checkpoint_beside(model) is None
        assert not compiling.compile_first("auto", model, structures=10**7, device="cpu")
        with pytest.raises(SettingError, match=why):
            compiling.compile_first("yes", model, structures=1, device="cpu")
    model = loaded(model_folder / "model.onnx")
    with pytest.raises(SettingError, match="GPU"):
        compiling.compile_first("yes", model, structures=1, device="cuda")
    monkeypatch.setenv("DEEPERGAT_ONNX_RUNTIME", "openvino")
    with pytest.raises(SettingError, match="DEEPERGAT_ONNX_RUNTIME"):
        compiling.compile_first("yes", model, structures=1, device="cpu")
    assert not compiling.compile_first("auto", model, structures=10**7, device="cpu")
    with pytest.raises(SettingError, match="compile must be one of auto, yes, no"):
        ScreenOptions.create("x.h5", compile="always").check()  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_screen_that_compiles_first_gives_the_same_file(
        tmp_path: Path, model_folder: Path, empty_cache: Path, screen_store: Path,
        small_model: dict[str, Any], reference_predictions: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler for AOTInductor")
    out = tmp_path / "p.h5"
    with caplog.at_level(logging.INFO, logger="deepergat"):
        result = run_inprocess(screen_store, model_folder / "model.onnx", out, chunk_size=64,
                               compile="yes")
    assert result.outcome == "merged"
    assert "compiling" in caplog.text and "(compiled)" in caplog.text
    assert list(empty_cache.glob("*/compiled.json"))
    assert_same_predictions(reference_predictions, out, small_model["std"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deepergat"):  # compiled already: used as it is
        again = run_inprocess(screen_store, model_folder / "model.onnx", tmp_path / "q.h5",
                              chunk_size=64, compile="yes")
    assert again.outcome == "merged" and "compiling" not in caplog.text
    assert "(compiled)" in caplog.text
