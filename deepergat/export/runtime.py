"""ONNX Runtime plumbing: which IR version the installed runtime reads, which execution
provider to use, and quiet session creation.

No torch here: screening ranks and workers load ONNX models through this module.

Execution provider choice (``device``):

* ``"cpu"``: the CPU provider.
* ``"cuda"``: the CUDA provider on ``device_id``, or a `DeepergatError` when it cannot run.
* ``"auto"``: CUDA when onnxruntime offers the CUDA provider, a GPU is present and the CUDA
  libraries load, else the CPU.

onnxruntime-gpu lists the CUDA provider even on machines without a GPU or without the CUDA
libraries, and a session that asks for it there prints a wall of error logs before it falls
back to the CPU. So ``"auto"`` first checks cheaply for a GPU (`deepergat.devices.visible_gpus`,
the probe training and screening use: ``CUDA_VISIBLE_DEVICES`` and the driver), and every
attempt at the CUDA provider runs with onnxruntime's logging raised to fatal-only; whether
CUDA really runs is read back from the session's providers.

Before the first CUDA session the CUDA and cuDNN libraries of pip's ``nvidia-*`` packages (the
``onnxruntime-gpu[cuda,cudnn]`` extras) are loaded with ``onnxruntime.preload_dlls``, so they
are found without ``LD_LIBRARY_PATH`` and without importing torch first; libraries the system
provides are found as usual.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from deepergat.errors import DeepergatError
from deepergat.system.devices import DeviceChoice, check_device, visible_gpus

__all__ = [
    "OPTIMIZATION_LEVELS",
    "cuda_available",
    "make_session",
    "max_ir_version",
    "tune_malloc",
]

log = logging.getLogger(__name__)

Device = DeviceChoice
#: Graph optimization levels by name (onnxruntime.GraphOptimizationLevel members).
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: onnxruntime's default logger severity (0 verbose ... 4 fatal), restored after quiet spells.
_ORT_DEFAULT_SEVERITY = 2
_FATAL = 4


#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
_MMAP_THRESHOLD_MAX = 32 << 20
_malloc_tuned = False


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    PyTorch's CPU allocator takes every tensor from malloc, and glibc serves blocks above its
    mmap threshold with fresh pages that the kernel must fault in and zero on every forward:
    at 64 perovskites per batch half the eager model's CPU time was page faults in the kernel
    (850 minor faults per structure), gone with this tuning (1.65× faster; measured in
    ``benchmarks/bench_infer.py``). Sets M_MMAP_THRESHOLD to glibc's ceiling (32 MB: larger
    tensors are still mapped fresh, which is why torch backends prefer batches whose [N, K, H·D]
    tensors stay below it, ≈ 1900 atoms at K = 17), a large M_TRIM_THRESHOLD and M_TOP_PAD.
    The price is that the process keeps its peak heap. ONNX Runtime has its own arena and
    does not need this.

    Process-wide and idempotent; `deepergat.export.load` calls it for torch-backed files
    unless ``DEEPERGAT_TUNE_MALLOC=0``.

    Returns:
        whether the tuning is in effect (False off glibc or when disabled).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if os.environ.get("DEEPERGAT_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = (mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
          and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
          and mallopt(_M_TOP_PAD, 64 << 20) == 1)
    _malloc_tuned = bool(ok)
    log.debug("glibc malloc tuned for large tensors: %s", _malloc_tuned)
    return _malloc_tuned


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - a dependency
        raise DeepergatError(
            f"onnxruntime is not installed ({e}); pip install 'deepergat[cpu]' (or "
            "'deepergat[gpu]' on a GPU node)"
        ) from None
    return onnxruntime


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """Raise onnxruntime's default logger to fatal-only for the duration (provider probes)."""
    ort = _ort()
    ort.set_default_logger_severity(_FATAL)
    try:
        yield
    finally:
        ort.set_default_logger_severity(_ORT_DEFAULT_SEVERITY)


@functools.cache
def preload_cuda_libraries() -> None:
    """Load the CUDA and cuDNN libraries from pip's ``nvidia-*`` packages, once per process.

    ``onnxruntime.preload_dlls`` (onnxruntime >= 1.21) looks beside the onnxruntime package and
    then on the default library path; what it prints or warns about what it cannot load goes to
    the debug log here, not to the user's terminal (stdout is redirected for the call, briefly,
    for the whole process). A missing library is not an error at this point: the session then
    falls back or reports it (`make_session`).
    """
    ort = _ort()
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            preload(cuda=True, cudnn=True, msvc=False)
        for w in warned:
            said.write(f" {w.message}")
    except Exception as e:  # a missing folder, an odd install: the session decides
        log.debug("onnxruntime.preload_dlls failed: %s", e)
    if said.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", " ".join(said.getvalue().split()))


