"""What a model file is, by suffix and confirmed by content (docs/design.md §2).

=========  ================================  ==========================================
suffix     kind                              content
=========  ================================  ==========================================
``.onnx``  ``deepergat-onnx``                ONNX protobuf, ``metadata_props["deepergat"]``
``.pt``    ``deepergat-torchscript``         zip with ``code/``, ``constants.pkl``,
                                             ``extra/deepergat.json``
``.pt2``   ``deepergat-pt2``                 zip with ``archive_format`` = ``pt2``,
                                             ``models/``, ``extra/deepergat.json``
``.pt2``   ``deepergat-aoti``                the same archive holding AOTInductor-compiled
                                             code (``data/aotinductor/``) instead
``.ckpt``  ``deepergat-checkpoint``          zip written by ``torch.save`` (``data.pkl``,
                                             no ``code/``)
=========  ================================  ==========================================

Sniffing and reading the metadata of exported files needs neither torch nor onnx: the zip
archives are read with `zipfile`, the ONNX protobuf is walked by hand just far enough to reach
``metadata_props`` (so that ``deepergat info`` and the screening driver stay light). Reading a
checkpoint's metadata imports torch.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

from deepergat.contract import CHECKPOINT_KIND, MODEL_FORMATS
from deepergat.errors import DeepergatError
from deepergat.system.files import read_head

from .metadata import EXTRA_FILE, KINDS, METADATA_KEY, decode_metadata

__all__ = [
    "CHECKPOINT_KIND",
    "CODE_KINDS",
    "MODEL_KINDS",
    "SUFFIX_KINDS",
    "model_file_kind",
    "onnx_external_tensors",
    "onnx_initializers",
    "read_extra_file",
    "read_metadata",
    "read_onnx_metadata_props",
    "sniff",
]

#: suffix -> the kinds its content may confirm.
SUFFIX_KINDS: dict[str, tuple[str, ...]] = {
    **{suffix: tuple(f.kind for f in MODEL_FORMATS.values() if f.suffix == suffix)
       for suffix in dict.fromkeys(f.suffix for f in MODEL_FORMATS.values())},
    ".ckpt": (CHECKPOINT_KIND,),
}
#: Every model kind.
MODEL_KINDS = frozenset(k for kinds in SUFFIX_KINDS.values() for k in kinds)
#: Kinds whose loading runs code from the file: an AOTInductor package is a shared library,
#: a TorchScript archive a program (its ``__setstate__`` methods run while it loads, and its
#: operators can reach the file system). They load only when the caller trusts the file.
CODE_KINDS: dict[str, str] = {f.kind: f.trust_note for f in MODEL_FORMATS.values() if f.runs_code}
_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: ONNX ModelProto field numbers: ir_version (1, varint), graph (7), metadata_props (14).
_ONNX_IR_VERSION, _ONNX_GRAPH, _ONNX_METADATA_PROPS = 1, 7, 14


def sniff(path: str | os.PathLike[str]) -> str:
    """The kind of a model file by its content alone (the suffix is not consulted).

    Returns:
        a kind of `MODEL_KINDS`, ``"hdf5"``, ``"zip"`` (another zip archive), ``"protobuf"``
        (parses as ONNX but carries no deepergat metadata) or ``"unknown"``.

    Raises:
        DeepergatError: missing file, a folder, or unreadable.
    """
    p = Path(path)
    head = read_head(p, what="model file")
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(p)
    if head[:1] == b"\x08":  # ONNX: field 1 (ir_version), varint
        try:
            props = read_onnx_metadata_props(p)
        except DeepergatError:
            return "unknown"
        return KINDS["onnx"] if METADATA_KEY in props else "protobuf"
    return "unknown"


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DeepergatError(
            f"{path}: damaged or truncated archive (not a readable zip file: {e})"
        ) from None


def _zip_kind(path: Path) -> str:
    names = _zip_names(path)
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "archive_format" in tails and any(t.startswith("data/aotinductor/") for t in tails):
        return KINDS["aoti"]
    if "archive_format" in tails and any(t.startswith("models/") for t in tails):
        return KINDS["pt2"]
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return KINDS["torchscript"]
    if "data.pkl" in tails and not any(t.startswith("code/") for t in tails):
        return CHECKPOINT_KIND
    return "zip"


def model_file_kind(path: str | os.PathLike[str]) -> str | None:
    """The deepergat model kind of a file, or None when it is not one (for ``deepergat info``).

    Unlike `sniff` it never raises for a damaged file of another kind.
    """
    try:
        kind = sniff(path)
    except DeepergatError:
        return None
    return kind if kind in MODEL_KINDS else None


def expect_kind(path: str | os.PathLike[str]) -> str:
    """The kind a model file's suffix names, confirmed by its content.

    Raises:
        DeepergatError: unknown suffix, or content of another kind (a renamed, truncated or
            foreign file); the message names the file, what it is and what was expected.
    """
    p = Path(path)
    wanted = SUFFIX_KINDS.get(p.suffix.lower())
    if wanted is None:
        raise DeepergatError(
            f"{p}: unknown model file suffix {p.suffix!r}; expected one of "
            f"{', '.join(SUFFIX_KINDS)} (checkpoint or exported file) or a bundled model name"
        )
    got = sniff(p)
    if got not in wanted:
        want = " or ".join(wanted)
        what = {
            "hdf5": "an HDF5 file (a structure store or predictions?)",
            "zip": "a zip archive that is no deepergat model",
            "protobuf": "an ONNX file without deepergat metadata (not exported by deepergat)",
            "unknown": "not a deepergat model file (foreign, truncated or damaged)",
        }.get(got, f"a {got} file")
        raise DeepergatError(f"{p}: expected a {want} file by its suffix, but it is {what}")
    return got


# --------------------------------------------------------------------------- ONNX protobuf


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes | memoryview) -> Any:
    """Yield (field number, wire type, value) of a protobuf message; value is an int for
    varints and fixed-width fields, a memoryview for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def read_onnx_metadata_props(path: str | os.PathLike[str]) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read without onnx or onnxruntime.

    The whole message is walked (a truncated file fails here), but nested messages other than
    ``metadata_props`` are skipped, not parsed.

    Raises:
        DeepergatError: not a parseable ONNX ModelProto (foreign or truncated).
    """
    p = Path(path)
    try:
        data = memoryview(p.read_bytes())
    except OSError as e:
        raise DeepergatError(f"{p}: cannot read: {e.strerror or e}") from None
    props: dict[str, str] = {}
    seen_ir = seen_graph = False
    try:
        for field, wire, value in _fields(data):
            if field == _ONNX_IR_VERSION and wire == 0:
                seen_ir = True
            elif field == _ONNX_GRAPH and wire == 2:
                seen_graph = True
            elif field == _ONNX_METADATA_PROPS and wire == 2:
                entry = {f: bytes(v) for f, w, v in _fields(value) if w == 2}
                props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    except (ValueError, UnicodeDecodeError) as e:
        raise DeepergatError(
            f"{p}: not a readable ONNX model (truncated or another kind of file: {e})"
        ) from None
    if not (seen_ir and seen_graph):
        raise DeepergatError(f"{p}: not an ONNX model (no IR version or graph)")
    return props


#: TensorProto.data_location (14) = EXTERNAL (1); where tensors sit in graphs, nodes and
#: attributes: GraphProto initializer (5), sparse_initializer (15), node (1); NodeProto
#: attribute (5); AttributeProto t (5), g (6), tensors (9), graphs (10), sparse_tensor (22),
#: sparse_tensors (23); SparseTensorProto values (1), indices (2); ModelProto functions (25),
#: FunctionProto node (7).
_TENSOR_DATA_LOCATION, _EXTERNAL = 14, 1


def _external_in_tensor(t: memoryview, sparse: bool = False) -> bool:
    for field, wire, value in _fields(t):
        if sparse and field in (1, 2) and wire == 2 and _external_in_tensor(value):
            return True
        if not sparse and field == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
            return True
    return False


def _external_in_attribute(a: memoryview) -> bool:
    for field, wire, value in _fields(a):
        if wire != 2:
            continue
        if field in (5, 9) and _external_in_tensor(value):
            return True
        if field in (22, 23) and _external_in_tensor(value, sparse=True):
            return True
        if field in (6, 10) and _external_in_graph(value):
            return True
    return False


def _external_in_node(n: memoryview) -> bool:
    return any(field == 5 and wire == 2 and _external_in_attribute(value)
               for field, wire, value in _fields(n))


def _external_in_graph(g: memoryview) -> bool:
    for field, wire, value in _fields(g):
        if wire != 2:
            continue
        if field == 5 and _external_in_tensor(value):
            return True
        if field == 15 and _external_in_tensor(value, sparse=True):
            return True
        if field == 1 and _external_in_node(value):
            return True
    return False


def onnx_external_tensors(data: bytes | memoryview) -> bool:
    """Whether an ONNX model refers to external data files (tensors stored outside it).

    deepergat writes every weight inside the file; an external-data reference makes the runtime
    read another file by a path the model chooses, so loaders refuse such models.

    Raises:
        ValueError: not a parseable ModelProto.
    """
    buf = memoryview(data)
    for field, wire, value in _fields(buf):
        if field == _ONNX_GRAPH and wire == 2 and _external_in_graph(value):
            return True
        if field == 25 and wire == 2 and any(  # FunctionProto: its nodes (7)
                f == 7 and w == 2 and _external_in_node(v) for f, w, v in _fields(value)):
            return True
    return False


#: TensorProto fields: dims (1), data_type (2), float_data (4), int32_data (5), int64_data (7),
#: name (8), raw_data (9), double_data (10); data types FLOAT (1), INT32 (6), INT64 (7),
#: FLOAT16 (10), DOUBLE (11), as little-endian numpy dtypes.
_ONNX_DTYPES = {1: "<f4", 6: "<i4", 7: "<i8", 10: "<f2", 11: "<f8"}
#: Largest initializer whose values `onnx_initializers` decodes (the buffers that metadata is
#: checked against are scalars and [T]- or [K + 2]-vectors; weights matter by shape alone).
ONNX_VALUE_LIMIT = 4096


def _tensor(t: memoryview) -> tuple[str, tuple[int, ...], Any]:
    """(name, shape, values or None) of a TensorProto; values only for a small tensor of a
    data type in `_ONNX_DTYPES`."""
    import numpy as np

    name, dims, dtype = "", [], 0
    raw: memoryview | None = None
    typed: dict[int, list[Any]] = {}
    for field, wire, value in _fields(t):
        if field == 1 and wire == 0:
            dims.append(value)
        elif field == 1 and wire == 2:  # packed dims
            pos = 0
            while pos < len(value):
                d, pos = _varint(value, pos)
                dims.append(d)
        elif field == 2 and wire == 0:
            dtype = value
        elif field == 8 and wire == 2:
            name = bytes(value).decode("utf-8", "replace")
        elif field == 9 and wire == 2:
            raw = value
        elif field in (4, 5, 7, 10):
            typed.setdefault(field, []).append((wire, value))
    shape = tuple(int(d) for d in dims)
    count = math.prod(shape)
    values = None
    if dtype in _ONNX_DTYPES and count <= ONNX_VALUE_LIMIT:
        dt = np.dtype(_ONNX_DTYPES[dtype])
        if raw is not None and len(raw) == count * dt.itemsize:
            values = np.frombuffer(bytes(raw), dtype=dt).reshape(shape)
        elif raw is None:
            values = _typed_values(typed, dtype, count, shape)
    return name, shape, values


def _typed_values(typed: dict[int, list[Any]], dtype: int, count: int,
                  shape: tuple[int, ...]) -> Any:
    """The values of a tensor stored in its typed repeated field, or None (float16 there is
    not decoded)."""
    import numpy as np

    field = {1: 4, 6: 5, 7: 7, 11: 10}.get(dtype)
    out: list[float] = []
    for wire, value in typed.get(field, []) if field else ():
        if wire == 2 and field in (4, 10):  # packed float32 / float64
            out.extend(np.frombuffer(bytes(value), dtype="<f4" if field == 4 else "<f8"))
        elif wire == 2:  # packed varints
            pos = 0
            while pos < len(value):
                v, pos = _varint(value, pos)
                out.append(v)
        elif wire == 5:
            out.append(float(np.frombuffer(value.to_bytes(4, "little"), dtype="<f4")[0]))
        elif wire == 1:
            out.append(float(np.frombuffer(value.to_bytes(8, "little"), dtype="<f8")[0]))
        else:
            out.append(value)
    if field is None or len(out) != count:
        return None
    if dtype in (6, 7):  # negative integers are 64-bit two's complement varints
        out = [v - 2**64 if v >= 2**63 else v for v in out]
    return np.asarray(out, dtype=np.float64).reshape(shape)


def onnx_initializers(data: bytes | memoryview) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The main graph's initializers of an ONNX model: name → (shape, values), values decoded
    only for tensors of at most `ONNX_VALUE_LIMIT` entries (else None). Read without onnx.

    Raises:
        ValueError: not a parseable ModelProto.
    """
    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    for field, wire, value in _fields(memoryview(data)):
        if field == _ONNX_GRAPH and wire == 2:
            for f, w, v in _fields(value):
                if f == 5 and w == 2:  # GraphProto.initializer
                    name, shape, values = _tensor(v)
                    out[name] = (shape, values)
    return out


