"""OpenVINO plumbing: the second CPU runtime for ``.onnx`` files.

OpenVINO's CPU plugin compiles the ONNX graph into vectorized kernels that fuse elementwise
chains. Same file, same weights, no code read from the file: OpenVINO parses the ONNX protobuf
like ONNX Runtime does. Before compiling, the exporter's softplus — ``Max(x, Log(1 + Exp(Min(x,
20))))``, written for ONNX Runtime, whose own Softplus kernel is scalar — is put back as
OpenVINO's single ``SoftPlus`` operation (the same function: x above its threshold, else
log(1 + eˣ)); softplus of the [N, K, H·D] edge tensors is most of this model's time.
Numbers agree with ONNX Runtime's to float32 rounding (the agreement rule,
`tests/export/test_openvino.py`); `benchmarks/bench_runtime.py` measures the rates.

Which runtime runs an ``.onnx`` file on the CPU (``runtime`` of `deepergat.export.load`):

* ``"auto"``: the model compiled on this machine when ``deepergat compile`` put one in this
  user's cache (`deepergat.export.compiled`; single models and ensembles), else OpenVINO for a
  single model when the package imports (the ``[cpu]`` extra installs
  it; ~1.8× ONNX Runtime's rate on this model, `benchmarks/bench_runtime.py`), else ONNX Runtime;
  ``DEEPERGAT_ONNX_RUNTIME=onnxruntime|openvino|compiled`` (a job script's choice) overrides it. If
  OpenVINO cannot compile a file that nobody asked it for, the file runs on ONNX Runtime with a
  warning. An ensemble stays on ONNX Runtime unless the ``runtime`` argument asks:
  its local error term weighs reference structures by their embedding
  distances, which magnify the runtimes' different float32 rounding of the embeddings (≤ 4e-7)
  about twentyfold — past the agreement rule's 1e-5·σ on the test ensemble (7.4e-6 against
  6.2e-6 allowed), while its predictions agree within 2.4e-7.
  OpenVINO leaves the calling thread's alternate signal stack pointing at freed memory (a
  process then crashed on its next Python signal, e.g. SLURM's SIGUSR1); every call here keeps
  the stack (`_altstack`) and blocks job signals in the threads it starts.
* ``"onnxruntime"``, ``"openvino"`` or ``"compiled"``: that one (``"openvino"`` without the
  package, or ``"compiled"`` without a compiled model for the file's checkpoint, is an error
  naming it).

On CUDA the file always runs on ONNX Runtime's CUDA provider. No torch here.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Literal, get_args

import numpy as np

from deepergat.errors import DeepergatError, SettingError

__all__ = ["ENV_RUNTIME", "OnnxRuntimeChoice", "OpenVinoCompileError", "check_runtime",
           "chosen_runtime", "compile_openvino", "openvino_available", "openvino_was_asked",
           "pick_runtime"]

OnnxRuntimeChoice = Literal["auto", "onnxruntime", "openvino", "compiled"]
#: Environment variable that overrides ``runtime="auto"`` (e.g. in a SLURM script).
ENV_RUNTIME = "DEEPERGAT_ONNX_RUNTIME"
#: OpenVINO's per-shape kernel cache, in entries (`compile_openvino`).
RUNTIME_CACHE_CAPACITY = 200


class OpenVinoCompileError(DeepergatError):
    """OpenVINO cannot read or compile a model; ``detail`` is its own reason (one line)."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: OpenVINO cannot compile the model ({detail}); set "
                         f"{ENV_RUNTIME}=onnxruntime to run it on ONNX Runtime")
        self.where, self.detail = where, detail


