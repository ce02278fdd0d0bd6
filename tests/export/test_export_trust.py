"""Nothing read from a model file runs code unless the caller trusts the file: a pickle planted
in a .pt2 or a checkpoint is refused before it runs, TorchScript and AOTInductor files need
``trust``, ONNX external data is refused, and exported archives are named plainly."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.export import load

torch = pytest.importorskip("torch")


class _Evil:
    """Unpickling this writes a marker file: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "pwned"))


def _evil_pt2(src: Path, dst: Path, marker: Path) -> None:
    """A copy of a deepergat .pt2 whose sample inputs are a pickle that runs code."""
    payload = io.BytesIO()
    torch.save({"x": _Evil(marker)}, payload)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data/sample_inputs/model.pt"):
                data = payload.getvalue()
            zout.writestr(item, data)


def test_a_pickle_planted_in_a_pt2_never_runs(exported_tiny, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt2"
    _evil_pt2(exported_tiny["pt2"], evil, marker)
    # the attack works on torch's own loader: that is what deepergat must not call as is
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises after running it
        torch.export.load(str(evil)).module()
    assert marker.read_text() == "pwned"
    marker.unlink()
    with pytest.raises(DeepergatError, match="pickle that is not plain tensors"):
        load(evil, device="cpu")
    runner = CliRunner()
    for args in (["predict", str(evil), str(tmp_path / "none.h5")],
                 ["info", str(evil)]):
        runner.invoke(main, args)
    assert not marker.exists()
    # the untouched export still loads and predicts
    assert load(exported_tiny["pt2"], device="cpu").backend == "torch.export"


def test_a_pickle_planted_in_a_checkpoint_never_runs(exported_tiny, tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    data = torch.load(exported_tiny["checkpoint"], weights_only=True)
    data["extra"]["evil"] = _Evil(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(data, evil)
    with pytest.raises(DeepergatError, match="not a readable deepergat checkpoint"):
        load(evil, device="cpu")
    r = CliRunner().invoke(main, ["info", str(evil)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert not marker.exists()


def test_torchscript_needs_trust(exported_tiny, tmp_path: Path) -> None:
    with pytest.raises(DeepergatError, match=r"TorchScript program .*--trust"):
        load(exported_tiny["torchscript"], device="cpu")
    assert load(exported_tiny["torchscript"], device="cpu", trust=True).backend == "torchscript"
    runner = CliRunner()
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    store = tmp_path / "s.h5"
    write_store(store, parity_structures(3))
    r = runner.invoke(main, ["predict", str(exported_tiny["torchscript"]), str(store)])
    assert r.exit_code == 2 and "--trust" in r.output
    r = runner.invoke(main, ["predict", str(exported_tiny["torchscript"]), str(store), "--trust"])
    assert r.exit_code == 0, r.output
    # reading its metadata runs nothing and needs no trust
    r = runner.invoke(main, ["info", str(exported_tiny["torchscript"])])
    assert r.exit_code == 0 and "TorchScript" in r.output


def test_onnx_with_external_data_is_refused(tmp_path: Path, exported_tiny) -> None:
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(exported_tiny["onnx"])
    init = model.graph.initializer[0]
    ext = numpy_helper.to_array(init)
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"),
                       ("length", str(ext.nbytes))):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "weights.bin").write_bytes(ext.tobytes())
    bad = tmp_path / "model.onnx"
    onnx.save(model, bad)
    with pytest.raises(DeepergatError, match="refers to external data files"):
        load(bad, device="cpu")


def test_exported_archives_are_named_after_the_file(exported_tiny) -> None:
    for fmt in ("pt2", "torchscript"):
        with zipfile.ZipFile(exported_tiny[fmt]) as z:
            tops = {name.split("/", 1)[0] for name in z.namelist()}
        assert tops == {"model"}, (fmt, tops)


def test_aoti_needs_trust(tmp_path: Path) -> None:
    """An AOTInductor package is refused without trust before anything in it is opened."""
    from deepergat.export.metadata import encode_metadata

    fake = tmp_path / "model.aoti.pt2"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("model/archive_format", "pt2")
        z.writestr("model/data/aotinductor/model/model.so", b"\x7fELF not really")
        z.writestr("model/extra/deepergat.json", encode_metadata({"format": 1}))
    with pytest.raises(DeepergatError, match=r"AOTInductor package .*--trust"):
        load(fake, device="cpu")
    shutil.copyfile(fake, tmp_path / "copy.aoti.pt2")
    assert pickle.dumps(1)  # the pickle module is whole again after a restricted load


def test_a_yaml_config_cannot_build_objects(tmp_path: Path, tiny_store: Path) -> None:
    marker = tmp_path / "marker.txt"
    config = tmp_path / "run.yaml"
    config.write_text(f"epochs: !!python/object/apply:pathlib.Path.write_text "
                      f"[!!python/object/apply:pathlib.Path ['{marker}'], 'pwned']\n")
    r = CliRunner().invoke(main, ["train", "--config", str(config), "--data", str(tiny_store),
                                  "--target", "heat_ref", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and not marker.exists()
    assert "not a plain YAML mapping" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_graph_cache_holding_a_pickle_is_never_unpickled(tmp_path: Path,
                                                           tiny_store: Path) -> None:
    import numpy as np

    from deepergat.training.data import cache_path, load_graphs

    g = load_graphs(tiny_store, cache_dir=tmp_path)
    cfile = cache_path(tiny_store, g.digest, 8.0, 12, tmp_path)
    marker = tmp_path / "marker.txt"
    with np.load(cfile) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["neighbors"] = np.array([_Evil(marker)], dtype=object)  # a planted pickle
    with open(cfile, "wb") as fh:
        np.savez(fh, **arrays)
    again = load_graphs(tiny_store, cache_dir=tmp_path)  # rebuilt, the planted array ignored
    np.testing.assert_array_equal(again.neighbors, g.neighbors)
    assert not marker.exists()


def test_aoti_packages_are_named_after_the_file(tmp_path: Path, monkeypatch) -> None:
    """AOTInductor writes its package with torch's archive writer, which names the top folder
    after the file: the exporter's staging name must not reach it (the compiler is faked)."""
    import torch

    from deepergat.export import aoti

    def fake_compile(program, package_path):
        w = torch._C.PyTorchFileWriter(package_path)
        w.write_record("archive_format", b"pt2", 3)
        w.write_record("data/aotinductor/model/model.so", b"\x7fELF", 4)
        w.write_end_of_file()

    class Loaded:
        def get_metadata(self):
            return {"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "AVX2"}

    monkeypatch.setattr(aoti, "export_program", lambda model, example: None)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_compile)
    monkeypatch.setattr(aoti, "load_aoti", lambda path: Loaded())
    staged = tmp_path / f".deepergat-export-{os.getpid()}.model.aoti.pt2"
    facts = aoti.write_aoti(None, (), staged, {"format": 1})
    assert facts["compiled_for"]["cpu_isa"] == "AVX2"
    with zipfile.ZipFile(staged) as z:
        names = z.namelist()
    assert {n.split("/", 1)[0] for n in names} == {"model.aoti"}, names
    assert "model.aoti/extra/deepergat.json" in names
    assert sorted(p.name for p in tmp_path.iterdir()) == [staged.name]  # nothing else left