# --------------------------------------------------------------------------- metadata


def read_metadata(path: str | os.PathLike[str], *, kind: str | None = None) -> dict[str, Any]:
    """The metadata document of a checkpoint or exported file.

    Exported files are read without torch or onnx; a checkpoint imports torch.

    Args:
        path: the file.
        kind: its kind as `sniff` found it; None: the kind its suffix names, confirmed by
            content.

    Raises:
        DeepergatError: wrong or damaged file, or no deepergat metadata in it.
    """
    p = Path(path)
    if kind is None:
        kind = expect_kind(p)
    if kind == KINDS["onnx"]:
        text: str | bytes = read_onnx_metadata_props(p)[METADATA_KEY]
    elif kind == CHECKPOINT_KIND:
        from deepergat.nn.checkpoint import metadata as checkpoint_metadata

        meta = checkpoint_metadata(p)  # source_sha256: this file's digest
        meta.setdefault("kind", CHECKPOINT_KIND)
        return meta
    else:
        text = read_extra_file(p, EXTRA_FILE)
    return decode_metadata(text, where=str(p))


def read_extra_file(path: Path, name: str) -> bytes:
    """The bytes of a zip-based model file's extra file ``<archive>/extra/<name>``.

    Raises:
        DeepergatError: a damaged archive, or no such entry (not exported by deepergat).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            for entry in zf.namelist():
                if entry.endswith(f"/extra/{name}") or entry == f"extra/{name}":
                    return zf.read(entry)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DeepergatError(f"{path}: damaged or truncated archive: {e}") from None
    raise DeepergatError(
        f"{path}: no deepergat metadata (extra file {name} missing): not exported by "
        "`deepergat export`"
    )
