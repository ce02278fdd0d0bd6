"""OpenVINO, the CPU runtime of a single model's ``.onnx`` file when installed: which runtime
runs a file, and that it predicts what ONNX Runtime predicts by the agreement rule on every
parity batch (varied sizes, the big batch, the size-1 edge cases), threads included."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deepergat.errors import DeepergatError, SettingError
from deepergat.export import OnnxPredictor, OpenVinoPredictor, agree, load, openvino_runtime
from deepergat.export.openvino_runtime import ENV_RUNTIME, pick_runtime
from deepergat.export.parity import parity_cases
from deepergat.export.samples import edge_case_structures, parity_structures
from deepergat.export.shapes import INPUT_NAMES

LEGACY_ENSEMBLE = (Path(__file__).resolve().parents[1] / "data" / "legacy" / "exported"
                   / "model.onnx")


def test_unknown_runtimes_are_refused_with_the_choices(monkeypatch):
    with pytest.raises(SettingError, match="auto, onnxruntime, openvino"):
        pick_runtime("tensorrt", on_cuda=False)
    monkeypatch.setenv(ENV_RUNTIME, "tvm")
    with pytest.raises(SettingError, match="DEEPERGAT_ONNX_RUNTIME=tvm: unknown ONNX runtime"):
        pick_runtime("auto", on_cuda=False)


def test_openvino_is_the_default_for_single_models_on_the_cpu(monkeypatch):
    monkeypatch.delenv(ENV_RUNTIME, raising=False)
    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: True)
    assert pick_runtime("auto", on_cuda=False) == "openvino"
    monkeypatch.setenv(ENV_RUNTIME, "openvino")
    assert pick_runtime("auto", on_cuda=False) == "openvino"
    monkeypatch.delenv(ENV_RUNTIME)
    assert pick_runtime("auto", on_cuda=True) == "onnxruntime"
    assert pick_runtime("auto", on_cuda=False, has_std=True) == "onnxruntime"  # an ensemble
    assert pick_runtime("openvino", on_cuda=False, has_std=True) == "openvino"
    assert pick_runtime("onnxruntime", on_cuda=False) == "onnxruntime"
    monkeypatch.setenv(ENV_RUNTIME, "onnxruntime")  # a job script's override
    assert pick_runtime("auto", on_cuda=False) == "onnxruntime"
    assert pick_runtime("openvino", on_cuda=False) == "openvino"  # the argument wins
    monkeypatch.setenv(ENV_RUNTIME, "openvino")
    assert pick_runtime("auto", on_cuda=False, has_std=True) == "onnxruntime"  # never a spread
    with pytest.raises(SettingError, match="DEEPERGAT_ONNX_RUNTIME=openvino 'openvino' runs on"):
        pick_runtime("auto", on_cuda=True)
    monkeypatch.delenv(ENV_RUNTIME)
    with pytest.raises(SettingError, match="CPU only"):
        pick_runtime("openvino", on_cuda=True)
    monkeypatch.setattr(openvino_runtime, "openvino_available", lambda: False)
    assert pick_runtime("auto", on_cuda=False) == "onnxruntime"  # a core install
    with pytest.raises(SettingError, match=r"deepergat\[cpu\]"):
        pick_runtime("openvino", on_cuda=False)


def test_a_chosen_openvino_that_cannot_compile_falls_back_and_an_asked_one_fails(
        monkeypatch, exported_tiny, caplog):
    pytest.importorskip("openvino")
    from deepergat.export import predictor

    def refuse(data, *, outputs, threads, where):
        raise openvino_runtime.OpenVinoCompileError(where, "test")

    monkeypatch.setattr(predictor, "compile_openvino", refuse)
    monkeypatch.delenv(ENV_RUNTIME, raising=False)
    with caplog.at_level("WARNING", logger="deepergat"):
        p = load(exported_tiny["onnx"], device="cpu", threads=1)
    assert type(p) is OnnxPredictor and p.backend == "onnxruntime"
    assert "cannot compile the model (test); running it on ONNX Runtime" in caplog.text
    with pytest.raises(DeepergatError, match="cannot compile"):
        load(exported_tiny["onnx"], device="cpu", runtime="openvino", threads=1)
    monkeypatch.setenv(ENV_RUNTIME, "openvino")
    with pytest.raises(DeepergatError, match="cannot compile"):
        load(exported_tiny["onnx"], device="cpu", threads=1)


@pytest.fixture(scope="module", params=["tiny", "perovskite-heat-single"])
def runtimes(request, exported_tiny) -> tuple[OnnxPredictor, OnnxPredictor]:
    """The same file on both runtimes: the 2-layer test model, and the bundled 10-layer model
    the screen runs by default."""
    pytest.importorskip("openvino")
    model = exported_tiny["onnx"] if request.param == "tiny" else request.param
    ort = load(model, device="cpu", runtime="onnxruntime", threads=1)
    ov = load(model, device="cpu", runtime="openvino", threads=1)
    return ort, ov


def test_openvino_predictor_carries_the_files_identity(runtimes):
    ort, ov = runtimes
    assert type(ort) is OnnxPredictor and ort.backend == "onnxruntime"
    assert isinstance(ov, OpenVinoPredictor) and ov.backend == "openvino" and ov.device == "cpu"
    assert ov.sha256 == ort.sha256 and ov.metadata.to_dict() == ort.metadata.to_dict()
    assert not ov.has_std


def test_auto_runs_an_ensembles_spread_on_onnxruntime(monkeypatch):
    monkeypatch.delenv(ENV_RUNTIME, raising=False)
    p = load(LEGACY_ENSEMBLE, device="cpu", threads=1)
    assert p.has_std and p.backend == "onnxruntime"


def test_openvino_agrees_with_onnxruntime_on_every_parity_batch(runtimes):
    ort, ov = runtimes
    settings = ort.graph_settings
    cases = parity_cases(parity_structures(300), **settings, big_batch=600,
                         edge_cases=edge_case_structures(settings["cutoff"]))
    assert len(cases) > 5
    std = ort.metadata.target_std
    for case in cases:
        a, b = ort.predict(case.inputs), ov.predict(case.inputs)
        assert a.prediction.shape == b.prediction.shape, case.label
        assert agree(a.prediction, b.prediction, std).all(), case.label
        np.testing.assert_allclose(b.embedding, a.embedding, rtol=1e-4, atol=1e-5,
                                   err_msg=case.label)


def test_openvino_predicts_the_same_from_several_threads(runtimes):
    _, ov = runtimes
    settings = ov.graph_settings
    case = parity_cases(parity_structures(64), **settings, big_batch=0)[0]
    want = ov.predict(case.inputs).prediction
    got: list[np.ndarray] = []

    def work() -> None:
        got.extend(ov.predict(case.inputs).prediction for _ in range(3))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 9 and all(np.array_equal(g, want) for g in got)


def test_the_exports_softplus_becomes_one_softplus_operation():
    """Every softplus the exporter wrote (Max/Log/Add/Exp/Min, for ONNX Runtime) is handed to
    OpenVINO as its SoftPlus operation, and nothing else changes."""
    ov = pytest.importorskip("openvino")
    from deepergat.export.openvino_runtime import native_softplus
    from deepergat.export.resolve import resolve_model

    path = resolve_model("perovskite-heat-single", prefer="onnx")
    model = ov.Core().read_model(path.read_bytes())
    before = Counter(op.get_type_name() for op in model.get_ordered_ops())
    replaced = native_softplus(model)
    after = Counter(op.get_type_name() for op in model.get_ordered_ops())
    assert replaced == before["Log"] > 0 and after["SoftPlus"] == replaced
    assert after["Log"] == 0 and after["Exp"] == before["Exp"] - replaced  # others stay
    assert after["MatMul"] == before["MatMul"] and after["Softmax"] == before["Softmax"]
    assert native_softplus(model) == 0  # nothing left to replace


def test_a_runtimes_allocation_failure_is_a_memory_error_the_screen_retries():
    """Allocation failures become MemoryError (the screen computes the batch again in halves),
    whatever precedes the phrase in the runtime's message; other failures name the file."""
    from deepergat.export.predictor import runtime_failure

    long = "Exception from src/inference/src/cpp/infer_request.cpp:223: " * 6
    oom = RuntimeError(long + "cpu_memory.cpp:257: Failed to allocate 316047360 bytes")
    e = runtime_failure(Path("m.onnx"), "openvino", oom)
    assert isinstance(e, MemoryError) and "openvino ran out of memory" in str(e)
    e = runtime_failure(Path("m.onnx"), "onnxruntime", RuntimeError("bad_alloc"))
    assert isinstance(e, MemoryError)
    e = runtime_failure(Path("m.onnx"), "onnxruntime", RuntimeError("Invalid rank for input"))
    assert isinstance(e, DeepergatError) and str(e).startswith("m.onnx: onnxruntime failed")


