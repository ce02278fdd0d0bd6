"""Ensembles: the model (mean, calibrated spread, batching), assembling members (refusals),
calibration and its metrics, and `deepergat train --ensemble` end to end (checkpoint, export,
predict, evaluate)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_helpers import model_inputs, perov_structures

from deepergat.cli import main
from deepergat.errors import DeepergatError
from deepergat.nn.checkpoint import ENSEMBLE_FORMAT, load_checkpoint, make_checkpoint
from deepergat.nn.deepergatgnn import DeeperGATGNN
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.training import train
from deepergat.training.ensemble import assemble
from deepergat.training.train import TrainConfig, train_ensemble
from deepergat.training.uncertainty import calibration_scale, spearman, uncertainty_metrics

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


# ------------------------------------------------------------------ calibration


def test_calibration_covers_the_asked_share_and_metrics_are_right() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    raw = rng.uniform(0.01, 0.1, n)
    y = rng.normal(0.0, 3.0 * raw)  # errors three times the raw spread, scaling with it
    mean = np.zeros(n)
    s = calibration_scale(y[:, None], mean[:, None], raw[:, None])
    assert s.shape == (1,) and s[0] == pytest.approx(3.0, rel=0.05)
    m = uncertainty_metrics(y, mean, raw * s[0])
    assert m["coverage_2sigma"] == pytest.approx(0.95, abs=0.001)
    assert m["coverage_1sigma"] == pytest.approx(0.683, abs=0.03)  # Gaussian errors
    assert m["spearman_std_abs_error"] > 0.3
    assert uncertainty_metrics(y, mean, np.full(n, 0.1))["spearman_std_abs_error"] is None
    from scipy.stats import spearmanr

    a, b = rng.integers(0, 6, 200).astype(float), rng.normal(size=200)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    with pytest.raises(ValueError, match="finite"):
        calibration_scale(np.array([[1.0], [np.nan]]), np.zeros((2, 1)), np.ones((2, 1)))


# ------------------------------------------------------------------ training end to end


def _cfg(store: Path, out: Path, **kw: object) -> TrainConfig:
    base: dict = dict(data=str(store), target="heat_ref", out=str(out), layers=2, epochs=2,
                      batch_size=16, seed=0, val_fraction=0.35, test_fraction=0.15,
                      model={"dim": 16}, cache_dir=str(out.parent / "cache"), device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def fold_ensemble(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from deepergat.io.store import StructureBatch, write_store

    root = tmp_path_factory.mktemp("ens")
    store = root / "perov.h5"
    write_store(store, StructureBatch.from_structures(perov_structures(120)),
                units={"heat_ref": "eV"})
    out = root / "run"
    summary = train_ensemble(_cfg(store, out, ensemble=3, graph="minimum-image",
                                  distance_scale="data"))
    return {"store": store, "out": out, "summary": summary}


def test_train_ensemble_of_folds(fold_ensemble: dict) -> None:
    out, summary = fold_ensemble["out"], fold_ensemble["summary"]
    assert json.loads((out / "ensemble_metrics.json").read_text()) == summary
    ck = load_checkpoint(out / "ensemble.ckpt")
    assert ck.data["model"]["members"] == 3 and ck.data["graph"]["construction"] == "minimum-image"
    # the members are the folds' kept models, weights unchanged
    for k, member in enumerate(ck.model.members):
        fold = load_checkpoint(out / f"fold-{k}" / "best.ckpt")
        for name, value in fold.model.state_dict().items():
            assert torch.equal(member.state_dict()[name], value), (k, name)
    cal = ck.data["calibration"]
    assert cal["n"] == summary["validation"]["n"] == summary["cv"]["val_n"] == 42
    assert summary["validation"]["coverage_2sigma"] >= 0.95  # fitted there
    assert float(ck.model.std_scale[0]) == pytest.approx(cal["std_scale"][0])
    # the validation split is shared and trains no member; the test split neither
    val = set(json.loads((out / "fold-0" / "splits.json").read_text())["val"])
    for k in range(3):
        split = json.loads((out / f"fold-{k}" / "splits.json").read_text())
        assert set(split["val"]) == val and not (set(split["train"]) & val)
    assert summary["test"]["n"] == 18 and 0 <= summary["test"]["coverage_2sigma"] <= 1
    assert (out / "oof.csv").is_file() and summary["cv"]["folds"] == 3
    # a fold ensemble's std has its local error term from its own out-of-fold errors
    assert summary["local_error"]["references"] == summary["cv"]["n"]
    assert ck.model.neighbors == min(30, summary["cv"]["n"]) == cal["local_neighbors"]
    assert cal["local_weight"][0] == pytest.approx(float(ck.model.local_weight[0]))
    assert cal["local_references"] == len(ck.model.reference_errors) == summary["cv"]["n"]


def test_ensemble_predict_evaluate_export(fold_ensemble: dict, tmp_path: Path) -> None:
    out, store = fold_ensemble["out"], fold_ensemble["store"]
    runner = CliRunner()
    ckpt = str(out / "ensemble.ckpt")
    r = runner.invoke(main, ["predict", ckpt, str(store), "--csv", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "heat_ref", "heat_ref_std", "status"] and len(rows) == 121
    assert all(float(row[2]) > 0 for row in rows[1:])
    r = runner.invoke(main, ["evaluate", ckpt, "--data", str(store), "--target", "heat_ref",
                             "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "e.json").read_text())
    for key in ("coverage_1sigma", "coverage_2sigma", "spearman_std_abs_error"):
        assert key in metrics
    assert "spread:" in r.output
    from deepergat import export

    r = runner.invoke(main, ["info", ckpt])
    assert r.exit_code == 0 and "local error term: out-of-fold errors of" in r.output
    # every format carries the local error term and passes its parity check
    result = export.export_model(ckpt, tmp_path / "exp", formats=["onnx", "torchscript", "pt2"],
                                 n_check=export.exporter.MIN_CHECK)
    assert [f.path.suffix for f in result.files] == [".onnx", ".pt", ".pt2"]
    onnx_file = result.files[0].path
    import onnx

    proto = onnx.load(str(onnx_file))
    assert [o.name for o in proto.graph.output] == ["prediction", "embedding", "std"]
    p = export.load(onnx_file, device="cpu")
    assert p.has_std and p.members == 3 and p.graph == "minimum-image"
    meta = p.metadata
    assert meta.graph.translations == {"translation_tolerance": 0.25, "translation_max_atoms": 256}
    assert meta.calibration is not None and "local_error" in meta.model
    assert list(meta.calibration.std_scale) == load_checkpoint(ckpt).data["calibration"][
        "std_scale"]
    with pytest.raises(DeepergatError, match="graph 'periodic' given, the model was trained"):
        export.load(onnx_file, device="cpu", graph="periodic")
    # the exported file gives the checkpoint's numbers, std included
    r2 = runner.invoke(main, ["predict", str(onnx_file), str(store),
                              "--csv", str(tmp_path / "q.csv")])
    assert r2.exit_code == 0, r2.output
    with open(tmp_path / "q.csv", newline="") as f:
        again = list(csv.reader(f))
    assert [r[0] for r in again] == [r[0] for r in rows]
    np.testing.assert_allclose(np.array([r[1:3] for r in again[1:]], float),
                               np.array([r[1:3] for r in rows[1:]], float), rtol=1e-4, atol=1e-5)


def test_ensemble_of_seeds_and_its_errors(tiny_store: Path, tmp_path: Path) -> None:
    summary = train_ensemble(_cfg(tiny_store, tmp_path / "s", ensemble=2, members="seeds",
                                  epochs=1))
    ck = load_checkpoint(tmp_path / "s" / "ensemble.ckpt")
    assert ck.data["model"]["members"] == 2 and "cv" not in summary
    splits = [json.loads((tmp_path / "s" / f"member-{k}" / "splits.json").read_text())
              for k in range(2)]
    for part in ("train", "val"):  # one split, two seeds
        assert splits[0][part] == splits[1][part]
    assert [s["seed"] for s in splits] == [0, 1]
    assert [m["seed"] for m in ck.data["extra"]["members"]] == [0, 1]
    with pytest.raises(DeepergatError, match="--cv 3 and --ensemble 2 differ"):
        train_ensemble(_cfg(tiny_store, tmp_path / "x", ensemble=2, cv=3))
    with pytest.raises(DeepergatError, match="validation split"):
        train_ensemble(_cfg(tiny_store, tmp_path / "y", ensemble=2, val_fraction=0.0,
                            lr_monitor="train", keep="last"))
    with pytest.raises(DeepergatError, match="at least 2 members"):
        train_ensemble(_cfg(tiny_store, tmp_path / "z", ensemble=1))


@pytest.mark.parametrize("kind", ["seeds", "folds"])
def test_members_trained_one_at_a_time_assemble_into_the_same_ensemble(
        tiny_store: Path, tmp_path: Path, kind: str) -> None:
    """--member I trains one member (a SLURM array task, one core each); the run without it and
    with --resume reads them back: the ensemble equals one trained in one go."""
    whole = tmp_path / "whole"
    train_ensemble(_cfg(tiny_store, whole, ensemble=2, members=kind, epochs=1))
    parts = tmp_path / "parts"
    for i in (1, 0):
        summary = train_ensemble(_cfg(tiny_store, parts, ensemble=2, members=kind, epochs=1,
                                      member=i))
        assert summary["member"] == i and summary["of"] == 2
        assert not (parts / "ensemble.ckpt").exists() and not (parts / "oof.csv").exists()
    train_ensemble(_cfg(tiny_store, parts, ensemble=2, members=kind, epochs=1, resume=True))
    a, b = load_checkpoint(whole / "ensemble.ckpt"), load_checkpoint(parts / "ensemble.ckpt")
    for name, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[name], value), name
    with pytest.raises(DeepergatError, match="--member 2: give 0 to 1"):
        _cfg(tiny_store, parts, ensemble=2, member=2).validate()
    with pytest.raises(DeepergatError, match="--member trains one member"):
        _cfg(tiny_store, parts, member=0).validate()


def test_a_seed_ensemble_takes_its_local_term_from_a_cross_validation(
        tiny_store: Path, tmp_path: Path) -> None:
    """``--oof`` gives a seed ensemble the out-of-fold errors of a --cv run on the same split;
    a file naming a validation structure, or not an oof.csv, is refused with one line."""
    from deepergat.training.train import cross_validate

    cross_validate(_cfg(tiny_store, tmp_path / "cv", cv=2, epochs=1, test_fraction=None))
    oof = tmp_path / "cv" / "oof.csv"
    n = len(oof.read_text().splitlines()) - 1
    r = CliRunner().invoke(main, [
        "train", "--data", str(tiny_store), "--target", "heat_ref", "--out",
        str(tmp_path / "s"), "--layers", "2", "--epochs", "1", "--batch-size", "16",
        "--val-fraction", "0.35", "--ensemble", "2", "--members", "seeds", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"), "--oof", str(oof), "--local-neighbors", "5"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s" / "ensemble_metrics.json").read_text())
    assert summary["local_error"] == {"oof": str(oof), "references": n, "neighbors": 5}
    ck = load_checkpoint(tmp_path / "s" / "ensemble.ckpt")
    assert ck.data["model"]["local_error"]["references"] == n
    assert "local_weight" in ck.data["calibration"]
    base = dict(test_fraction=None, ensemble=2, members="seeds", epochs=1, resume=True)
    none = train_ensemble(_cfg(tiny_store, tmp_path / "s", **base, oof=str(oof),
                               local_neighbors=0))
    assert "local_error" not in none and load_checkpoint(
        tmp_path / "s" / "ensemble.ckpt").model.neighbors == 0
    val = json.loads((tmp_path / "s" / "member-0" / "splits.json").read_text())["val"][0]
    leaky = tmp_path / "leaky.csv"
    leaky.write_text(oof.read_text() + f"{val},1.0,1.5\n")
    with pytest.raises(DeepergatError, match=f"structure '{val}' is in this run's validation "
                                             "split") as err:
        train_ensemble(_cfg(tiny_store, tmp_path / "s", **base, oof=str(leaky)))
    assert "\n" not in str(err.value)
    header, *lines = oof.read_text().splitlines()
    first_id = lines[0].split(",")[0]
    for name, text, match in (
            ("wrong", "id,heat_ref,status\n", "header must be id,true,predicted"),
            ("empty", header + "\n", "0 out-of-fold predictions"),
            ("twice", "\n".join([header, *lines, lines[0]]) + "\n",
             f"structure '{first_id}' appears more than once"),
            ("nan", "\n".join([header, f"{first_id},nan,1.0", *lines[1:]]) + "\n",
             "must be finite numbers")):
        bad = tmp_path / f"{name}.csv"
        bad.write_text(text)
        with pytest.raises(DeepergatError, match=match):
            train_ensemble(_cfg(tiny_store, tmp_path / "s", **base, oof=str(bad)))
    # a structure of the test split is refused before any member trains
    tested = _cfg(tiny_store, tmp_path / "t", **{**base, "test_fraction": 0.15})
    test_id = train.make_splits(dataclasses.replace(tested, ensemble=None)).test
    leak = tmp_path / "test-leak.csv"
    leak.write_text(f"{header}\n{test_id[0].ids[test_id[1][0]]},1.0,1.5\n{lines[0]}\n")
    with pytest.raises(DeepergatError, match="in this run's test split"):
        train_ensemble(dataclasses.replace(tested, oof=str(leak)))
    assert not (tmp_path / "t").exists()
    # a member run never reads the file (a SLURM array may start before the CV has finished)
    member = train_ensemble(_cfg(tiny_store, tmp_path / "m", **{**base, "resume": False},
                                 oof=str(tmp_path / "not-yet.csv"), member=0))
    assert member["member"] == 0
    with pytest.raises(DeepergatError, match="--oof gives an ensemble"):
        _cfg(tiny_store, tmp_path / "s", oof=str(oof)).validate()


def test_local_weight_finds_the_share_of_the_error_the_term_explains() -> None:
    from deepergat.training.uncertainty import local_weight

    rng = np.random.default_rng(1)
    n = 4000
    raw = rng.uniform(0.5, 1.5, (n, 1))
    local = rng.uniform(0.5, 3.0, (n, 1))
    y = np.zeros((n, 1))
    with_term = rng.normal(0.0, np.sqrt(raw**2 + (2.0 * local) ** 2))
    assert local_weight(y, with_term, raw, local)[0] == pytest.approx(2.0, rel=0.15)
    without = rng.normal(0.0, raw)
    assert local_weight(y, without, raw, local)[0] < 0.15
    assert local_weight(y, without, raw, np.zeros_like(local))[0] == 0.0
