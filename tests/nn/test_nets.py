"""The paper's other architectures (deepergat.nets, GATGNN in deepergat.model): parameter counts
against the paper's, the padded forms against PyG edge-list references, the model contract's
invariances, export, and training through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from model_helpers import model_inputs, perov_structures
from model_helpers import model_inputs as _inputs

from deepergat.architectures import (
    ARCH_DEFAULTS,
    ARCHITECTURES,
    PAPER_UNUSED,
    architecture_name,
    check_architecture,
)
from deepergat.cli import main
from deepergat.nn.checkpoint import ARCH_FORMAT, CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from deepergat.nn.model import build_from_config, count_parameters, make_model
from deepergat.nn.reference import EdgeListDeeperGATGNN, EdgeListNet

#: (arch, deeper)
NETS = [(a, d) for a in ("cgcnn", "schnet", "mpnn", "megnet") for d in (False, True)]

#: The paper's parameter counts (Omee et al. 2022): name, arch, deeper, layers, count.
PAPER_COUNTS = [
    ("SchNet", "schnet", False, 15, 1_102_401),
    ("SchNet", "schnet", False, 20, 1_455_901),
    ("CGCNN", "cgcnn", False, 25, 1_337_101),
    ("CGCNN", "cgcnn", False, 30, 1_590_101),
    ("MEGNet", "megnet", False, 25, 4_857_201),
    ("GATGNN", "gatgnn", False, 25, 863_370),
    ("GATGNN", "gatgnn", False, 30, 1_030_770),
    ("DeeperSchNet", "schnet", True, 15, 1_144_401),
    ("DeeperCGCNN", "cgcnn", True, 15, 873_101),
    ("DeeperMEGNet", "megnet", True, 15, 3_185_201),
    ("DeeperGATGNN", "deepergatgnn", False, 30, 1_089_906),
]


def _randomized(arch: str, deeper: bool, *, layers: int = 3, **kw: object) -> torch.nn.Module:
    """A model with fixed random weights and non-trivial BatchNorm statistics, float64."""
    torch.manual_seed(3)
    model = make_model(arch, deeper=deeper, layers=layers, target_mean=[-1.0],
                       target_std=[0.7], **kw).double()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_mean"):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(("name", "arch", "deeper", "layers", "paper"), PAPER_COUNTS)
def test_parameter_counts_are_the_papers(name: str, arch: str, deeper: bool, layers: int,
                                         paper: int) -> None:
    model = make_model(arch, deeper=deeper, layers=layers)
    assert architecture_name(model.config) == name
    fixed, per_layer = PAPER_UNUSED.get(name, (0, 0))
    # the paper counted modules its code builds but never calls (PAPER_UNUSED says which)
    assert count_parameters(model) == paper - fixed - per_layer * layers


@pytest.mark.parametrize(("arch", "deeper", "identity"), [
    *[(a, d, "doubled") for a, d in NETS], ("gatgnn", False, None),
    *[(a, True, "single") for a in ("cgcnn", "schnet", "megnet")]])
@pytest.mark.parametrize("training", [False, True])
def test_padded_equals_pyg_edge_list_reference(arch: str, deeper: bool, identity: str | None,
                                               training: bool) -> None:
    model = _randomized(arch, deeper, **({"identity": identity} if identity == "single" else {}))
    if arch == "gatgnn":
        ref = EdgeListDeeperGATGNN(**model.config).double()
        ref.load_state_dict(model.state_dict())
    else:
        ref = EdgeListNet(model.config).double()
        ref.load_padded(model)
    model.train(training)
    ref.train(training)
    inputs = model_inputs(perov_structures(24, ids=("9866",)))
    with torch.no_grad():
        p, e = model.forward_inputs(inputs)
        rp, re = ref(inputs)
    np.testing.assert_allclose(p.numpy(), rp.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(e.numpy(), re.numpy(), rtol=1e-10, atol=1e-10)
    if training:  # the same BatchNorm running statistics after the step (real rows only)
        mine, theirs = model.state_dict(), ref.state_dict()
        for key, value in mine.items():
            torch.testing.assert_close(value, theirs[key])


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
    model = _randomized(arch, deeper, layers=2)
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


def test_names_defaults_and_refusals() -> None:
    assert ARCHITECTURES == ("deepergatgnn", "gatgnn", "cgcnn", "schnet", "megnet", "mpnn")
    assert set(ARCH_DEFAULTS) == set(ARCHITECTURES)
    with pytest.raises(ValueError, match="architecture 'gcn' is not one of deepergatgnn"):
        check_architecture("gcn")
    with pytest.raises(ValueError, match="unknown architecture 'gcn'"):
        build_from_config({"arch": "gcn"})
    assert architecture_name(make_model("gatgnn", deeper=True).config) == "DeeperGATGNN"
    assert architecture_name(make_model("gatgnn").config) == "GATGNN"
    assert architecture_name({"dgn": False, "skip": False}) == "GATGNN (no norm)"
    assert architecture_name({"dgn": False, "skip": True, "batch_norm": True}) == \
        "GATGNN+BatchNorm+skip"
    assert architecture_name(make_model("mpnn", deeper=True, layers=1).config) == "DeeperMPNN"
    with pytest.raises(ValueError, match="MEGNet pools by the mean"):
        make_model("megnet", pool="max")


@pytest.mark.parametrize("arch", ["cgcnn", "schnet", "megnet"])
def test_single_identity_keeps_deep_states_bounded(arch: str) -> None:
    # the paper's Deeper form adds its skip to a layer that ends in a residual already: the
    # states double with every layer (~2^30 at 30 layers); counted once they stay O(1-100)
    inputs = _inputs(perov_structures(4))
    widths = {}
    for identity in ("doubled", "single"):
        torch.manual_seed(0)
        model = make_model(arch, deeper=True, layers=30, identity=identity).double().eval()
        with torch.no_grad():
            widths[identity] = float(model.forward_inputs(inputs)[1].abs().max())
    assert widths["doubled"] > 1e7 and widths["single"] < 1e3
    assert architecture_name(model.config) == f"Deeper{_NAMES[arch]} (single identity)"
    # the paper's form is the default and leaves no trace in the settings (older files equal)
    assert "identity" not in make_model(arch, deeper=True, layers=1).config
    assert build_from_config(model.config).config == model.config
    with pytest.raises(ValueError, match="applies to the Deeper variants of CGCNN, SchNet"):
        make_model(arch, layers=1, identity="single")
    with pytest.raises(ValueError, match="identity 'twice' is not one of doubled, single"):
        make_model(arch, deeper=True, layers=1, identity="twice")


def test_single_identity_is_refused_where_no_residual_is_doubled() -> None:
    with pytest.raises(ValueError, match="applies to the Deeper variants"):
        make_model("mpnn", deeper=True, layers=1, identity="single")
    for arch in ("deepergatgnn", "gatgnn"):
        with pytest.raises(ValueError, match="GATGNN's layer has none"):
            make_model(arch, layers=1, identity="single")


_NAMES = {"cgcnn": "CGCNN", "schnet": "SchNet", "megnet": "MEGNet"}


def test_checkpoints_name_their_architecture_and_format(tmp_path: Path) -> None:
    model = _randomized("schnet", True, layers=2).float()
    path = tmp_path / "s.ckpt"
    save_checkpoint(path, model, targets=["heat_ref"], units=["eV"], elements=[8, 22])
    ck = load_checkpoint(path)
    assert ck.data["format"] == ARCH_FORMAT and type(ck.model).__name__ == "SchNet"
    inputs = model_inputs(perov_structures(3))
    with torch.no_grad():
        torch.testing.assert_close(ck.model.forward_inputs(inputs)[0],
                                   model.eval().forward_inputs(inputs)[0])
    plain = make_model("deepergatgnn", layers=1)
    save_checkpoint(tmp_path / "d.ckpt", plain, targets=["t"], units=[""], elements=[8])
    assert load_checkpoint(tmp_path / "d.ckpt").data["format"] == CHECKPOINT_FORMAT


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
    model = _randomized(arch, deeper, layers=2, **kw).float()
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
        assert out.embedding.shape == emb.shape and predictor.dim == emb.shape[1]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    # BatchNorm is folded to an affine map in eval: no BatchNormalization node (cuDNN limits)
    assert "BatchNormalization" not in {n.op_type for n in graph.node}


@pytest.mark.slow
def test_megnet_trains_when_the_last_batch_holds_one_crystal(tiny_store: Path,
                                                             tmp_path: Path) -> None:
    # 60 structures, 54 to train: batches of 53 leave one crystal, which BatchNorm over
    # crystals cannot normalize alone; it joins the batch before
    args = ["train", "--data", str(tiny_store), "--target", "heat_ref", "--arch", "megnet",
            "--layers", "1", "--epochs", "1", "--batch-size", "53", "--out",
            str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_train_cli_with_an_architecture(tiny_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_store), "--target", "heat_ref", "--arch", "cgcnn",
            "--deeper", "--layers", "2", "--epochs", "2", "--batch-size", "16", "--out",
            str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(out / "best.ckpt")
    assert type(ck.model).__name__ == "CGCNN" and ck.model.config["deeper"] is True
    assert ck.model.config["layers"] == 2
    saved = (out / "config.yaml").read_text()
    assert "arch: cgcnn" in saved and "lr: 0.002" in saved  # the paper's CGCNN rate
    info = CliRunner().invoke(main, ["info", str(out / "best.ckpt"), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["metadata"]["architecture"] == "DeeperCGCNN"
    bad = CliRunner().invoke(main, [*args[:6], "gcn", *args[7:]])
    assert bad.exit_code == 2 and "'gcn' is not one of" in bad.output
    # --resume without --arch/--deeper continues the saved architecture
    again = [a for a in args if a not in ("--arch", "cgcnn", "--deeper")]
    again[again.index("--epochs") + 1] = "3"
    resumed = CliRunner().invoke(main, [*again, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    ck = load_checkpoint(out / "best.ckpt")
    assert type(ck.model).__name__ == "CGCNN" and ck.model.config["deeper"] is True
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 1 + 3


@pytest.mark.slow
def test_train_cli_single_identity_from_the_run_yaml(tiny_store: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  identity: single\n")
    args = ["train", "--data", str(tiny_store), "--target", "heat_ref", "--arch", "schnet",
            "--deeper", "--layers", "2", "--epochs", "1", "--batch-size", "16", "--config",
            str(config), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    ck = load_checkpoint(tmp_path / "run" / "best.ckpt")
    assert ck.model.config["identity"] == "single" and not ck.model.outer_skip
    info = CliRunner().invoke(main, ["info", str(tmp_path / "run" / "best.ckpt"), "--json"])
    assert json.loads(info.output)["metadata"]["architecture"] == \
        "DeeperSchNet (single identity)"
    # without --deeper the setting means nothing: one line, nothing trained
    plain = [a for a in args if a != "--deeper"]
    plain[plain.index(str(tmp_path / "run"))] = str(tmp_path / "plain")
    refused = CliRunner().invoke(main, plain)
    assert refused.exit_code != 0 and "applies to the Deeper variants" in refused.output
    assert not (tmp_path / "plain" / "best.ckpt").exists()