def cuda_available() -> bool:
    """Whether onnxruntime offers the CUDA provider and a GPU with its driver is present.

    Necessary, not sufficient: the CUDA and cuDNN libraries are only known to load once a
    session asks for the provider (see `make_session`).
    """
    ort = _ort()
    return "CUDAExecutionProvider" in ort.get_available_providers() and visible_gpus() > 0


@functools.cache
def max_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime reads.

    Found by asking the runtime, not from a table: a one-node model is offered at decreasing IR
    versions (from the installed onnx package's newest) until a session accepts it. Known
    values: onnxruntime(-gpu) 1.31 reads IR ≤ 13, onnxruntime 1.32 reads 14; onnx 1.23 writes 14
    by default, so files must be lowered to what the runtime that will load them reads.
    """
    import onnx
    from onnx import TensorProto, helper

    ort = _ort()
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.log_severity_level = _FATAL
    with quiet_onnxruntime():
        for ir in range(onnx.IR_VERSION, 6, -1):
            model.ir_version = ir
            try:
                ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            except Exception:
                continue
            log.debug("onnxruntime %s reads ONNX IR <= %d", ort.__version__, ir)
            return ir
    raise DeepergatError(f"onnxruntime {ort.__version__} reads no ONNX IR version >= 7")


def session_options(
    *,
    threads: int | None = None,
    inter_op_threads: int | None = None,
    optimization: str = "all",
) -> Any:
    """onnxruntime SessionOptions.

    Args:
        threads: intra-op threads (None: onnxruntime's default, one per physical core).
        inter_op_threads: inter-op threads (None: 1, sequential execution: the model is a
            chain of large kernels, parallel execution only adds contention).
        optimization: graph optimization level, a key of `OPTIMIZATION_LEVELS`.
    """
    ort = _ort()
    if optimization not in OPTIMIZATION_LEVELS:
        raise DeepergatError(
            f"unknown graph optimization level {optimization!r}; one of "
            f"{', '.join(OPTIMIZATION_LEVELS)}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization]
    )
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if inter_op_threads is not None and inter_op_threads > 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = int(inter_op_threads)
    else:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no optimizer chatter on every load
    return options


def make_session(
    model: str | os.PathLike[str] | bytes,
    *,
    device: Device = "auto",
    device_id: int = 0,
    threads: int | None = None,
    inter_op_threads: int | None = None,
    optimization: str = "all",
    where: str = "model",
) -> Any:
    """An onnxruntime InferenceSession on the chosen device.

    Args:
        model: path or serialized ModelProto.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see the module docstring).
        device_id: CUDA device ordinal.
        threads, inter_op_threads, optimization: see `session_options`.
        where: the model's name or path, for messages.

    Raises:
        DeepergatError: an unreadable model, or ``device="cuda"`` where CUDA cannot run.
    """
    ort = _ort()
    device = check_device(device)
    src = os.fspath(model) if not isinstance(model, bytes) else model
    options = session_options(
        threads=threads, inter_op_threads=inter_op_threads, optimization=optimization
    )
    want_cuda = device == "cuda" or (device == "auto" and cuda_available())
    if want_cuda:
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DeepergatError(
                f"{where}: device 'cuda' requested but this onnxruntime ({ort.__version__}) has "
                "no CUDA provider; install onnxruntime-gpu or use device 'cpu'"
            )
        preload_cuda_libraries()
        providers: list[Any] = [
            ("CUDAExecutionProvider", {"device_id": int(device_id)}),
            "CPUExecutionProvider",
        ]
        options.log_severity_level = _FATAL
        session = None
        with quiet_onnxruntime():
            try:
                session = _create(ort, src, options, providers, where)
            except DeepergatError:
                if device == "cuda":
                    raise
        options.log_severity_level = 3
        if session is not None and "CUDAExecutionProvider" in session.get_providers():
            return session
        if device == "cuda":
            raise DeepergatError(
                f"{where}: device 'cuda' requested but the CUDA provider could not start "
                f"(no GPU {device_id}, or CUDA/cuDNN libraries missing); use device 'cpu'"
            )
        log.info("CUDA provider unavailable (GPU or CUDA libraries missing); using the CPU")
    return _create(ort, src, options, ["CPUExecutionProvider"], where)


def _create(ort: Any, src: str | bytes, options: Any, providers: list[Any], where: str) -> Any:
    try:
        return ort.InferenceSession(src, options, providers=providers)
    except Exception as e:
        first = " ".join(str(e).split())[:300]
        if "Unsupported model IR version" in first:
            raise DeepergatError(
                f"{where}: this onnxruntime ({ort.__version__}) is too old for the file ({first});"
                " upgrade onnxruntime or re-export with this one installed"
            ) from None
        raise DeepergatError(
            f"{where}: onnxruntime cannot load the model (truncated or damaged file?): {first}"
        ) from None
