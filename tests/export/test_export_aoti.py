"""The AOTInductor package (``--format aoti``): parity-checked like the others, every size
dynamic, CPU only, recognised by content."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from deepergat.contract import MAX_Z
from deepergat.errors import DeepergatError
from deepergat.export import agree, load, read_metadata, sniff
from deepergat.export.samples import edge_case_structures, parity_structures
from deepergat.graphs import build_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def aoti_file(exported_tiny, tmp_path_factory):
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler for AOTInductor")
    from deepergat.export import export_model

    out = tmp_path_factory.mktemp("aoti")
    result = export_model(exported_tiny["checkpoint"], out, formats="aoti", n_check=256,
                          big_batch=1024)
    (f,) = result.files
    assert f.path == out / "model.aoti.pt2"
    return f.path


def test_metadata_and_kind(aoti_file, exported_tiny):
    assert sniff(aoti_file) == "deepergat-aoti"
    meta = read_metadata(aoti_file)
    assert meta["kind"] == "deepergat-aoti"
    assert meta["parity"]["passed"] and meta["parity"]["n_structures"] >= 256
    assert meta["exporter"]["compiled_for"]["device"] == "cpu"
    assert meta["graph"] == read_metadata(exported_tiny["onnx"])["graph"]
    p = load(aoti_file, device="cpu", trust=True)
    assert p.backend == "aoti" and p.metadata.to_dict() == meta
    import zipfile

    with zipfile.ZipFile(aoti_file) as z:  # named after the file, not the staging name
        assert {n.split("/", 1)[0] for n in z.namelist()} == {"model.aoti"}


@pytest.mark.parametrize("case", ["one-crystal", "one-atom-crystal", "self-loop-only",
                                  "self-loop-in-batch"])
def test_size_one_and_edge_cases(aoti_file, exported_tiny, case):
    inputs = build_inputs(edge_case_structures()[case], max_z=MAX_Z).inputs
    y1, _, _ = load(exported_tiny["checkpoint"], device="cpu").predict(inputs)
    y2, _, _ = load(aoti_file, device="cpu", trust=True).predict(inputs)
    assert agree(y1, y2, [0.8]).all()


def test_batch_of_thousands(aoti_file, exported_tiny):
    inputs = build_inputs(parity_structures(2500, seed=9), max_z=MAX_Z).inputs
    y1, e1, _ = load(exported_tiny["checkpoint"], device="cpu").predict(inputs)
    y2, e2, _ = load(aoti_file, device="cpu", trust=True).predict(inputs)
    assert agree(y1, y2, [0.8]).all()
    np.testing.assert_allclose(e2, e1, atol=1e-4, rtol=1e-4)


def test_cuda_request_is_refused(aoti_file):
    with pytest.raises(DeepergatError, match=r"compiled for the CPU|sees no CUDA device"):
        load(aoti_file, device="cuda", trust=True)
    assert load(aoti_file, device="auto", trust=True).device == "cpu"


def test_info(aoti_file):
    from click.testing import CliRunner

    from deepergat.cli import main

    result = CliRunner().invoke(main, ["info", str(aoti_file)])
    assert result.exit_code == 0, result.output
    assert "AOTInductor package" in result.output and "compiled for cpu" in result.output


def test_truncated_package(aoti_file, tmp_path):
    bad = tmp_path / "model.aoti.pt2"
    bad.write_bytes(aoti_file.read_bytes()[: aoti_file.stat().st_size // 2])
    with pytest.raises(DeepergatError):
        load(bad, device="cpu")
