"""`load`: one `Predictor` over every model file kind.

=========================  ===================================  ==============================
file                       backend                              imports
=========================  ===================================  ==============================
``.onnx``                  compiled here, OpenVINO (CPU) or     onnxruntime [+ openvino] (no torch;
                           ONNX Runtime                         torch when compiled here)
``.pt`` (TorchScript)      ``torch.jit.load``                   torch
``.pt2`` (torch.export)    ``torch.export.load(...).module()``  torch
``.pt2`` (AOTInductor)     torch's AOTI package loader          torch (CPU-compiled package)
``.ckpt`` (checkpoint)     eager `DeeperGATGNN`                 torch
bundled model name         its shipped ``.onnx`` (else .ckpt)   as above
=========================  ===================================  ==============================

An ``.onnx`` file runs on ONNX Runtime (CUDA or CPU provider); on the CPU it runs compiled for
this machine when ``deepergat compile`` compiled its checkpoint here (`compiled`: AOTInductor,
this user's private cache), else a single model runs on OpenVINO when it is installed
(`openvino_runtime`: fused kernels); the same numbers to float32 rounding either way. ONNX
Runtime reads and checks the file in every case.

Every predictor takes the model inputs (docs/design.md) as numpy arrays and returns a
`Prediction` of numpy arrays — with the calibrated spread ``std`` when the model is an ensemble —
carries the file's metadata (a `deepergat.metadata.ModelMetadata`), its sha256 and path, and
checks a caller's graph settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deepergat.contract import INPUT_DTYPES, INPUT_NDIM
from deepergat.errors import DeepergatError, SettingError, is_memory_message, literal
from deepergat.metadata import ModelMetadata, WeightsView, check_weights
from deepergat.system.devices import DeviceChoice, parse_device
from deepergat.system.files import file_sha256

from .files import (
    CHECKPOINT_KIND,
    CODE_KINDS,
    expect_kind,
    onnx_external_tensors,
    onnx_initializers,
    read_onnx_metadata_props,
)
from .metadata import EXTRA_FILE, KINDS, METADATA_KEY, check_settings, decode_model_metadata
from .openvino_runtime import (
    CompiledOpenVino,
    OnnxRuntimeChoice,
    OpenVinoCompileError,
    chosen_runtime,
    compile_openvino,
    openvino_was_asked,
    pick_runtime,
)
from .resolve import resolve_model
from .shapes import INPUT_NAMES

__all__ = ["OnnxPredictor", "OpenVinoPredictor", "Prediction", "Predictor", "TorchPredictor",
           "load", "parse_device", "warn_cell_dependent", "would_run_compiled"]

log = logging.getLogger(__name__)

Device = DeviceChoice


class Prediction(NamedTuple):
    """A batch's outputs.

    Attributes:
        prediction: [C, T] float32, in the targets' units (an ensemble: the members' mean).
        embedding: [C, D] float32 pooled crystal vectors (an ensemble: the members' mean).
        std: [C, T] float32 calibrated spread of an ensemble (same units), None for a single
            model.
    """

    prediction: np.ndarray
    embedding: np.ndarray
    std: np.ndarray | None = None


class Predictor:
    """A loaded model: numpy inputs in, numpy predictions out.

    Attributes:
        path: the model file.
        metadata: its `ModelMetadata` (docs/design.md §8): ``format``, ``model`` (constructor
            arguments), ``graph`` (cutoff Å, max_neighbors, construction), ``targets`` (name,
            units, mean, std), ``elements``, ...; exported files add ``kind``, ``exporter``,
            ``parity``. ``metadata.to_dict()`` is the document the file carries.
        sha256: hex digest of the file.
        backend: ``"onnxruntime"``, ``"openvino"``, ``"compiled"`` (an ``.onnx`` file run by
            its package compiled on this machine), ``"torchscript"``, ``"torch.export"``,
            ``"aoti"`` or ``"eager"``.
        device: where it runs: ``"cpu"`` or ``"cuda:<id>"``.
    """

    backend = ""

    def __init__(self, path: Path, metadata: ModelMetadata, sha256: str, device: str) -> None:
        self.path = path
        self.metadata = metadata
        self.sha256 = sha256
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, backend={self.backend!r}, " \
               f"device={self.device!r})"

    # ------------------------------------------------------------------ metadata views
    # `metadata` answers everything about the model; these few views stay because the
    # screening driver, ``predict``/``evaluate`` and their tests read them by these names.

    @property
    def targets(self) -> list[str]:
        """[T] target names, in output order (`ModelMetadata.target_names`)."""
        return self.metadata.target_names

    @property
    def units(self) -> list[str]:
        """[T] target units (`ModelMetadata.units`)."""
        return self.metadata.units

    @property
    def cutoff(self) -> float:
        """Graph cutoff, Å (``metadata.graph.cutoff``)."""
        return self.metadata.graph.cutoff

    @property
    def max_neighbors(self) -> int:
        """Graph neighbor count (``metadata.graph.max_neighbors``)."""
        return self.metadata.graph.max_neighbors

    @property
    def graph(self) -> str:
        """Graph construction, ``"periodic"`` or ``"minimum-image"``
        (``metadata.graph.construction``)."""
        return self.metadata.graph.construction

    @property
    def graph_settings(self) -> dict[str, Any]:
        """Keyword arguments of `deepergat.graphs.build_inputs` for this model's graphs
        (`GraphSettings.as_kwargs`)."""
        return self.metadata.graph.as_kwargs()

    @property
    def members(self) -> int:
        """Ensemble members, 1 for a single model (`ModelMetadata.members`)."""
        return self.metadata.members

    @property
    def has_std(self) -> bool:
        """Whether `predict` returns a calibrated spread (`ModelMetadata.is_ensemble`)."""
        return self.metadata.is_ensemble

    @property
    def elements(self) -> list[int]:
        """Atomic numbers seen in training (``metadata.elements``)."""
        return list(self.metadata.elements)

    def check_settings(
        self, *, cutoff: float | None = None, max_neighbors: int | None = None,
        graph: str | None = None,
    ) -> None:
        """Refuse graph settings that differ from the model's (`DeepergatError` naming both
        values)."""
        check_settings(self.metadata, cutoff=cutoff, max_neighbors=max_neighbors, graph=graph,
                       where=str(self.path))

    # ------------------------------------------------------------------ prediction

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Predict a batch.

        Args:
            inputs: the docs/design.md model inputs by name (`deepergat.graphs.GraphBatch.inputs`):
                atomic_numbers [N] int64, neighbors [N, K] int64, distances [N, K] float32 Å,
                neighbor_mask [N, K] bool, crystal_atoms [C, A] int64, crystal_mask [C, A]
                bool, batch [N] int64. Other dtypes are converted.

        Returns:
            `Prediction`: prediction [C, T] float32 in the targets' units, embedding [C, D]
            float32, and std [C, T] float32 for an ensemble (else None).

        Raises:
            DeepergatError: a missing input or one of the wrong rank.
        """
        arrays = self._prepare(inputs)
        c = arrays[INPUT_NAMES.index("crystal_atoms")].shape[0]
        if c == 0:
            t = len(self.metadata.targets)
            empty = np.zeros((0, t), np.float32)
            return Prediction(empty, np.zeros((0, self.metadata.embedding_dim), np.float32),
                              empty.copy() if self.has_std else None)
        outputs = self._run(arrays)
        std = np.asarray(outputs[2], dtype=np.float32) if len(outputs) > 2 else None
        return Prediction(np.asarray(outputs[0], dtype=np.float32),
                          np.asarray(outputs[1], dtype=np.float32), std)

    def _prepare(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in INPUT_NAMES if n not in inputs]
        if missing:
            raise DeepergatError(f"model inputs missing: {', '.join(missing)}")
        out = []
        for name in INPUT_NAMES:
            a = np.ascontiguousarray(inputs[name], dtype=INPUT_DTYPES[name])
            if a.ndim != INPUT_NDIM[name]:
                raise DeepergatError(
                    f"model input {name} has shape {a.shape}; expected {INPUT_NDIM[name]} axes"
                )
            out.append(a)
        return out

    def _run(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        """(prediction, embedding[, std]) of one prepared batch."""
        raise NotImplementedError


class OnnxPredictor(Predictor):
    """An ONNX file on ONNX Runtime (no torch).

    Attributes:
        session: the onnxruntime InferenceSession.
        providers: the session's execution providers, in order.
    """

    backend = "onnxruntime"

    def __init__(self, path: Path, session: Any, metadata: ModelMetadata, sha256: str,
                 device: str) -> None:
        super().__init__(path, metadata, sha256, device)
        self.session = session
        self.providers: list[str] = list(session.get_providers())
        self._outputs = list(metadata.output_names)

    def _run(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        feed = dict(zip(INPUT_NAMES, arrays, strict=True))
        try:
            outputs = self.session.run(self._outputs, feed)
        except Exception as e:
            raise runtime_failure(self.path, "onnxruntime", e) from e
        return tuple(outputs)


class OpenVinoPredictor(OnnxPredictor):
    """An ONNX file compiled by OpenVINO for the CPU; ``session`` (ONNX Runtime) read and
    checked it and stays for its metadata."""

    backend = "openvino"

    def __init__(self, path: Path, session: Any, compiled: CompiledOpenVino,
                 metadata: ModelMetadata, sha256: str) -> None:
        super().__init__(path, session, metadata, sha256, "cpu")
        self.compiled = compiled
        self.providers = ["OpenVINO CPU"]

    def _run(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        try:
            outputs = self.compiled.run(dict(zip(INPUT_NAMES, arrays, strict=True)))
        except Exception as e:
            raise runtime_failure(self.path, "openvino", e) from e
        crystals = arrays[INPUT_NAMES.index("crystal_atoms")].shape[0]
        for name, out in zip(self.compiled.outputs, outputs, strict=True):
            if out.shape[:1] != (crystals,):  # never another batch's rows
                raise DeepergatError(f"{self.path}: openvino returned {out.shape[0]} rows of "
                                     f"{name} for {crystals} structures")
        return outputs


def runtime_failure(path: Path, runtime: str, e: Exception) -> Exception:
    """The error to raise for a runtime's failure on a batch: a `MemoryError` when its message
    says an allocation failed (screening then computes the batch again in halves), else a
    `DeepergatError` naming the file."""
    text = " ".join(str(e).split())
    if is_memory_message(text):
        return MemoryError(f"{path}: {runtime} ran out of memory on the batch: {text[-300:]}")
    return DeepergatError(f"{path}: {runtime} failed on the batch: {text[:300]}")


class TorchPredictor(Predictor):
    """A TorchScript file, a ``torch.export`` program or a checkpoint on PyTorch.

    Attributes:
        module: the callable module (forward(7 tensors) -> (prediction, embedding[, std])).
    """

    def __init__(self, path: Path, module: Any, metadata: ModelMetadata, sha256: str,
                 device: str, backend: str) -> None:
        super().__init__(path, metadata, sha256, device)
        self.module = module
        self.backend = backend

    def _run(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        import torch

        dev = torch.device(self.device)
        tensors = [torch.from_numpy(a).to(dev, non_blocking=True) for a in arrays]
        # TorchScript's profiling executor on CUDA compiles fused kernels per input shape, and
        # every screening batch has another shape (docs/design.md §8); plain execution does not.
        plain = self.backend == "torchscript" and dev.type == "cuda"
        with torch.inference_mode(), (
            torch.jit.optimized_execution(False) if plain else contextlib.nullcontext()
        ):
            outputs = self.module(*tensors)
        return tuple(t.float().cpu().numpy() for t in outputs)


# ----------------------------------------------------------------------------- loaders


def load(
    path_or_name: str | os.PathLike[str],
    *,
    device: Device | str = "auto",
    device_id: int | None = None,
    threads: int | None = None,
    inter_op_threads: int | None = None,
    cutoff: float | None = None,
    max_neighbors: int | None = None,
    graph: str | None = None,
    optimization: str = "all",
    runtime: OnnxRuntimeChoice = "auto",
    trust: bool = False,
) -> Predictor:
    """Load a model file or a bundled model for prediction.

    Args:
        path_or_name: a ``.onnx``, ``.pt``, ``.pt2`` (torch.export program or AOTInductor
            package) or ``.ckpt`` file (kind by suffix, confirmed by content), or a bundled
            model name (its shipped ``.onnx``).
        device: ``"auto"`` (CUDA when a GPU and its libraries are present, else CPU),
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (torch's spelling of device N).
        device_id: CUDA device ordinal; None: N of ``"cuda:N"``, else 0.
        threads: CPU threads: ONNX Runtime's intra-op threads for this session; for torch
            backends ``torch.set_num_threads`` (process-wide). None: the runtime's default.
        inter_op_threads: ONNX Runtime inter-op threads (> 1 runs independent nodes in
            parallel; measured slower for this model, see ``benchmarks/bench_infer.py``).
            None: sequential. Torch backends ignore it.
        cutoff, max_neighbors, graph: the caller's graph settings (Å, count, construction),
            checked against the model's.
        optimization: ONNX Runtime graph optimization level (``disable``, ``basic``,
            ``extended``, ``all``).
        runtime: what runs an ``.onnx`` file on the CPU: ``"auto"`` (the model compiled on
            this machine by ``deepergat compile`` when there is one, else OpenVINO for a single
            model when installed, else ONNX Runtime; ``DEEPERGAT_ONNX_RUNTIME`` overrides),
            ``"onnxruntime"``, ``"openvino"`` or ``"compiled"``
            (`deepergat.export.openvino_runtime`, `deepergat.export.compiled`). Other files
            ignore it.
        trust: load a file whose loading runs code from it — an AOTInductor package (native
            code) or a TorchScript program. Only for files whose source you trust; ONNX files,
            ``.pt2`` programs and checkpoints never need it (nothing in them runs).

    Torch-backed files also tune glibc malloc for the process (`runtime.tune_malloc`: freed
    memory is kept instead of being faulted in again on every batch; ``DEEPERGAT_TUNE_MALLOC=0``
    turns it off).

    Raises:
        DeepergatError: no such file or bundled model, a truncated or foreign file, a suffix
            its content contradicts, mismatched graph settings, an unavailable device, a file
            that runs code without ``trust``, an ONNX file with external data or a ``.pt2``
            holding a pickle that is not plain tensors, or metadata the file's own tensors
            contradict (`deepergat.metadata.check_weights`: graph settings, target scaling,
            sizes, members; docs/design.md §7, §8).
    """
    device, device_id = parse_device(device, device_id)
    path = resolve_model(path_or_name, prefer="onnx")
    kind = expect_kind(path)
    if kind in CODE_KINDS and not trust:
        raise DeepergatError(
            f"{path}: is {CODE_KINDS[kind]}; load it only if you trust where it came from: "
            "pass --trust (trust=True in Python), or use the .onnx or .pt2 file, which run no "
            "code from the file"
        )
    if kind == KINDS["onnx"]:
        predictor: Predictor = _load_onnx(path, device=device, device_id=device_id,
                                          threads=threads, inter_op_threads=inter_op_threads,
                                          optimization=optimization, runtime=runtime)
    else:
        predictor = _load_torch(path, kind, device=device, device_id=device_id, threads=threads)
    predictor.check_settings(cutoff=cutoff, max_neighbors=max_neighbors, graph=graph)
    log.info("loaded %s (%s on %s)", path, predictor.backend, predictor.device)
    return predictor


def _load_onnx(path: Path, *, device: Device, device_id: int, threads: int | None,
               inter_op_threads: int | None, optimization: str,
               runtime: OnnxRuntimeChoice) -> OnnxPredictor:
    from .runtime import make_session

    data = path.read_bytes()
    try:
        external = onnx_external_tensors(data)
    except ValueError as e:
        raise DeepergatError(f"{path}: not a readable ONNX model (truncated or damaged: {e})"
                             ) from None
    if external:
        raise DeepergatError(
            f"{path}: refers to external data files (tensors stored outside the model, read "
            "by a path the file chooses); deepergat exports keep every weight inside the file: "
            "re-export it with `deepergat export`"
        )
    session = make_session(data, device=device, device_id=device_id, threads=threads,
                           inter_op_threads=inter_op_threads, optimization=optimization,
                           where=str(path))
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise DeepergatError(
            f"{path}: an ONNX model without deepergat metadata: not exported by `deepergat export`"
        )
    meta = decode_model_metadata(props[METADATA_KEY], where=str(path))
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(INPUT_NAMES):
        raise DeepergatError(f"{path}: ONNX inputs {names} are not the deepergat model's")
    _check_onnx_weights(path, data, session, meta)
    on_cuda = "CUDAExecutionProvider" in session.get_providers()
    sha256 = hashlib.sha256(data).hexdigest()
    if not on_cuda:
        compiled_model = _compiled_predictor(path, runtime, meta, sha256, threads)
        if compiled_model is not None:
            return compiled_model
    if pick_runtime(runtime, on_cuda=on_cuda, has_std="std" in meta.output_names) == "openvino":
        try:
            compiled = compile_openvino(data, outputs=meta.output_names, threads=threads,
                                        where=str(path))
        except OpenVinoCompileError as e:
            if openvino_was_asked(runtime):
                raise
            log.warning("%s: OpenVINO cannot compile the model (%s); running it on ONNX Runtime",
                        e.where, e.detail)
        else:
            return OpenVinoPredictor(path, session, compiled, meta, sha256)
    return OnnxPredictor(path, session, meta, sha256, f"cuda:{device_id}" if on_cuda else "cpu")


def would_run_compiled(path: str | os.PathLike[str], runtime: OnnxRuntimeChoice = "auto"
                       ) -> bool:
    """Whether `load` on the CPU would run this ``.onnx`` file compiled on this machine: the
    runtime choice allows it and the cache holds a usable entry for the file's checkpoint (the
    package itself is checked when it is loaded). Reads the file's metadata only (no session,
    no torch import).

    Raises:
        DeepergatError: not a deepergat ONNX file. SettingError: an unknown runtime choice.
    """
    p = Path(path)
    if p.suffix != ".onnx" or chosen_runtime(runtime) not in ("auto", "compiled"):
        return False
    from .compiled import find_compiled

    props = read_onnx_metadata_props(p)
    if METADATA_KEY not in props:
        raise DeepergatError(f"{p}: an ONNX model without deepergat metadata")
    meta = decode_model_metadata(props[METADATA_KEY], where=str(p))
    return find_compiled(meta.source_sha256 or "", warn=False) is not None  # the load warns


#: What must be equal in an ``.onnx`` file's metadata and its compiled package's for the package
#: to run under the file's identity (the same weights, graph, targets and calibration), compared
#: as typed values (an older file's graph without ``construction`` reads as periodic, one
#: without a translation rule as this version's).
_SAME_MODEL = ("model", "graph", "targets", "elements", "store_digest", "source_sha256",
               "calibration", "output_names")


def _compiled_predictor(path: Path, runtime: OnnxRuntimeChoice, meta: ModelMetadata,
                        sha256: str, threads: int | None) -> TorchPredictor | None:
    """The ``.onnx`` file's model as compiled on this machine (`deepergat.export.compiled`)
    when the runtime choice allows it and the cache holds it for the file's checkpoint; the
    predictor keeps the file's path, metadata and sha256 (the model's identity)."""
    choice = chosen_runtime(runtime)
    if choice not in ("auto", "compiled"):
        return None
    from .compiled import find_compiled, open_package, torch_version

    if torch_version() is None:
        if choice == "compiled":
            raise SettingError("the compiled runtime needs torch: pip install "
                               "'deepergat[train]', or choose the onnxruntime or openvino "
                               "runtime")
        return None
    entry = find_compiled(meta.source_sha256 or "")
    if entry is None:
        if choice == "compiled":
            raise SettingError(
                f"{literal(path)}: no model compiled on this machine for its checkpoint (sha256 "
                f"{(meta.source_sha256 or '?')[:12]}); run `deepergat compile CHECKPOINT` first, "
                "or choose the onnxruntime or openvino runtime")
        return None
    try:
        fd, data = open_package(entry)
        try:
            _check_same_model(path, meta, data, entry.package)
            predictor = _load_compiled(path, entry.package, fd, meta, sha256, threads)
        except BaseException:
            os.close(fd)
            raise
    except (DeepergatError, ImportError) as e:  # ImportError: a torch that does not import
        if choice == "compiled":
            raise
        log.warning("%s; running %s without it", e, path)
        return None
    return predictor


def _check_same_model(path: Path, meta: ModelMetadata, package: bytes, where: Path) -> None:
    """Refuse a compiled package whose metadata describes another model than the ``.onnx``
    file's (a file claiming a checkpoint it was not exported from, or edited since)."""
    import io
    import zipfile

    doc: ModelMetadata | None = None
    with (contextlib.suppress(zipfile.BadZipFile, OSError, ValueError, KeyError, StopIteration,
                              DeepergatError),
          zipfile.ZipFile(io.BytesIO(package)) as zf):
        name = next(n for n in zf.namelist() if n.endswith(f"/extra/{EXTRA_FILE}"))
        doc = decode_model_metadata(zf.read(name).decode(), where=str(where))
    if doc is None:
        raise DeepergatError(f"{where}: not using the compiled model: its metadata is "
                             "unreadable; run `deepergat compile` again")
    differ = [k for k in _SAME_MODEL if k != "graph" and getattr(meta, k) != getattr(doc, k)]
    a, b = meta.graph, doc.graph
    if ((a.cutoff, a.max_neighbors, a.construction) != (b.cutoff, b.max_neighbors, b.construction)
            or (a.translations and b.translations and a.translations != b.translations)):
        differ.append("graph")
    if differ:
        raise DeepergatError(f"{where}: not using the compiled model for {path}: the two files "
                             f"describe different models ({', '.join(differ)} differ)")


def _load_compiled(path: Path, package: Path, fd: int, meta: ModelMetadata, sha256: str,
                   threads: int | None) -> TorchPredictor:
    import torch

    from .aoti import load_aoti
    from .runtime import tune_malloc

    tune_malloc()
    if threads is not None:
        torch.set_num_threads(int(threads))
    module = load_aoti(package, fd=fd)
    return TorchPredictor(path, module, meta, sha256, "cpu", "compiled")


def _check_onnx_weights(path: Path, data: bytes, session: Any, meta: ModelMetadata) -> None:
    """Refuse metadata that the file's initializers or outputs contradict
    (`deepergat.metadata.check_weights`; the exporter folds or merges some tensors, so only
    those the file names are checked)."""
    tensors = onnx_initializers(data)  # parsed before: a damaged file failed already
    view = WeightsView({k: shape for k, (shape, _) in tensors.items()},
                       lambda name: tensors[name][1], complete=False)
    check_weights(meta, view, where=str(path))
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if sorted(outputs) != sorted(meta.output_names):
        raise DeepergatError(
            f"{path}: the metadata contradicts the model's weights: it describes outputs "
            f"{', '.join(meta.output_names)} but the file computes {', '.join(outputs)}; use an "
            "intact copy of the model file")
    t = len(meta.targets)
    for name, want in (("prediction", t), ("std", t), ("embedding", _embedding_dim(meta))):
        shape = outputs.get(name)
        got = shape[-1] if shape else None
        if isinstance(got, int) and want is not None and got != want:
            raise DeepergatError(
                f"{path}: the metadata contradicts the model's weights: it describes {want} "
                f"{'targets' if name != 'embedding' else 'embedding columns'} but the file's "
                f"{name} output has {got}; use an intact copy of the model file")


def _embedding_dim(meta: ModelMetadata) -> int | None:
    try:
        return meta.embedding_dim
    except (KeyError, TypeError, ValueError):  # an architecture this version does not know
        return None


def _torch_device(device: Device, device_id: int, where: Path) -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available() and device_id < torch.cuda.device_count():
        return f"cuda:{device_id}"
    if device == "cuda":
        raise DeepergatError(
            f"{where}: device 'cuda' requested but torch sees no CUDA device {device_id}; "
            "use device 'cpu'"
        )
    return "cpu"


def program_on(program: Any, device: str) -> Any:
    """The ``torch.export`` program with its weights and recorded devices on ``device``.

    Export records the exporting device in the graph (``_assert_tensor_metadata(...,
    device=cpu)`` after each ``.to(dtype)``), so moving the weights alone leaves a program that
    fails on a GPU; ``move_to_device_pass`` rewrites both.
    """
    if device == "cpu":
        return program
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:  # torch < 2.6 had it under a private name
        try:
            from torch._export.passes import move_to_device_pass  # type: ignore[no-redef]
        except ImportError:
            raise DeepergatError(
                f"running a .pt2 program on {device} needs torch >= 2.6 (this is "
                f"{__import__('torch').__version__}); use the .onnx or .pt file"
            ) from None
    return move_to_device_pass(program, device)


def _load_torch(path: Path, kind: str, *, device: Device, device_id: int,
                threads: int | None) -> TorchPredictor:
    import torch

    from .runtime import tune_malloc

    tune_malloc()

    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = _torch_device(device, device_id, path)
    if kind == CHECKPOINT_KIND:
        from deepergat.nn.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        meta = ckpt.metadata
        return TorchPredictor(path, ckpt.model.to(dev).eval(), meta, meta.source_sha256 or "",
                              dev, "eager")
    sha = file_sha256(path)
    extra = {EXTRA_FILE: ""}
    state: dict[str, Any] = {}
    try:
        with warnings.catch_warnings(), _quiet_torch():
            warnings.simplefilter("ignore")
            if kind == KINDS["torchscript"]:
                module = torch.jit.load(os.fspath(path), map_location=dev, _extra_files=extra)
                module.eval()
                state = module.state_dict()
                backend = "torchscript"
            elif kind == KINDS["pt2"]:
                from .pt2 import load_program

                program = load_program(path, extra_files=extra)
                state = {**program.state_dict, **program.constants}
                module = program_on(program, dev).module()
                backend = "torch.export"
            else:
                from .aoti import load_aoti

                module = load_aoti(path)
                compiled_for = module.get_metadata().get("AOTI_DEVICE_KEY", "cpu")
                if compiled_for == "cpu" and dev != "cpu":
                    if device == "cuda":
                        raise DeepergatError(
                            f"{path}: an AOTInductor package compiled for the CPU cannot run on "
                            "'cuda'; use device 'cpu' or another format"
                        )
                    dev = "cpu"
                from .files import read_extra_file

                extra[EXTRA_FILE] = read_extra_file(path, EXTRA_FILE).decode()
                backend = "aoti"
    except DeepergatError:
        raise
    except Exception as e:
        raise DeepergatError(
            f"{path}: cannot load the {kind} file (truncated or damaged?): "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    if not extra[EXTRA_FILE]:
        raise DeepergatError(
            f"{path}: no deepergat metadata (extra file {EXTRA_FILE} missing): not exported by "
            "`deepergat export`"
        )
    meta = decode_model_metadata(extra[EXTRA_FILE], where=str(path))
    if backend != "aoti":  # a compiled package holds its weights in native code
        check_weights(meta, WeightsView.of(state), where=str(path))
    return TorchPredictor(path, module, meta, sha, dev, backend)


@contextlib.contextmanager
def _quiet_torch() -> Any:
    lg = logging.getLogger("torch")
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def warn_cell_dependent(construction: str, name: str) -> None:
    """Log a warning for a model whose graphs depend on the primitive cell's size
    (minimum-image): an exact supercell predicts as its cell, but a crystal with a larger
    primitive cell than the training cells (a double perovskite) is a graph the model never
    saw (benchmarks/ACCURACY.md)."""
    if construction == "minimum-image":
        log.warning("%s uses minimum-image graphs: each atom sees every other atom of the "
                    "primitive cell once, so a crystal whose primitive cell is larger than "
                    "the cells it was trained on (e.g. a double perovskite) gets a graph it "
                    "never saw; for such cells use a periodic-graph model "
                    "(perovskite-heat-single)", name)
