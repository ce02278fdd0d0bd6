"""Models compiled on this machine (`deepergat compile`): the private per-user cache, used by
``.onnx`` files of the same checkpoint without a flag, agreeing with ONNX Runtime, and never
loaded when its entry is not this user's own or not what was compiled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepergat.contract import MAX_Z
from deepergat.errors import DeepergatError, SettingError
from deepergat.export import agree, load
from deepergat.export.samples import parity_structures
from deepergat.graphs import build_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(small_model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding `small_model`'s checkpoint compiled for this machine."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler for AOTInductor")
    from deepergat.export.compile import compile_model
    from deepergat.export.compiled import ENV_CACHE

    root = tmp_path_factory.mktemp("compiled") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CACHE, str(root))
        entry, new = compile_model(small_model["checkpoint"], n_check=256)
    assert new and entry.package.parent.parent == root
    return root


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Point the cache at a folder (a copy of it when ``copy``) for one test."""
    from deepergat.export.compiled import ENV_CACHE

    monkeypatch.delenv("DEEPERGAT_ONNX_RUNTIME", raising=False)

    def point(root: Path, *, copy: bool = False) -> Path:
        if copy:
            shutil.copytree(root, tmp_path / "copy", symlinks=True)
            root = tmp_path / "copy"
        monkeypatch.setenv(ENV_CACHE, str(root))
        return root

    return point


def entry_of(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if p.is_dir()]
    return entry


def batch() -> dict[str, np.ndarray]:
    return build_inputs(parity_structures(400, seed=5), max_z=MAX_Z).inputs


def test_the_onnx_file_runs_compiled_and_agrees(cache: Path, use: Any,
                                                small_model: dict[str, Any]) -> None:
    use(cache)
    compiled = load(small_model["onnx"], device="cpu")
    plain = load(small_model["onnx"], device="cpu", runtime="onnxruntime")
    assert compiled.backend == "compiled" and plain.backend == "onnxruntime"
    # the model's identity is the .onnx file's: outputs, resume and merges see one model
    assert compiled.sha256 == plain.sha256 and compiled.path == plain.path
    assert compiled.metadata.to_dict() == plain.metadata.to_dict()
    inputs = batch()
    y1, e1, _ = plain.predict(inputs)
    y2, e2, _ = compiled.predict(inputs)
    assert y1.shape == y2.shape == (400, 1)
    assert agree(y1, y2, [small_model["std"]]).all()
    np.testing.assert_allclose(e2, e1, atol=1e-4, rtol=1e-4)


def test_the_runtime_choice(cache: Path, use: Any, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch,
                            small_model: dict[str, Any]) -> None:
    from deepergat.export import would_run_compiled
    from deepergat.screening.model import runs_compiled

    onnx = small_model["onnx"]

    def compiled(runtime: str = "auto") -> bool:
        """`load`'s choice, and the cheap look a screen takes before it starts its workers."""
        got = load(onnx, device="cpu", runtime=runtime).backend == "compiled"  # type: ignore[arg-type]
        assert would_run_compiled(onnx, runtime) is got  # type: ignore[arg-type]
        return got

    use(cache)
    assert compiled()
    assert runs_compiled(str(onnx), "cpu") and not runs_compiled(str(onnx), "cuda")
    assert not would_run_compiled(small_model["checkpoint"])
    monkeypatch.setenv("DEEPERGAT_ONNX_RUNTIME", "onnxruntime")
    assert not compiled()
    assert load(onnx, device="cpu").backend == "onnxruntime"
    monkeypatch.setenv("DEEPERGAT_ONNX_RUNTIME", "compiled")
    assert compiled()
    monkeypatch.delenv("DEEPERGAT_ONNX_RUNTIME")
    assert not compiled("onnxruntime")
    assert load(onnx, device="cpu", runtime="onnxruntime").backend == "onnxruntime"
    use(tmp_path / "empty")  # no entry: auto runs what it ran before; "compiled" is an error
    assert not compiled()
    assert load(onnx, device="cpu").backend in ("openvino", "onnxruntime")
    with pytest.raises(SettingError, match="deepergat compile"):
        load(small_model["onnx"], device="cpu", runtime="compiled")


def _group_writable_folder(entry: Path) -> None:
    entry.chmod(0o775)


def _group_writable_package(entry: Path) -> None:
    (entry / "model.aoti.pt2").chmod(0o664)


def _altered_package(entry: Path) -> None:
    with open(entry / "model.aoti.pt2", "ab") as fh:
        fh.write(b"\0")


def _symlinked_package(entry: Path) -> None:
    package = entry / "model.aoti.pt2"
    elsewhere = entry.parent.parent / "elsewhere.pt2"
    package.rename(elsewhere)
    package.symlink_to(elsewhere)


def _record_of_another_cpu(entry: Path) -> None:
    path = entry / "compiled.json"
    record = json.loads(path.read_text())
    record["cpu"]["flags"] = "0" * 16
    path.write_text(json.dumps(record))
    path.chmod(0o600)


def _damaged_record(entry: Path) -> None:
    (entry / "compiled.json").write_text("{not json")


def _group_writable_folder_above(entry: Path) -> None:
    above = entry.parent.parent  # the folder holding the cache: its owner could swap the cache
    above.chmod(0o777)


