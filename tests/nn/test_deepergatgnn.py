"""The padded DeeperGATGNN (deepergat.nn.deepergatgnn): its contract (shapes, batching,
permutations, supercells, precision), its parameter count, and equality with the PyG edge-list
reference on real perovskite batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import agree, model_inputs, perov_structures

from deepergat.contract import INPUT_NAMES
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.registry import count_parameters

STD = 0.68  # about heat_ref's standard deviation, eV: the agreement rule's scale


def _model(**kwargs: object) -> DeeperGATGNN:
    torch.manual_seed(0)
    model = DeeperGATGNN(target_mean=[1.39], target_std=[STD], **kwargs)  # type: ignore[arg-type]
    _settle_batchnorm(model)
    return model.eval()


def _settle_batchnorm(model: DeeperGATGNN) -> None:
    """A few training-mode passes so the running statistics are not the trivial 0 / 1."""
    inputs = model_inputs(perov_structures(12))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.forward_inputs(inputs)


def _predict(model: DeeperGATGNN, structures: list[dict]) -> np.ndarray:
    with torch.no_grad():
        return model.forward_inputs(model_inputs(structures))[0].numpy()


# ------------------------------------------------------------------ parameter counts


@pytest.mark.parametrize("layers", [0, 1, 5, 10, 30])
def test_parameter_count(layers: int) -> None:
    # 25,986 fixed + 35,272 per layer; see deepergat/nn/deepergatgnn.py for the breakdown and the
    # reconciliation with the reference port's 384,466 / 1,089,906 (5,760 unused DGN params).
    assert count_parameters(DeeperGATGNN(layers=layers)) == 25_986 + 35_272 * layers


def test_parameter_count_reference_figures() -> None:
    assert count_parameters(DeeperGATGNN(layers=10)) == 378_706
    assert count_parameters(DeeperGATGNN(layers=30)) == 1_084_146
    assert 378_706 + 3 * 1_920 == 384_466  # the reference's 3 unused DiffGroupNorm(64, 10)
    # The shallow GATGNN: 5 layers, no DiffGroupNorm, no skip.
    shallow = DeeperGATGNN(layers=5, dgn=False, skip=False)
    assert count_parameters(shallow) == 25_986 + 5 * 33_352


# ------------------------------------------------------------------ contract


def test_one_crystal_many_crystals_and_shapes() -> None:
    model = _model(layers=3)
    structures = perov_structures(8)
    inputs = model_inputs(structures)
    pred, emb = model.forward_inputs(inputs)
    assert pred.shape == (8, 1) and pred.dtype == torch.float32
    assert emb.shape == (8, 64) and emb.dtype == torch.float32
    assert torch.isfinite(pred).all()
    one = model.forward_inputs(model_inputs(structures[:1]))[0]
    assert one.shape == (1, 1)
    assert agree(one.detach().numpy(), pred[:1].detach().numpy(), STD)


def test_one_atom_crystal() -> None:
    model = _model(layers=3)
    atom = {"id": "po", "lattice": np.eye(3) * 3.35, "atomic_numbers": [84],
            "positions": [[0.1, 0.2, 0.3]]}
    pred, _emb = model.forward_inputs(model_inputs([atom]))
    assert pred.shape == (1, 1) and torch.isfinite(pred).all()
    mixed = _predict(model, [atom, *perov_structures(3)])
    assert agree(mixed[0], pred.detach().numpy()[0], STD)


def test_batched_equals_one_by_one() -> None:
    model = _model()
    structures = perov_structures(16, ids=("9866",))
    batched = _predict(model, structures)
    single = np.concatenate([_predict(model, [s]) for s in structures])
    assert agree(batched, single, STD), np.abs(batched - single).max()


def _permuted(s: dict, perm: np.ndarray) -> dict:
    return {**s, "id": s["id"] + "-perm", "atomic_numbers": np.asarray(s["atomic_numbers"])[perm],
            "positions": np.asarray(s["positions"])[perm]}


def test_permutation_of_atoms_gives_the_same_prediction() -> None:
    model = _model()
    structures = perov_structures(4, ids=("9866",))  # 9866 has ties at the 12th neighbor
    assert structures[-1]["id"] == "9866"
    rng = np.random.default_rng(0)
    for s in structures:
        n = len(s["atomic_numbers"])
        for _ in range(3):
            perm = rng.permutation(n)
            a, b = _predict(model, [s]), _predict(model, [_permuted(s, perm)])
            assert agree(a, b, STD), (s["id"], perm, a, b)


def test_supercell_predicts_what_its_cell_predicts() -> None:
    model = _model()
    cells = perov_structures(3, ids=("9866",))
    supers = []
    for s in cells:
        lattice = np.asarray(s["lattice"])
        shifts = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)])
        pos = (np.asarray(s["positions"])[None] + (shifts @ lattice)[:, None]).reshape(-1, 3)
        supers.append({"id": s["id"] + "-222", "lattice": 2 * lattice,
                       "atomic_numbers": np.tile(s["atomic_numbers"], 8), "positions": pos})
    assert agree(_predict(model, cells), _predict(model, supers), STD)


def test_float32_and_float64_agree() -> None:
    model = _model()
    structures = perov_structures(10, ids=("9866",))
    inputs = model_inputs(structures)
    p32 = model.forward_inputs(inputs)[0].detach().numpy()
    p64 = model.double().forward_inputs(inputs)[0].detach().numpy()
    assert p64.dtype == np.float64
    assert agree(p64, p32, STD), np.abs(p64 - p32).max()


def test_direct_and_rewritten_forms_agree() -> None:
    model = _model()
    inputs = model_inputs(perov_structures(10, ids=("9866",)))
    with torch.no_grad():
        a = model.forward_inputs(inputs)[0].numpy()
        model.set_agat_form("direct")
        b = model.forward_inputs(inputs)[0].numpy()
        model.double()
        c = model.forward_inputs(inputs)[0].numpy()
        model.set_agat_form("rewritten")
        d = model.forward_inputs(inputs)[0].numpy()
    assert agree(a, b, STD)
    np.testing.assert_allclose(c, d, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("training", [False, True])
def test_padded_equals_pyg_edge_list_reference(training: bool) -> None:
    from deepergat.nn.reference import EdgeListDeeperGATGNN

    model = _model(layers=4).double()
    ref = EdgeListDeeperGATGNN(layers=4).double()
    ref.load_state_dict(model.state_dict())
    model.train(training)
    ref.train(training)
    inputs = model_inputs(perov_structures(24, ids=("9866",)))
    with torch.no_grad():
        p, e = model.forward_inputs(inputs)
        rp, re = ref(inputs)
    np.testing.assert_allclose(p.numpy(), rp.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(e.numpy(), re.numpy(), rtol=1e-10, atol=1e-10)
    if training:  # same BatchNorm running statistics after the step (real edges only)
        for (k, v), (k2, v2) in zip(model.state_dict().items(), ref.state_dict().items(),
                                    strict=True):
            assert k == k2
            torch.testing.assert_close(v, v2)


def test_padded_equals_reference_in_float32_by_the_agreement_rule() -> None:
    from deepergat.nn.reference import EdgeListDeeperGATGNN

    model = _model()
    ref = EdgeListDeeperGATGNN().eval()
    ref.load_state_dict(model.state_dict())
    inputs = model_inputs(perov_structures(24, ids=("9866",)))
    with torch.no_grad():
        assert agree(model.forward_inputs(inputs)[0].numpy(), ref(inputs)[0].numpy(), STD)


def test_per_atom_multiplies_by_the_atom_count() -> None:
    torch.manual_seed(1)
    a = DeeperGATGNN(layers=2, per_atom=False).eval()
    b = DeeperGATGNN(layers=2, per_atom=True).eval()
    b.load_state_dict(a.state_dict())
    inputs = model_inputs(perov_structures(4))
    with torch.no_grad():
        pa, pb = a.forward_inputs(inputs)[0], b.forward_inputs(inputs)[0]
    torch.testing.assert_close(pb, pa * 5)


def test_target_scaling_and_elements_outside_the_table() -> None:
    model = DeeperGATGNN(layers=1, targets=2).eval()
    inputs = model_inputs(perov_structures(2))
    with torch.no_grad():
        base = model.forward_inputs(inputs)[0]
        model.set_target_scaling([10.0, -1.0], [2.0, 3.0])
        scaled = model.forward_inputs(inputs)[0]
        torch.testing.assert_close(scaled, base * torch.tensor([2.0, 3.0]) +
                                   torch.tensor([10.0, -1.0]))
        inputs["atomic_numbers"] = inputs["atomic_numbers"].clone()
        inputs["atomic_numbers"][0] = 118  # screened as status 3 before the model; no crash
        assert torch.isfinite(model.forward_inputs(inputs)[0]).all()


def test_buffers_carry_the_constants() -> None:
    model = DeeperGATGNN(cutoff=6.0, max_neighbors=8)
    names = dict(model.named_buffers())
    for key in ("element_table", "degree_classes", "composition_index", "max_neighbors",
                "target_mean", "target_std", "expansion.centers", "expansion.cutoff"):
        assert key in names
    assert float(names["expansion.cutoff"]) == 6.0
    assert names["degree_classes"].shape == (10,)
    assert model.node_embedding.in_features == 100 + 10


def test_forward_traces_and_exports_with_dynamic_shapes() -> None:
    model = _model(layers=2)
    inputs = model_inputs(perov_structures(6))
    other = model_inputs(perov_structures(9, ids=("9866",))[3:])
    args = tuple(inputs[n] for n in INPUT_NAMES)
    traced = torch.jit.trace(model, args, check_trace=False)
    with torch.no_grad():
        ref = model.forward_inputs(other)[0]
        out = traced(*(other[n] for n in INPUT_NAMES))[0]
    torch.testing.assert_close(out, ref)
    from torch.export import Dim, export

    n, k, c, a = Dim("n", min=2), Dim("k", min=2), Dim("c", min=2), Dim("a", min=2)
    shapes = {"atomic_numbers": {0: n}, "neighbors": {0: n, 1: k}, "distances": {0: n, 1: k},
              "neighbor_mask": {0: n, 1: k}, "crystal_atoms": {0: c, 1: a},
              "crystal_mask": {0: c, 1: a}, "batch": {0: n}}
    program = export(model, args, dynamic_shapes=shapes)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*(other[n] for n in INPUT_NAMES))[0], ref)
