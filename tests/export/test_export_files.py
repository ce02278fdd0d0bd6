"""File kinds by suffix confirmed by content: truncated, corrupt, renamed and foreign files give
one clear `DeepergatError`; ``deepergat info`` prints exported files' metadata."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deepergat.errors import DeepergatError
from deepergat.export import load, read_metadata, sniff


def _truncated(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.5, 0.98])
def test_truncated_file(exported_tiny, tmp_path, fmt, fraction):
    src = exported_tiny[fmt]
    bad = _truncated(src, tmp_path / src.name, fraction)
    with pytest.raises(DeepergatError) as err:
        load(bad, device="cpu", trust=True)
    assert str(bad) in str(err.value)
    with pytest.raises(DeepergatError):
        read_metadata(bad)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_corrupt_bytes(exported_tiny, tmp_path, fmt):
    src = exported_tiny[fmt]
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    start = len(data) // 3
    data[start : start + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad = tmp_path / src.name
    bad.write_bytes(bytes(data))
    try:
        p = load(bad, device="cpu", trust=True)
    except DeepergatError as e:
        assert str(bad) in str(e)
        return
    # corrupted weights may still load (zip entries of raw tensor bytes are not checksummed by
    # torch); then the metadata still identifies it and the hash differs from the original
    assert p.sha256 != load(src, device="cpu", trust=True).sha256


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("model.onnx", b"not a model at all\n", "not a deepergat model file"),
        ("model.pt", b"\x00" * 100, "not a deepergat model file"),
        ("model.pt2", b"PK\x03\x04" + b"\x00" * 50, "damaged or truncated archive"),
        ("model.onnx", b"", "not a deepergat model file"),
        ("model.bin", b"whatever", "unknown model file suffix"),
    ],
)
def test_foreign_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DeepergatError, match=message):
        load(path, device="cpu", trust=True)


@pytest.mark.parametrize(
    ("src", "dst_name", "message"),
    [
        ("onnx", "renamed.pt", "expected a deepergat-torchscript file.*deepergat-onnx"),
        ("pt2", "renamed.pt", "expected a deepergat-torchscript file.*deepergat-pt2"),
        ("torchscript", "renamed.onnx", "expected a deepergat-onnx file.*deepergat-torchscript"),
        ("checkpoint", "renamed.pt2", "expected a deepergat-pt2 or deepergat-aoti file.*"
                                      "deepergat-checkpoint"),
        ("onnx", "renamed.ckpt", "expected a deepergat-checkpoint file.*deepergat-onnx"),
    ],
)
def test_content_contradicts_suffix(exported_tiny, tmp_path, src, dst_name, message):
    dst = tmp_path / dst_name
    shutil.copyfile(exported_tiny[src], dst)
    with pytest.raises(DeepergatError, match=message):
        load(dst, device="cpu", trust=True)


def test_store_named_like_a_model(tmp_path):
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    store = tmp_path / "model.onnx"
    write_store(store, parity_structures(3))
    with pytest.raises(DeepergatError, match="HDF5 file"):
        load(store, device="cpu", trust=True)


def test_onnx_without_deepergat_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "g", [x], [y]))
    path = tmp_path / "other.onnx"
    onnx.save(model, path)
    assert sniff(path) == "protobuf"
    with pytest.raises(DeepergatError, match="without deepergat metadata"):
        load(path, device="cpu", trust=True)


def test_torchscript_without_metadata(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    assert sniff(path) == "deepergat-torchscript"
    with pytest.raises(DeepergatError, match="no deepergat metadata"):
        load(path, device="cpu", trust=True)


def test_damaged_metadata_document(exported_tiny, tmp_path):
    from deepergat.export.onnx import set_onnx_metadata

    path = tmp_path / "model.onnx"
    shutil.copyfile(exported_tiny["onnx"], path)
    meta = read_metadata(path)
    del meta["graph"]
    set_onnx_metadata(path, meta)
    with pytest.raises(DeepergatError, match="missing graph"):
        load(path, device="cpu", trust=True)
    meta = read_metadata(exported_tiny["onnx"]) | {"format": 99}
    set_onnx_metadata(path, meta)
    with pytest.raises(DeepergatError, match="format 99 is not supported"):
        load(path, device="cpu", trust=True)
    for field, value in (("cutoff", "abc"), ("max_neighbors", None), ("construction", "cube")):
        meta = read_metadata(exported_tiny["onnx"])
        meta["graph"][field] = value  # hand-edited
        set_onnx_metadata(path, meta)
        with pytest.raises(DeepergatError, match="damaged deepergat metadata: graph settings"):
            load(path, device="cpu")
        from click.testing import CliRunner

        from deepergat.cli import main

        r = CliRunner().invoke(main, ["info", str(path)])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output


def test_sniff_kinds(exported_tiny):
    assert sniff(exported_tiny["onnx"]) == "deepergat-onnx"
    assert sniff(exported_tiny["torchscript"]) == "deepergat-torchscript"
    assert sniff(exported_tiny["pt2"]) == "deepergat-pt2"
    assert sniff(exported_tiny["checkpoint"]) == "deepergat-checkpoint"


def test_missing_model_lists_bundled(tmp_path):
    with pytest.raises(DeepergatError, match="no such model file and no bundled model"):
        load(tmp_path / "nope.onnx")
    with pytest.raises(DeepergatError, match="no bundled model of that name"):
        load("no-such-bundled-model")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2", "checkpoint"])
def test_info_prints_metadata(exported_tiny, fmt):
    from click.testing import CliRunner

    from deepergat.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["info", str(exported_tiny[fmt])])
    assert result.exit_code == 0, result.output
    assert "heat_ref [eV]" in result.output
    assert "cutoff 8 Å, max_neighbors 12" in result.output
    if fmt != "checkpoint":
        assert "parity           passed" in result.output
    result = runner.invoke(main, ["info", "--json", str(exported_tiny[fmt])])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["metadata"]["graph"]["cutoff"] == 8.0
    assert info["format"] == f"deepergat-{fmt}"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2", "checkpoint"])
def test_info_on_truncated_model_says_so_in_one_line(exported_tiny, tmp_path, fmt):
    from click.testing import CliRunner

    from deepergat.cli import main

    src = exported_tiny[fmt]
    bad = _truncated(src, tmp_path / src.name, 0.5)
    result = CliRunner().invoke(main, ["info", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: "), result.output
    assert "truncated" in lines[0] or "damaged" in lines[0], lines[0]
