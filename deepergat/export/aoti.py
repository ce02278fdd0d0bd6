"""Checkpoint → AOTInductor package (``model.aoti.pt2``): the ``torch.export`` program compiled
ahead of time to native kernels.

The fastest CPU backend: Inductor fuses the chains of elementwise ops on the [N, K, H·D] edge
tensors (softplus, the attention dot products) that every other backend runs as separate
memory-bound passes (see ``benchmarks/bench_infer.py``). Loading takes milliseconds and needs
torch but no compiler. The price:

* exporting needs a C++ compiler and takes a minute or two;
* the kernels are compiled for the exporting machine's CPU instruction set (recorded as
  ``exporter.compiled_for``, e.g. ``AVX512``): export on the kind of node that will run it;
* CPU only here (a CUDA package must be compiled on a GPU).

So it is not part of ``--format all``; ask for it with ``--format aoti``. Every size stays
dynamic (N, K, C, A ≥ 1). The metadata document is the archive entry ``extra/deepergat.json``,
as in the other zip-based files.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

from deepergat.errors import DeepergatError
from deepergat.system.files import atomic_path

from .metadata import EXTRA_FILE, encode_metadata, meta_tmp_path, save_named, with_exporter
from .pt2 import export_program

__all__ = ["AotiModule", "cpu_flags", "cpu_info", "load_aoti", "missing_cpu_flags",
           "set_aoti_metadata", "write_aoti"]

log = logging.getLogger(__name__)


#: CPU flags (``/proc/cpuinfo``) each word of a package's ``AOTI_CPU_ISA`` needs: the compiler
#: flags Inductor builds that ISA with (`torch._inductor.cpu_vec_isa`).
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "AVX2": ("avx2", "fma", "f16c"),
    "AVX512": ("avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"),
    "AVX512_VNNI": ("avx512_vnni",),
    "AMX_TILE": ("amx_tile", "amx_bf16", "amx_int8"),
}


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields of Linux ``/proc/cpuinfo`` (read once; {} elsewhere)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:  # a blank line ends the first processor
                        break
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``, first processor); None elsewhere."""
    info = cpu_info()
    value = info.get("flags", info.get("Features"))
    return frozenset(value.split()) if value is not None else None