def check_runtime(runtime: str) -> OnnxRuntimeChoice:
    """``runtime`` validated against `OnnxRuntimeChoice`."""
    if runtime not in get_args(OnnxRuntimeChoice):
        raise SettingError(f"unknown ONNX runtime {runtime!r}: choose one of "
                           f"{', '.join(get_args(OnnxRuntimeChoice))}")
    return runtime  # type: ignore[return-value]


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports (imported with job signals blocked and the
    thread's alternate signal stack kept, like every OpenVINO call: `_signals_blocked`)."""
    try:
        with _signals_blocked():
            import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def pick_runtime(runtime: str, *, on_cuda: bool, has_std: bool = False
                 ) -> Literal["onnxruntime", "openvino"]:
    """The runtime that runs an ``.onnx`` file (see the module docstring).

    Args:
        runtime: the caller's choice (`OnnxRuntimeChoice`).
        on_cuda: whether the file runs on ONNX Runtime's CUDA provider.
        has_std: whether the model computes a spread (an ensemble): ``"auto"`` keeps it on ONNX
            Runtime.

    Raises:
        SettingError: an unknown choice (argument or environment), or ``"openvino"`` asked for
            where it cannot run (package missing, or a CUDA device).
    """
    choice = chosen_runtime(runtime)
    from_env = runtime == "auto" and choice != "auto"
    source = f"{ENV_RUNTIME}={choice}" if from_env else "runtime"
    if from_env and has_std:  # a job script's choice never moves an ensemble's spread
        return "onnxruntime"
    if choice in ("auto", "compiled"):  # compiled: `load` found no compiled model to run
        use = not on_cuda and not has_std and openvino_available()
        return "openvino" if use else "onnxruntime"
    if choice == "onnxruntime":
        return "onnxruntime"
    if on_cuda:
        raise SettingError(f"{source} 'openvino' runs on the CPU only; use device 'cpu' or the "
                           "onnxruntime runtime")
    if not openvino_available():
        raise SettingError(f"{source} 'openvino' needs the openvino package: "
                           "pip install 'deepergat[cpu]' (or pip install 'openvino>=2025.0')")
    return "openvino"


def chosen_runtime(runtime: str) -> OnnxRuntimeChoice:
    """The caller's choice with `ENV_RUNTIME` applied under ``"auto"`` (validated)."""
    runtime = check_runtime(runtime)
    if runtime == "auto":
        env = os.environ.get(ENV_RUNTIME, "").strip().lower()
        if env:
            if env not in get_args(OnnxRuntimeChoice):
                raise SettingError(f"{ENV_RUNTIME}={env}: unknown ONNX runtime: choose one of "
                                   f"{', '.join(get_args(OnnxRuntimeChoice))}")
            return env  # type: ignore[return-value]
    return runtime


def openvino_was_asked(runtime: str) -> bool:
    """Whether OpenVINO was named (the argument, or `ENV_RUNTIME` under ``"auto"``) rather
    than chosen by ``"auto"``: only a chosen one may fall back to ONNX Runtime."""
    return chosen_runtime(runtime) == "openvino"


#: Signals OpenVINO's worker threads must never receive (`_signals_blocked`).
_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Block job-control signals in the calling thread while OpenVINO may start threads.

    Threads inherit their creator's signal mask, so OpenVINO's worker pool never receives
    SIGTERM/SIGUSR1 (SLURM's warnings) or SIGINT: the kernel hands them to a thread that
    handles them. A precaution: the crash of the module docstring (a freed alternate signal
    stack) happened with it too, and with the signal sent to the main thread. Signals that arrive
    meanwhile are delivered when the block ends.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    stack = _altstack()
    try:
        yield
    finally:
        _altstack(stack)
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (every OpenVINO batch saves and restores the stack)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _altstack(restore: _StackT | None = None) -> _StackT | None:
    """The calling thread's alternate signal stack (``sigaltstack``), or put ``restore`` back.

    OpenVINO left the main thread's alternate signal stack pointing at memory it had freed:
    the next signal handled with ``SA_ONSTACK`` — every Python handler — crashed the process
    (SIGSEGV at delivery, seen in gdb at ``kill``). Keeping the stack as it was avoids it.
    None where libc cannot be reached."""
    libc = _libc()
    if libc is None:
        return None
    if restore is not None:
        libc.sigaltstack(ctypes.byref(restore), None)
        return None
    current = _StackT()
    return current if libc.sigaltstack(None, ctypes.byref(current)) == 0 else None


class CompiledOpenVino:
    """An ONNX model compiled by OpenVINO's CPU plugin.

    Attributes:
        outputs: output names, in the order `run` returns them.
    """

    def __init__(self, compiled: Any, outputs: Sequence[str]) -> None:
        self._compiled = compiled
        self.outputs = list(outputs)
        self._ports = [compiled.output(name) for name in self.outputs]
        self._local = threading.local()  # one infer request per calling thread

    def run(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """The outputs for one batch of named inputs (copies: the request's buffers are reused)."""
        request = getattr(self._local, "request", None)
        if request is None:
            with _signals_blocked():
                request = self._local.request = self._compiled.create_infer_request()
        # start_async + wait, not infer(): infer() returned the previous batch's outputs
        # instead of raising when an allocation failed (seen under RLIMIT_AS, OpenVINO 2026.4)
        with _signals_blocked():
            request.start_async(feed)
            request.wait()
        return tuple(np.array(request.get_tensor(port).data, copy=True) for port in self._ports)


def _constant(output: Any) -> float | None:
    """The scalar value of a constant input, else None."""
    node = output.get_node()
    if node.get_type_name() != "Constant":
        return None
    data = np.asarray(node.get_data())
    return float(data.reshape(-1)[0]) if data.size == 1 else None


def native_softplus(model: Any) -> int:
    """Replace each ``Max(x, Log(Add(Exp(Min(x, 20)), 1)))`` (the export's softplus) in an
    OpenVINO model with ``SoftPlus(x)``, in place. Returns how many were replaced."""
    try:
        from openvino import opset13
    except ImportError:  # OpenVINO before 2025.0
        from openvino.runtime import opset13  # type: ignore[no-redef]

    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Maximum":
            continue
        x, right = op.input_value(0), op.input_value(1)
        log = right.get_node()
        if log.get_type_name() != "Log":
            continue
        add = log.input_value(0).get_node()
        if add.get_type_name() != "Add":
            continue
        a, b = add.input_value(0), add.input_value(1)
        exp, one = (a, b) if a.get_node().get_type_name() == "Exp" else (b, a)
        if exp.get_node().get_type_name() != "Exp" or _constant(one) != 1.0:
            continue
        low = exp.get_node().input_value(0).get_node()
        if (low.get_type_name() != "Minimum" or low.input_value(0) != x
                or _constant(low.input_value(1)) != 20.0):
            continue
        # the same shape and type as x (a constant of more dimensions would broadcast)
        if (op.get_output_partial_shape(0) != x.get_partial_shape()
                or op.get_output_element_type(0) != x.get_element_type()):
            continue
        op.output(0).replace(opset13.softplus(x).output(0))
        replaced += 1
    return replaced


def compile_openvino(data: bytes, *, outputs: Sequence[str], threads: int | None,
                     where: str) -> CompiledOpenVino:
    """Compile a serialized ONNX model for OpenVINO's CPU plugin.

    Args:
        data: the ONNX file's bytes (already checked: no external data, deepergat metadata).
        outputs: the output names to return, in order.
        threads: inference threads (None: OpenVINO's default, every core).
        where: the model's path, for messages.

    Raises:
        OpenVinoCompileError: OpenVINO cannot read or compile the model.
    """
    with _signals_blocked():  # the Core, the reader and the compiler may start threads
        return _compile(data, outputs=outputs, threads=threads, where=where)


def _compile(data: bytes, *, outputs: Sequence[str], threads: int | None,
             where: str) -> CompiledOpenVino:
    import openvino as ov

    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",  # one stream: one batch at a time, all threads on it
        "INFERENCE_PRECISION_HINT": "f32",  # never bf16/f16 on CPUs that offer them
        # no pinning: MPI ranks and predicting workers share a node's cores
        "ENABLE_CPU_PINNING": False,
        # kernels kept per input shape: every screening batch has another shape, and the
        # default (5,000) let a process grow ~1.3 MB per new shape without levelling off
        "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_CAPACITY,
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        core = ov.Core()
        model = core.read_model(model=data, weights=b"")
        native_softplus(model)
        return CompiledOpenVino(core.compile_model(model, "CPU", config), outputs)
    except Exception as e:  # OpenVINO raises plain RuntimeErrors
        raise OpenVinoCompileError(where, " ".join(str(e).split())[:300]) from None
