"""Assembling an ensemble: the model (mean, calibrated spread, batching, the local error
term), members that cannot join (refusals naming them), checkpoints that round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import model_inputs, perov_structures

from deepergat.errors import DeepergatError
from deepergat.nn.checkpoint import ENSEMBLE_FORMAT, load_checkpoint, make_checkpoint
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.training.assemble import assemble

TINY = {"dim": 16, "layers": 2}


def _members(k: int, **config: object) -> list[dict]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        m = DeeperGATGNN(**{**TINY, **config}, target_mean=[1.0 + i], target_std=[0.5]).eval()
        out.append(make_checkpoint(m, targets=["heat_ref"], units=["eV"], elements=[8, 22, 38]))
    return out


# ------------------------------------------------------------------ the model


def test_ensemble_is_the_members_mean_and_their_scaled_spread() -> None:
    ens, _ = assemble(_members(3), names=["a", "b", "c"])
    ens.set_std_scale([2.5])
    inputs = model_inputs(perov_structures(7))
    with torch.no_grad():
        mean, emb, std = ens(*inputs.values())
        each = [m(*inputs.values()) for m in ens.members]
    preds = torch.stack([p for p, _ in each])  # [K, C, T]
    torch.testing.assert_close(mean, preds.mean(0))
    torch.testing.assert_close(std, preds.std(0) * 2.5)  # unbiased, over K
    torch.testing.assert_close(emb, torch.stack([e for _, e in each]).mean(0))
    assert mean.shape == std.shape == (7, 1) and (std > 0).all()


def test_ensemble_batched_equals_one_by_one() -> None:
    ens, _ = assemble(_members(2), names=["a", "b"])
    structures = perov_structures(6)
    with torch.no_grad():
        batched = ens(*model_inputs(structures).values())
        single = [ens(*model_inputs([s]).values()) for s in structures]
    for j in (0, 2):
        np.testing.assert_allclose(batched[j].numpy(), torch.cat([o[j] for o in single]).numpy(),
                                   rtol=1e-5, atol=1e-6)


def _with_local_term(ens: DeeperGATGNNEnsemble, n: int = 40, *, neighbors: int = 10,
                     errors: torch.Tensor | None = None) -> torch.Tensor:
    """Give ``ens`` a local error term over the first ``n`` fixture structures; their
    errors (default: random in [0, 1))."""
    refs = model_inputs(perov_structures(n))
    with torch.no_grad():
        embs = torch.stack([m(*refs.values())[1] for m in ens.members])
    if errors is None:
        errors = torch.rand(n, 1, generator=torch.Generator().manual_seed(0))
    ens.set_local_error(embs, errors, neighbors=neighbors)
    return embs


def test_local_error_term_is_the_kernel_mean_of_nearby_reference_errors() -> None:
    ens, _ = assemble(_members(3), names=["a", "b", "c"])
    refs = _with_local_term(ens)
    errors = ens.reference_errors.double()
    ens.set_local_weight([2.0])
    ens.set_std_scale([1.5])
    inputs = model_inputs(perov_structures(7))
    with torch.no_grad():
        _, _, std = ens(*inputs.values())
        each = [m(*inputs.values()) for m in ens.members]
    preds = torch.stack([p for p, _ in each]).double()
    query = torch.stack([e for _, e in each]).double()
    # written out independently: standardize over the references, squared distances, the
    # 10th nearest sets the kernel width (0.3 of it), weights sum to 1
    flat = refs.permute(1, 0, 2).reshape(40, -1).double()
    center, scale = flat.mean(0), flat.std(0, unbiased=False).clamp_min(1e-6)
    z = (flat - center) / scale
    q = (query.permute(1, 0, 2).reshape(len(preds[0]), -1) - center) / scale
    d2 = torch.cdist(q, z) ** 2
    kth = d2.sort(1).values[:, 9:10]
    w = torch.exp(-d2 / (0.3 * kth))
    local = (w / w.sum(1, keepdim=True)) @ errors
    expected = 1.5 * torch.sqrt(preds.var(0) + (2.0 * local) ** 2)
    torch.testing.assert_close(std.double(), expected, rtol=1e-4, atol=1e-6)
    assert ens.config["local_error"] == {"neighbors": 10, "bandwidth": 0.3, "references": 40,
                                         "features": 3 * 16}


def test_new_references_leave_the_ensemble_uncalibrated() -> None:
    """Replacing the references resets the term's weight and the factor (fitted for the old
    ones) instead of keeping a calibration that no longer holds."""
    ens, _ = assemble(_members(2), names=["a", "b"])
    _with_local_term(ens)
    ens.set_local_weight([1.5])
    ens.set_std_scale([0.7])
    _with_local_term(ens, n=30)
    assert float(ens.local_weight[0]) == 0.0 and float(ens.std_scale[0]) == 1.0
    assert ens.config["local_error"]["references"] == 30


def test_local_error_is_large_where_the_references_were_wrong() -> None:
    """A reference structure predicted again gets mostly its own error back: ê is high for the
    structures whose out-of-fold errors were high, low for the others."""
    ens, _ = assemble(_members(2), names=["a", "b"])
    wrong = torch.zeros(40, 1)
    wrong[::2] = 1.0
    _with_local_term(ens, errors=wrong)
    with torch.no_grad():
        embs = torch.stack([m(*model_inputs(perov_structures(40)).values())[1]
                            for m in ens.members])
        local = ens.local_error(embs)[:, 0]
    assert local[::2].min() > local[1::2].max()
    assert ((local >= 0) & (local <= 1)).all()


def test_ensemble_with_a_local_term_batched_equals_one_by_one() -> None:
    ens, _ = assemble(_members(2), names=["a", "b"])
    _with_local_term(ens)
    ens.set_local_weight([1.0])
    structures = perov_structures(6)
    with torch.no_grad():
        batched = ens(*model_inputs(structures).values())
        single = [ens(*model_inputs([s]).values()) for s in structures]
    np.testing.assert_allclose(batched[2].numpy(), torch.cat([o[2] for o in single]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_members_from_before_the_translation_rule_was_recorded_join_newer_ones() -> None:
    old, new = _members(2, graph="minimum-image")
    del old["graph"]["translation_tolerance"], old["graph"]["translation_max_atoms"]
    ens, _ = assemble([old, new], names=["old.ckpt", "new.ckpt"])
    assert ens.config["graph"] == "minimum-image"


def test_members_that_disagree_are_refused_with_one_line_naming_them() -> None:
    good = _members(2)
    cases = {
        "graph settings": _members(1, graph="minimum-image"),
        "model setting distance_scale": _members(1, distance_scale=5.0),
        "model setting layers": [make_checkpoint(
            DeeperGATGNN(dim=16, layers=3), targets=["heat_ref"], units=["eV"],
            elements=[8, 22, 38])],
    }
    for what, other in cases.items():
        with pytest.raises(DeepergatError) as err:
            assemble([*good, *other], names=["a.ckpt", "b.ckpt", "odd.ckpt"])
        msg = str(err.value)
        assert msg.startswith("odd.ckpt: cannot join an ensemble with a.ckpt") and what in msg
        assert "\n" not in msg
    # a setting the paper's form leaves unwritten is named by what its absence means
    from deepergat.nn.registry import make_model

    deeper = [make_checkpoint(make_model("cgcnn", deeper=True, layers=1, dim=8, **kw),
                              targets=["heat_ref"], units=["eV"], elements=[8, 22, 38])
              for kw in ({}, {}, {"identity": "single"})]
    with pytest.raises(DeepergatError, match="model setting identity 'single' vs 'doubled'"):
        assemble(deeper, names=["a.ckpt", "b.ckpt", "odd.ckpt"])
    units = _members(1)[0]
    units["units"] = ["meV"]
    with pytest.raises(DeepergatError, match=r"odd.ckpt: .*units \['meV'\] vs \['eV'\]"):
        assemble([*good, units], names=["a.ckpt", "b.ckpt", "odd.ckpt"])
    seen = _members(1)[0]
    seen["elements"] = [8, 22]
    with pytest.raises(DeepergatError, match=r"odd.ckpt: .*elements"):
        assemble([*good, seen], names=["a.ckpt", "b.ckpt", "odd.ckpt"])
    _, elements = assemble([*good, seen], names=["a", "b", "c"], allow_element_differences=True)
    assert elements == [8, 22]  # only what every member saw
    with pytest.raises(DeepergatError, match="at least 2 members"):
        assemble(good[:1], names=["a"])


def test_ensemble_checkpoint_round_trip(tmp_path: Path) -> None:
    ens, elements = assemble(_members(3), names=["a", "b", "c"])
    ens.set_std_scale([1.7])
    path = tmp_path / "e.ckpt"
    torch.save(make_checkpoint(ens, targets=["heat_ref"], units=["eV"], elements=elements,
                               calibration={"std_scale": [1.7]}), path)
    ck = load_checkpoint(path)
    assert isinstance(ck.model, DeeperGATGNNEnsemble) and ck.data["format"] == ENSEMBLE_FORMAT
    assert ck.data["model"]["members"] == 3 and ck.data["calibration"]["std_scale"] == [1.7]
    inputs = model_inputs(perov_structures(4))
    with torch.no_grad():
        for a, b in zip(ck.model(*inputs.values()), ens(*inputs.values()), strict=True):
            torch.testing.assert_close(a, b)


def test_ensemble_with_a_local_term_round_trips_and_bad_terms_are_refused(
        tmp_path: Path) -> None:
    from deepergat.nn.checkpoint import model_metadata

    ens, elements = assemble(_members(3), names=["a", "b", "c"])
    _with_local_term(ens, neighbors=5)
    ens.set_local_weight([0.8])
    path = tmp_path / "e.ckpt"
    doc = make_checkpoint(ens, targets=["heat_ref"], units=["eV"], elements=elements,
                          calibration={"std_scale": [1.0], "local_weight": [0.8]})
    torch.save(doc, path)
    ck = load_checkpoint(path)
    assert ck.model.neighbors == 5 and float(ck.model.local_weight[0]) == pytest.approx(0.8)
    inputs = model_inputs(perov_structures(4))
    with torch.no_grad():
        for a, b in zip(ck.model(*inputs.values()), ens(*inputs.values()), strict=True):
            torch.testing.assert_close(a, b)
    for key, value, what in (("neighbors", 41, "neighbors must be"),
                             ("bandwidth", -1.0, "bandwidth must be"),
                             ("features", 2**28, "features must be")):
        bad = {**doc, "model": {**doc["model"],
                                "local_error": {**doc["model"]["local_error"], key: value}}}
        with pytest.raises(DeepergatError, match=f"model.local_error.{what}"):
            model_metadata(bad, where="bad.ckpt")