def missing_cpu_flags(cpu_isa: str, flags: frozenset[str] | None = None) -> list[str]:
    """The flags this CPU lacks for a package compiled for ``cpu_isa`` (e.g. ``"AVX512
    AVX512_VNNI"``); [] when it has them all or when they cannot be known."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return []
    need = [f for word in cpu_isa.split() for f in ISA_FLAGS.get(word.upper(), ())]
    return sorted({f for f in need if f not in flags})


class AotiModule:
    """A loaded AOTInductor package: called on the 7 input tensors, returns its outputs.

    Loads through torch's package loader directly: `torch._inductor.aoti_load_package` first
    probes every vector ISA by compiling test programs (~1.8 s a process, and every screening
    worker loads the model); `missing_cpu_flags` checks the one thing that probe is for.
    ``fd``: a descriptor the package was read through, closed with the module.
    """

    def __init__(self, loader: Any, fd: int | None = None) -> None:
        self._loader = loader
        self._fd = fd

    def __call__(self, *tensors: Any) -> list[Any]:
        return list(self._loader.boxed_run(list(tensors)))

    def get_metadata(self) -> dict[str, str]:
        return dict(self._loader.get_metadata())

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def load_aoti(path: str | os.PathLike[str], *, fd: int | None = None) -> Any:
    """The compiled model of a package (callable on 7 tensors → (prediction, embedding)).

    Args:
        path: the package (named in messages).
        fd: an open descriptor on it to read it through instead (Linux ``/proc/self/fd``), so
            that the file a caller checked is the file loaded; the module owns it after.

    Raises:
        DeepergatError: not loadable here (damaged, or compiled for another platform or for
            CPU features this one lacks).
    """
    import torch

    path = os.fspath(path)
    source = f"/proc/self/fd/{fd}" if fd is not None and os.path.exists("/proc/self/fd") else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loader_cls = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
            try:
                info = loader_cls.load_metadata_from_package(source, "model")  # type: ignore[union-attr]
                _check_compiled_for(path, info)
                return AotiModule(loader_cls(source, "model", False, 1, -1), fd)  # type: ignore[misc]
            except (AttributeError, TypeError):  # another torch: its public loader and ISA probe
                module = torch._inductor.aoti_load_package(source)
                if fd is not None:
                    os.close(fd)
                return module
    except DeepergatError:
        raise
    except Exception as e:  # the loader raises RuntimeError, OSError, ...
        raise DeepergatError(
            f"{path}: cannot load the AOTInductor package (damaged, or compiled for another "
            f"platform or CPU): {' '.join(str(e).split())[:300]}"
        ) from None


def _check_compiled_for(path: str, info: dict[str, str]) -> None:
    """Refuse a CPU package compiled for another machine kind or CPU features this one lacks
    (its native code would die on an illegal instruction)."""
    import platform

    if info.get("AOTI_DEVICE_KEY", "cpu") != "cpu":
        return
    machine = info.get("AOTI_MACHINE", "")
    if machine and machine != platform.machine():
        raise DeepergatError(f"{path}: compiled for {machine}, this machine is "
                             f"{platform.machine()}; export it again on this node type")
    missing = missing_cpu_flags(info.get("AOTI_CPU_ISA", ""))
    if missing:
        raise DeepergatError(
            f"{path}: compiled for {info.get('AOTI_CPU_ISA')} CPUs; this CPU lacks "
            f"{', '.join(missing)}: export it again on this node type (or use the .onnx file)")


def write_aoti(
    model: Any, example: tuple[Any, ...], path: str | os.PathLike[str], metadata: dict[str, Any]
) -> dict[str, Any]:
    """Export ``model`` with ``torch.export``, compile it with AOTInductor, package it.

    Args: see `deepergat.export.exporter.Writer`.

    Returns:
        the exporter facts stored in the metadata (with ``compiled_for``: platform, machine,
        CPU ISA, device).

    Raises:
        DeepergatError: export or compilation failed (no C++ compiler, an unsupported op).
    """
    import torch

    program = export_program(model, example)

    def compile_to(p: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(p))

    try:
        # The package's top folder is named after the file it is written to: the final name,
        # never the exporter's staging name.
        save_named(Path(path), compile_to)
    except Exception as e:  # inductor raises many types (compiler errors included)
        raise DeepergatError(
            "AOTInductor compilation failed (it needs a working C++ compiler): "
            f"{' '.join(str(e).split())[:500]}"
        ) from e
    info = load_aoti(path).get_metadata()
    facts = {
        "exporter": "torch._inductor.aoti_compile_and_package",
        "torch": torch.__version__,
        "compiled_for": {
            "platform": info.get("AOTI_PLATFORM", ""),
            "machine": info.get("AOTI_MACHINE", ""),
            "cpu_isa": info.get("AOTI_CPU_ISA", ""),
            "device": info.get("AOTI_DEVICE_KEY", ""),
        },
    }
    meta = with_exporter(metadata, facts)
    set_aoti_metadata(path, meta)
    log.info("wrote %s (compiled for %s)", path, facts["compiled_for"]["cpu_isa"])
    return facts


def set_aoti_metadata(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Put the metadata document into the package as ``<archive>/extra/deepergat.json``
    (replacing an earlier one; the compiled entries are copied unchanged)."""
    path = Path(path)
    with atomic_path(path, tmp=meta_tmp_path(path)) as tmp, zipfile.ZipFile(path) as zin:
        names = zin.namelist()
        prefix = names[0].split("/", 1)[0] if names and "/" in names[0] else "archive"
        entry = f"{prefix}/extra/{EXTRA_FILE}"
        with zipfile.ZipFile(tmp, "w") as zout:
            for info in zin.infolist():
                if info.filename != entry:
                    zout.writestr(info, zin.read(info.filename))
            zout.writestr(entry, encode_metadata(meta))