def test_openvino_never_returns_another_batchs_rows(runtimes, monkeypatch):
    _, ov = runtimes
    settings = ov.graph_settings
    small = parity_cases(parity_structures(8), **settings, big_batch=0)[0]
    big = parity_cases(parity_structures(64), **settings, big_batch=0)[0]
    stale = ov.compiled.run(dict(zip(INPUT_NAMES, ov._prepare(small.inputs), strict=True)))
    monkeypatch.setattr(ov.compiled, "run", lambda feed: stale)  # what infer() did on OOM
    with pytest.raises(DeepergatError, match="openvino returned 8 rows of prediction for 64"):
        ov.predict(big.inputs)


def test_openvino_calls_leave_the_threads_alternate_signal_stack_as_it_was():
    """OpenVINO left the main thread's alternate signal stack pointing at memory it freed, and
    the next Python signal handler crashed the process; its calls now keep the stack."""
    import ctypes

    from deepergat.export.openvino_runtime import _altstack, _signals_blocked, _StackT

    libc = ctypes.CDLL(None)
    before = _altstack()
    assert before is not None
    buffer = ctypes.create_string_buffer(1 << 16)
    with _signals_blocked():  # what OpenVINO did inside: install a stack of its own
        other = _StackT(ctypes.cast(buffer, ctypes.c_void_p).value, 0, len(buffer))
        assert libc.sigaltstack(ctypes.byref(other), None) == 0
    after = _altstack()
    assert (after.ss_sp, after.ss_size, after.ss_flags) == (
        before.ss_sp, before.ss_size, before.ss_flags)