def _another_owner(entry: Path) -> None:
    if not hasattr(os, "getuid") or os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(entry / "model.aoti.pt2", 4242, 4242)


@pytest.mark.parametrize("spoil", [_group_writable_folder, _group_writable_package,
                                   _altered_package, _symlinked_package, _record_of_another_cpu,
                                   _damaged_record, _another_owner,
                                   _group_writable_folder_above])
def test_an_entry_that_is_not_this_users_own_or_not_what_was_compiled_is_never_loaded(
        cache: Path, use: Any, spoil: Any, small_model: dict[str, Any],
        caplog: pytest.LogCaptureFixture) -> None:
    root = use(cache, copy=True)
    assert load(small_model["onnx"], device="cpu").backend == "compiled"  # the copy is usable
    spoil(entry_of(root))
    from deepergat.export import would_run_compiled

    caplog.clear()
    would_run_compiled(small_model["onnx"])  # the screen's early look: the load warns, once
    assert "not using the compiled model" not in caplog.text
    p = load(small_model["onnx"], device="cpu")
    assert p.backend in ("openvino", "onnxruntime")
    assert "not using the compiled model" in caplog.text
    with pytest.raises(DeepergatError, match=r"deepergat compile|not using the compiled model"):
        load(small_model["onnx"], device="cpu", runtime="compiled")


def test_a_file_claiming_the_checkpoint_of_another_model_never_runs_it(
        cache: Path, use: Any, tmp_path: Path, small_model: dict[str, Any],
        exported_tiny: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """An .onnx file whose metadata names the compiled checkpoint's sha256 but describes
    another model (here a dim-16 model) runs as itself, never as the compiled model."""
    from deepergat.export import read_metadata
    from deepergat.export.onnx import set_onnx_metadata

    use(cache)
    claimed = load(small_model["onnx"], device="cpu").metadata.source_sha256
    liar = tmp_path / "liar.onnx"
    shutil.copy(exported_tiny["onnx"], liar)
    set_onnx_metadata(liar, {**read_metadata(liar), "source_sha256": claimed})
    caplog.clear()
    assert load(liar, device="cpu").backend in ("openvino", "onnxruntime")
    assert "describe different models (model" in caplog.text


def test_another_cpu_or_torch_has_its_own_entry(cache: Path, use: Any,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 small_model: dict[str, Any]) -> None:
    from deepergat.export import compiled

    use(cache)
    sha = load(small_model["onnx"], device="cpu").metadata.source_sha256
    assert compiled.find_compiled(sha) is not None
    here = compiled.cpu_identity()
    monkeypatch.setattr(compiled, "cpu_identity", lambda: {**here, "flags": "f" * 16})
    assert compiled.find_compiled(sha) is None  # quietly: nothing compiled for that CPU
    monkeypatch.undo()
    use(cache)
    monkeypatch.setattr(compiled, "torch_version", lambda: "0.0.1")
    assert compiled.find_compiled(sha) is None


def test_a_package_for_cpu_features_this_one_lacks_is_refused() -> None:
    from deepergat.export.aoti import _check_compiled_for, missing_cpu_flags

    assert missing_cpu_flags("AVX512 AMX_TILE", frozenset({"avx2", "fma", "f16c"})) == [
        "amx_bf16", "amx_int8", "amx_tile", "avx512bw", "avx512dq", "avx512f", "avx512vl"]
    assert missing_cpu_flags("AVX2", frozenset({"avx2", "fma", "f16c"})) == []
    info = {"AOTI_DEVICE_KEY": "cpu", "AOTI_MACHINE": "x86_64", "AOTI_CPU_ISA": "AVX512"}
    import deepergat.export.aoti as aoti

    real = aoti.cpu_flags
    try:
        aoti.cpu_flags = lambda: frozenset({"avx2", "fma"})
        with pytest.raises(DeepergatError, match="lacks avx512bw"):
            _check_compiled_for("m.aoti.pt2", info)
    finally:
        aoti.cpu_flags = real
    import platform

    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    with pytest.raises(DeepergatError, match=f"compiled for {other}"):
        _check_compiled_for("m.aoti.pt2", {**info, "AOTI_MACHINE": other})


def test_the_cli_and_a_whole_screen(cache: Path, use: Any, tmp_path: Path,
                                    small_model: dict[str, Any], screen_store: Path,
                                    reference_predictions: Path) -> None:
    from click.testing import CliRunner
    from screen_helpers import assert_same_predictions

    from deepergat.cli import main

    use(cache)
    result = CliRunner().invoke(main, ["compile", str(small_model["checkpoint"])])
    assert result.exit_code == 0, result.output
    assert "already compiled for this CPU" in result.output and "parity" in result.output
    # the whole command in a fresh process: its worker processes run the model compiled too
    out = tmp_path / "p.h5"
    env = {**os.environ, "DEEPERGAT_COMPILED_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-m", "deepergat.cli.screen", "--input",
                        str(screen_store), "--model", str(small_model["onnx"]), "--output",
                        str(out), "--chunk-size", "64", "-v"], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "on cpu (compiled)" in r.stderr
    assert_same_predictions(reference_predictions, out, small_model["std"])
