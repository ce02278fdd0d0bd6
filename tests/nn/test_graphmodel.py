"""The model contract every architecture keeps (deepergat.nn.graphmodel): batching, atom order
and supercells do not change a prediction, and every architecture exports with parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from arch_helpers import NETS, randomized
from model_helpers import model_inputs, perov_structures
from model_helpers import model_inputs as _inputs

from deepergat.architectures import architecture_name
from deepergat.nn.checkpoint import save_checkpoint


def _supercell(s: dict, n: int) -> dict:
    """s repeated n times along its first lattice vector."""
    lat = s["lattice"]
    return {**s, "id": f"{s['id']}-x{n}", "lattice": lat * np.array([[n], [1.0], [1.0]]),
            "atomic_numbers": np.tile(s["atomic_numbers"], n),
            "positions": np.concatenate([s["positions"] + k * lat[0] for k in range(n)])}


@pytest.mark.parametrize(("arch", "deeper", "graph"), [
    *((a, d, "periodic") for a, d in [*NETS, ("gatgnn", False)]),
    ("deepergatgnn", True, "minimum-image"), ("cgcnn", False, "minimum-image")])
def test_batched_permuted_and_supercell_invariance(arch: str, deeper: bool, graph: str) -> None:
    model = randomized(arch, deeper, layers=2)
    cells = perov_structures(4)

    def model_inputs(structures: list[dict]) -> dict:
        return _inputs(structures, graph=graph)

    # crystals of 5, 10, 5, 20, 5 and 15 atoms: padded crystal slots in the batch
    structures = [cells[0], _supercell(cells[1], 2), cells[2], _supercell(cells[3], 4),
                  cells[1], _supercell(cells[0], 3)]
    with torch.no_grad():
        batched = model.forward_inputs(model_inputs(structures))[0].numpy()
        single = np.concatenate([model.forward_inputs(model_inputs([s]))[0].numpy()
                                 for s in structures])
        np.testing.assert_allclose(batched, single, rtol=1e-10, atol=1e-12)
        s = structures[1]
        perm = np.random.default_rng(0).permutation(len(s["atomic_numbers"]))
        permuted = {**s, "atomic_numbers": s["atomic_numbers"][perm],
                    "positions": s["positions"][perm]}
        np.testing.assert_allclose(model.forward_inputs(model_inputs([permuted]))[0].numpy(),
                                   single[1:2], rtol=1e-10, atol=1e-12)
    # both graphs give every atom of a supercell its cell neighborhood (the minimum-image one
    # by counting a cell's copies as one atom): the supercells predict what their cells predict
    np.testing.assert_allclose(single[1], single[4], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(single[5], single[0], rtol=1e-9, atol=1e-10)
    with torch.no_grad():
        cell3 = model.forward_inputs(model_inputs([cells[3]]))[0].numpy()
    np.testing.assert_allclose(single[3], cell3[0], rtol=1e-9, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "deeper", "formats"), [
    ("cgcnn", True, "onnx"), ("schnet", False, "onnx"), ("mpnn", True, "onnx"),
    ("megnet", True, "all"), ("megnet", False, "onnx"), ("gatgnn", False, "onnx")])
def test_exports_with_parity(arch: str, deeper: bool, formats: str, tmp_path: Path) -> None:
    import onnx

    from deepergat import export

    kw = {"dim": 16} if arch == "gatgnn" else {"dim": 16, "hidden": 16}
    if arch == "mpnn":
        kw["edge_hidden"] = 16
    model = randomized(arch, deeper, layers=2, **kw).float()
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, model, targets=["heat_ref"], units=["eV"],
                    elements=list(range(1, 84)))
    result = export.export_model(ckpt, tmp_path / "out", formats=formats,
                                 n_check=export.exporter.MIN_CHECK, big_batch=512)
    assert {f.format for f in result.files} == (
        {"onnx"} if formats == "onnx" else {"onnx", "torchscript", "pt2"})
    inputs = model_inputs(perov_structures(8))
    with torch.no_grad():
        want, emb = (t.numpy() for t in model.forward_inputs(inputs))
    for f in result.files:
        predictor = export.load(f.path, trust=True)  # written just now by this test
        assert predictor.metadata.architecture == architecture_name(model.config)
        out = predictor.predict({k: v.numpy() for k, v in inputs.items()})
        np.testing.assert_allclose(out.prediction, want, rtol=1e-4, atol=1e-5)
        assert out.embedding.shape == emb.shape and predictor.metadata.embedding_dim == emb.shape[1]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    # BatchNorm is folded to an affine map in eval: no BatchNormalization node (cuDNN limits)
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
