"""Round trip of every exported format: metadata, parity with the checkpoint, dynamic sizes
(size 1 in every dimension and a batch of thousands), graph-settings checks."""

from __future__ import annotations

import numpy as np
import pytest
from model_helpers import cpu_onnx_backend

from deepergat.contract import MAX_Z
from deepergat.errors import DeepergatError
from deepergat.export import EXPORT_FORMAT, agree, load, read_metadata
from deepergat.export.samples import edge_case_structures, parity_structures
from deepergat.export.shapes import sizes
from deepergat.graphs import build_inputs

FORMATS = ("onnx", "torchscript", "pt2")


def _inputs(batch):
    g = build_inputs(batch, max_z=MAX_Z, overlap_threshold=None)
    assert (g.status == 0).all()
    return g.inputs


@pytest.fixture(scope="module")
def reference(exported_tiny):
    return load(exported_tiny["checkpoint"], device="cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_names_and_backends(exported_tiny, fmt):
    path = exported_tiny[fmt]
    assert path.name == {"onnx": "model.onnx", "torchscript": "model.pt", "pt2": "model.pt2"}[fmt]
    p = load(path, device="cpu", trust=True)
    assert p.backend == {"onnx": cpu_onnx_backend(), "torchscript": "torchscript",
                         "pt2": "torch.export"}[fmt]
    assert p.device == "cpu"
    assert p.path == path
    import hashlib

    assert p.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # nothing else was left in the output folder
    assert sorted(x.name for x in exported_tiny["dir"].iterdir()) == [
        "model.onnx", "model.pt", "model.pt2"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_metadata(exported_tiny, reference, fmt):
    meta = read_metadata(exported_tiny[fmt])
    loaded = load(exported_tiny[fmt], device="cpu", trust=True).metadata
    assert meta == loaded.to_dict()
    src = reference.metadata
    assert meta["kind"] == f"deepergat-{fmt}" == loaded.kind
    assert meta["format"] == EXPORT_FORMAT
    assert meta["checkpoint_format"] == src.format
    assert meta["model"]["dim"] == 16 and meta["model"]["layers"] == 2
    assert meta["graph"] == {"cutoff": 8.0, "max_neighbors": 12, "construction": "periodic"}
    assert meta["targets"] == [{"name": "heat_ref", "units": "eV", "mean": pytest.approx(-1.2),
                                "std": pytest.approx(0.8)}]
    assert meta["elements"] == list(range(1, 84))
    assert meta["source_sha256"] == reference.sha256
    assert meta["package_version"]
    assert meta["inputs"][0] == "atomic_numbers" and meta["outputs"] == ["prediction", "embedding"]
    parity = meta["parity"]
    assert parity["passed"] is True
    assert parity["n_structures"] >= 256
    assert parity["worst_ratio"] <= 1.0
    assert 0 <= parity["max_abs_diff"][0] <= parity["max_allowed"][0]
    ex = meta["exporter"]["example_sizes"]
    assert min(ex.values()) >= 2 and len(set(ex.values())) == 4


def test_onnx_exporter_facts(exported_tiny):
    from deepergat.export.runtime import max_ir_version

    ex = read_metadata(exported_tiny["onnx"])["exporter"]
    assert ex["opset"] >= 18
    assert 8 <= ex["ir_version"] <= max_ir_version()
    assert ex["exporter"] == "torch.onnx.export(dynamo=True)"


@pytest.mark.parametrize("fmt", FORMATS)
def test_parity_on_fresh_structures(exported_tiny, reference, fmt):
    p = load(exported_tiny[fmt], device="cpu", trust=True)
    inputs = _inputs(parity_structures(96, seed=99))
    y1, e1, _ = reference.predict(inputs)
    y2, e2, _ = p.predict(inputs)
    assert y2.dtype == np.float32 and e2.dtype == np.float32
    assert y2.shape == (96, 1) and e2.shape == (96, 16)
    assert agree(y1, y2, [0.8]).all()
    np.testing.assert_allclose(e2, e1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", ["one-crystal", "one-atom-crystal", "self-loop-only",
                                  "self-loop-in-batch"])
def test_size_one_dimensions(exported_tiny, reference, fmt, case):
    inputs = _inputs(edge_case_structures()[case])
    s = sizes(inputs)
    if case == "self-loop-only":
        assert s == {"N": 1, "K": 1, "C": 1, "A": 1}
    if case == "one-atom-crystal":
        assert s["N"] == s["C"] == s["A"] == 1
    if case == "one-crystal":
        assert s["C"] == 1
    if case == "self-loop-in-batch":
        assert (inputs["neighbor_mask"].sum(1) == 1).any() and s["K"] > 1
    y1, _, _ = reference.predict(inputs)
    y2, _, _ = load(exported_tiny[fmt], device="cpu", trust=True).predict(inputs)
    assert y2.shape == y1.shape
    assert agree(y1, y2, [0.8]).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_batch_of_thousands(exported_tiny, reference, fmt):
    batch = parity_structures(3000, seed=5)
    inputs = _inputs(batch)
    assert sizes(inputs)["C"] == 3000
    y1, _, _ = reference.predict(inputs)
    y2, _, _ = load(exported_tiny[fmt], device="cpu", trust=True).predict(inputs)
    assert agree(y1, y2, [0.8]).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_batch(exported_tiny, fmt):
    inputs = _inputs(parity_structures(3))
    empty = {k: v[:0] for k, v in inputs.items()}
    y, e, _ = load(exported_tiny[fmt], device="cpu", trust=True).predict(empty)
    assert y.shape == (0, 1) and e.shape == (0, 16)


@pytest.mark.parametrize("fmt", [*FORMATS, "checkpoint"])
def test_settings_mismatch_names_both_values(exported_tiny, fmt):
    path = exported_tiny[fmt]
    load(path, device="cpu", cutoff=8.0, max_neighbors=12, trust=True)  # matching: fine
    with pytest.raises(DeepergatError, match=r"cutoff 6 Å given.*trained with 8 Å"):
        load(path, device="cpu", cutoff=6.0, trust=True)
    p = load(path, device="cpu", trust=True)
    with pytest.raises(DeepergatError, match=r"max_neighbors 16 given.*trained with 12"):
        p.check_settings(max_neighbors=16)
    with pytest.raises(DeepergatError, match=r"cutoff 9 Å.*max_neighbors 8"):
        p.check_settings(cutoff=9.0, max_neighbors=8)


def test_missing_input_is_a_clear_error(exported_tiny):
    p = load(exported_tiny["onnx"], device="cpu")
    inputs = dict(_inputs(parity_structures(2)))
    del inputs["batch"]
    with pytest.raises(DeepergatError, match="missing: batch"):
        p.predict(inputs)


def test_threads_and_optimization_levels(exported_tiny, reference):
    inputs = _inputs(parity_structures(8, seed=3))
    y1, _, _ = reference.predict(inputs)
    for level in ("disable", "basic", "all"):
        p = load(exported_tiny["onnx"], device="cpu", threads=1, optimization=level)
        assert agree(y1, p.predict(inputs)[0], [0.8]).all()
    p = load(exported_tiny["onnx"], device="cpu", threads=1, inter_op_threads=2)
    assert agree(y1, p.predict(inputs)[0], [0.8]).all()
    with pytest.raises(DeepergatError, match="optimization level"):
        load(exported_tiny["onnx"], device="cpu", optimization="fast")
    with pytest.raises(DeepergatError, match="device must be"):
        load(exported_tiny["onnx"], device="gpu")


def test_torch_files_do_not_pin_the_exporting_device(exported_tiny):
    """Files exported on the CPU run on a GPU: nothing in them is fixed to the CPU (checked
    for real on an H200 by test_export_gpu.py; here, on any machine, by reading the graphs)."""
    torch = pytest.importorskip("torch")
    from deepergat.export.predictor import program_on

    traced = str(torch.jit.load(str(exported_tiny["torchscript"])).inlined_graph)
    assert "prim::NumToTensor" not in traced  # a traced size turned into a CPU tensor
    assert 'value="cpu"' not in traced
    # export records the exporting device in the graph (torch 2.13: after each .to(dtype));
    # loading for another device must leave none of it
    moved = program_on(torch.export.load(str(exported_tiny["pt2"])), "meta")
    assert "device(type='cpu')" not in moved.module().code
    assert all(t.device.type == "meta" for t in moved.state_dict.values())
