"""ModelMetadata: the typed metadata of checkpoints and exported files (docs/design.md §8).

Real files' documents read and written again are unchanged (the bundled model's files predate
the ``architecture`` key and the graph's ``construction``), bad values are one-line errors naming
the key, and keys this version does not know travel through ``extra``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepergat.contract import CHECKPOINT_KIND, translation_rule
from deepergat.errors import DeepergatError
from deepergat.export.files import read_metadata, read_onnx_metadata_props
from deepergat.export.metadata import (
    METADATA_KEY,
    check_settings,
    encode_metadata,
    exported_metadata,
    exported_model_metadata,
)
from deepergat.metadata import (
    EXPORT_FORMAT,
    Calibration,
    GraphSettings,
    ModelMetadata,
    ParityFigures,
    TargetInfo,
)

BUNDLED = Path(__file__).resolve().parents[1] / "deepergat" / "models" / "perovskite-heat-single"

CALIBRATION = {
    "std_scale": [1.5], "coverage": 0.95, "n": 40, "source": "validation split",
    "method": "quantile of |y - mean| / (2 std_raw)",
    "metrics": {"heat_ref": {"coverage_1sigma": 0.7, "coverage_2sigma": 0.95,
                             "spearman_std_abs_error": None}},
}


def _exported_doc() -> dict[str, Any]:
    """An exported file's document, as `deepergat export` writes one."""
    return {
        "kind": "deepergat-onnx", "format": EXPORT_FORMAT, "checkpoint_format": 2,
        "architecture": "DeeperGATGNN",
        "model": {"dim": 16, "layers": 2, "cutoff": 8.0, "max_neighbors": 12, "targets": 1,
                  "members": 3},
        "graph": {"cutoff": 8.0, "max_neighbors": 12, "construction": "minimum-image"},
        "targets": [{"name": "heat_ref", "units": "eV", "mean": -1.2, "std": 0.8}],
        "elements": [1, 8, 22], "store_digest": "ab" * 32, "package_version": "0.1.0",
        "source_sha256": "cd" * 32,
        "inputs": ["atomic_numbers", "neighbors", "distances", "neighbor_mask",
                   "crystal_atoms", "crystal_mask", "batch"],
        "outputs": ["prediction", "embedding", "std"],
        "exporter": {"exporter": "torch.onnx.export(dynamo=True)", "opset": 18,
                     "example_sizes": {"N": 27, "K": 14, "C": 3, "A": 12}},
        "parity": {"passed": True, "n_structures": 300, "n_predictions": 600, "batches": 9,
                   "max_abs_diff": [1e-6], "max_allowed": [8e-6], "worst_ratio": 0.125,
                   "worst": {"case": "chunk-1", "id": "7", "target": "heat_ref"},
                   "embedding_max_abs_diff": None, "failures": [], "rule": "|y1 - y2| <= ...",
                   "backend": "onnxruntime (CPUExecutionProvider)"},
        "calibration": copy.deepcopy(CALIBRATION),
    }


def _assert_round_trip(doc: dict[str, Any]) -> ModelMetadata:
    meta = ModelMetadata.from_dict(doc, where="test")
    assert meta.to_dict() == doc
    assert encode_metadata(meta.to_dict()) == encode_metadata(doc)  # the very JSON
    assert ModelMetadata.from_dict(meta.to_dict()) == meta
    return meta


# ------------------------------------------------------------------------ real files


@pytest.mark.parametrize("name", ["best.ckpt", "model.onnx"])
def test_bundled_files_round_trip(name: str) -> None:
    path = BUNDLED / name
    if not path.is_file():
        pytest.skip(f"no bundled {name}")
    if name.endswith(".onnx"):  # the raw JSON, not through any reader of ours
        doc = json.loads(read_onnx_metadata_props(path)[METADATA_KEY])
    else:
        doc = read_metadata(path)
    meta = _assert_round_trip(doc)
    # written before the graph's construction (then: periodic) and, for ONNX, the architecture
    assert "construction" not in doc["graph"] and meta.graph.construction == "periodic"
    assert meta.architecture_name == "DeeperGATGNN"
    assert meta.target_names == ["heat_ref"] and meta.units == ["eV"]
    assert meta.is_exported == name.endswith(".onnx")


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from deepergat.nn.checkpoint import metadata, model_metadata, save_checkpoint
    from deepergat.nn.deepergatgnn import DeeperGATGNN

    torch.manual_seed(0)
    model = DeeperGATGNN(dim=16, layers=2, cutoff=7.0, max_neighbors=10, target_mean=[1.0],
                         target_std=[0.5])
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, targets=["heat_ref"], units=["eV"], elements=[8, 1, 22],
                    store_digest="abc", calibration=CALIBRATION)
    meta = model_metadata(path)
    assert meta.kind == CHECKPOINT_KIND and meta.format == 1 and not meta.is_exported
    assert meta.graph == GraphSettings(7.0, 10, "periodic")
    assert meta.targets == (TargetInfo("heat_ref", "eV", 1.0, 0.5),)
    assert meta.elements == (1, 8, 22) and len(meta.source_sha256 or "") == 64
    assert meta.calibration == Calibration.from_dict(CALIBRATION)
    doc = read_metadata(path)
    assert metadata(path) == doc == meta.to_dict()
    _assert_round_trip(doc)

    exported = exported_model_metadata(meta, kind="onnx", exporter={"opset": 18})
    assert exported.kind == "deepergat-onnx" and exported.format == EXPORT_FORMAT
    assert exported.checkpoint_format == 1 and exported.source_sha256 == meta.source_sha256
    assert exported.calibration == meta.calibration
    assert exported.outputs == ("prediction", "embedding")
    out = exported.to_dict()
    assert out["parity"] is None  # written as null until the parity check has run
    assert out == exported_metadata(doc, kind="onnx", exporter={"opset": 18})
    _assert_round_trip(out)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2", "checkpoint"])
def test_exported_files_round_trip(exported_tiny: dict[str, Any], fmt: str) -> None:
    from deepergat.export import load

    path = exported_tiny[fmt]
    doc = read_metadata(path)
    meta = _assert_round_trip(doc)
    predictor = load(path, device="cpu", trust=True)  # written by this session's fixture
    assert isinstance(predictor.metadata, ModelMetadata)
    assert predictor.metadata == meta and predictor.metadata.to_dict() == doc
    assert predictor.targets == meta.target_names and predictor.units == meta.units
    assert predictor.graph_settings == {"cutoff": 8.0, "max_neighbors": 12, "graph": "periodic"}
    assert predictor.elements == list(meta.elements) and meta.embedding_dim == 16
    if fmt != "checkpoint":
        assert meta.is_exported and meta.parity is not None and meta.parity.passed
        assert meta.inputs is not None and meta.inputs[0] == "atomic_numbers"
        assert meta.exporter is not None and meta.exporter["agat_form"] == "rewritten"


# ------------------------------------------------------------------------- checking


def _set(section: str | None, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target = doc if section is None else doc[section]
        target = target[0] if isinstance(target, list) else target
        target[key] = value
    return edit


def _drop(section: str | None, key: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        target = doc if section is None else doc[section]
        (target[0] if isinstance(target, list) else target).pop(key)
    return edit



def _refusal(edit: Callable[[dict[str, Any]], None]) -> str:
    """The one-line error an exported file's metadata document edited by ``edit`` gives."""
    doc = _exported_doc()
    edit(doc)
    with pytest.raises(DeepergatError) as caught:
        ModelMetadata.from_dict(doc, where="m.onnx")
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300, message
    return message

@pytest.mark.parametrize(("edit", "named"), [
    (_set("graph", "cutoff", "abc"), "graph settings: cutoff must be a finite number, got 'abc'"),
    (_set("graph", "max_neighbors", 12.5), "graph settings: max_neighbors must be an integer"),
    (_set("graph", "construction", "cube"), "graph settings: construction 'cube' is not one of"),
    (_drop("graph", "cutoff"), "graph settings missing"),
    (_drop(None, "graph"), "missing graph"),
    (_set(None, "format", "1"), "format must be an integer, got '1'"),
    (_set(None, "format", 99), "exported-file format 99 is not supported"),
    (_set(None, "model", [16, 2]), "model must be a JSON object"),
    (_set("model", "members", "3"), "model.members must be an integer"),
    (_set(None, "elements", [1, "Fe"]), "elements must be a list of integers"),
    (_set(None, "targets", {"name": "t"}), "targets must be a list"),
    (_set("targets", "std", "wide"), "targets[0].std must be a finite number, got 'wide'"),
    (_drop("targets", "units"), "missing targets[0].units"),
    (_set(None, "source_sha256", 5), "source_sha256 must be a string, got 5"),
    (_set(None, "outputs", "prediction"), "outputs must be a list of strings"),
    (_set(None, "exporter", None), "exporter must be a JSON object, got None"),
    (_set("parity", "passed", "yes"), "parity.passed must be true or false"),
    (_drop("parity", "worst_ratio"), "missing parity.worst_ratio"),
    (_set("calibration", "std_scale", [float("nan")]), "calibration.std_scale must be a list"),
    (_set("calibration", "n", 4.5), "calibration.n must be an integer"),
])
def test_a_bad_field_is_a_one_line_error_naming_it(
        edit: Callable[[dict[str, Any]], None], named: str) -> None:
    message = _refusal(edit)
    assert message.startswith("m.onnx: ") and named in message, message


def test_minimum_image_files_record_the_translation_rule() -> None:
    """A minimum-image model's graphs depend on which atoms count as translation images
    (docs/design.md §4): the file records the rule, and a file made with another rule is
    refused rather than fed graphs it was not trained on."""
    doc = _exported_doc()
    doc["graph"].update(translation_rule("minimum-image"))
    assert _assert_round_trip(doc).graph.translations == {
        "translation_tolerance": 0.25, "translation_max_atoms": 256}
    # files written before the rule was recorded read as this version's rule
    assert ModelMetadata.from_dict(_exported_doc()).graph.translations == {}
    message = _refusal(lambda d: d["graph"].update(translation_tolerance=0.1,
                                                   translation_max_atoms=256))
    assert message.startswith("m.onnx: made with another translation rule") and "0.1 Å" in message
    assert "use the deepergat version that wrote the file" in message
    message = _refusal(lambda d: d["graph"].update(translation_tolerance=0.25))
    assert "missing graph settings: translation_max_atoms" in message, message

    def periodic(d: dict[str, Any]) -> None:
        d["graph"].update(construction="periodic", **translation_rule("minimum-image"))
    assert "a periodic graph merges no atoms" in _refusal(periodic)
    assert translation_rule("periodic") == {}


def test_not_an_object_is_refused() -> None:
    with pytest.raises(DeepergatError, match=r"^x: damaged deepergat metadata: the document"):
        ModelMetadata.from_dict([1, 2], where="x")


def test_check_settings_reads_the_typed_graph() -> None:
    meta = ModelMetadata.from_dict(_exported_doc())
    check_settings(meta, cutoff=8.0, max_neighbors=12, graph="minimum-image")
    with pytest.raises(DeepergatError, match="max_neighbors 10 given, the model was trained "
                                             "with 12"):
        check_settings(meta, max_neighbors=10, where="m.onnx")
    with pytest.raises(DeepergatError, match="graph 'periodic' given"):
        check_settings(_exported_doc(), graph="periodic")  # a plain document still works


# ---------------------------------------------------------------------- round trips


def test_unknown_keys_travel_in_extra() -> None:
    doc = _exported_doc()
    doc["future_section"] = {"a": [1, 2], "b": None}
    doc["graph"]["pbc_mode"] = "slab"
    doc["targets"][0]["weight"] = 2.0
    doc["parity"]["new_figure"] = 1
    doc["calibration"]["fitted_on"] = "fold 3"
    meta = _assert_round_trip(doc)
    assert meta.extra == {"future_section": {"a": [1, 2], "b": None}}
    assert meta.graph.extra == {"pbc_mode": "slab"}
    assert meta.targets[0].extra == {"weight": 2.0}


def test_optional_keys_stay_absent_and_parity_stays_null() -> None:
    doc = _exported_doc()
    for key in ("architecture", "checkpoint_format", "calibration", "store_digest"):
        del doc[key]
    doc["parity"] = None
    del doc["graph"]["construction"]
    doc["model"].pop("members")
    doc["outputs"] = ["prediction", "embedding"]
    meta = _assert_round_trip(doc)
    assert meta.architecture is None and meta.architecture_name == "DeeperGATGNN"
    assert meta.parity is None and meta.graph.construction == "periodic"
    assert not meta.is_ensemble and meta.members == 1


def test_typed_sections() -> None:
    meta = ModelMetadata.from_dict(_exported_doc())
    assert meta.is_ensemble and meta.members == 3
    assert meta.output_names == ("prediction", "embedding", "std")
    assert meta.embedding_dim == 16 and meta.target_std == [0.8]
    assert meta.graph.as_kwargs() == {"cutoff": 8.0, "max_neighbors": 12,
                                      "graph": "minimum-image"}
    assert isinstance(meta.parity, ParityFigures) and meta.parity.worst_ratio == 0.125
    assert meta.parity.embedding_max_abs_diff is None
    assert meta.calibration is not None and meta.calibration.std_scale == (1.5,)
    assert meta.calibration.n == 40 and meta.calibration.metrics is not None
    megnet = _exported_doc()
    megnet["model"] = {"arch": "megnet", "dim": 16, "deeper": True}
    del megnet["architecture"]
    meta = ModelMetadata.from_dict(megnet)
    assert meta.embedding_dim == 48 and meta.architecture_name == "DeeperMEGNet"


def test_frozen_and_independent_of_its_inputs() -> None:
    doc = _exported_doc()
    meta = ModelMetadata.from_dict(doc)
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.format = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        meta.model["dim"] = 3  # type: ignore[index]
    doc["model"]["dim"] = 5
    doc["exporter"]["example_sizes"]["N"] = 0
    out = meta.to_dict()
    assert out["model"]["dim"] == 16 and out["exporter"]["example_sizes"]["N"] == 27
    out["parity"]["worst"]["id"] = "changed"
    assert meta.parity is not None and meta.parity.worst["id"] == "7"
    assert meta.replace(source_sha256="ef" * 32).source_sha256 == "ef" * 32


def test_pickles_and_copies() -> None:
    doc = _exported_doc()
    del doc["graph"]["construction"]
    meta = ModelMetadata.from_dict(doc)
    again = pickle.loads(pickle.dumps(meta))
    assert again == meta and again.to_dict() == doc
    assert copy.deepcopy(meta) == meta and copy.deepcopy(meta.parity) == meta.parity


def test_import_needs_no_torch() -> None:
    code = ("import sys, deepergat.metadata, deepergat.export.metadata; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------- hand-edited values out of range (issue 10)


@pytest.mark.parametrize(("edit", "named"), [
    (_set("graph", "cutoff", float("nan")), "graph settings: cutoff must be a finite number"),
    (_set("graph", "cutoff", float("inf")), "graph settings: cutoff must be a finite number"),
    (_set("graph", "cutoff", -1.0), "graph settings: cutoff must be above 0 and at most 30"),
    (_set("graph", "cutoff", 0), "graph settings: cutoff must be above 0"),
    (_set("graph", "cutoff", 1e6), "graph settings: cutoff must be above 0 and at most 30"),
    (_set("graph", "max_neighbors", -3), "graph settings: max_neighbors must be from 1 to 256"),
    (_set("graph", "max_neighbors", 0), "graph settings: max_neighbors must be from 1 to 256"),
    (_set("graph", "max_neighbors", 10**9), "max_neighbors must be from 1 to 256"),
    (_set("graph", "max_neighbors", True), "max_neighbors must be an integer"),
    (_set("targets", "mean", float("nan")), "targets[0].mean must be a finite number"),
    (_set("targets", "std", 0.0), "targets[0].std must be above 0"),
    (_set("targets", "std", -0.5), "targets[0].std must be above 0"),
    (_set("targets", "name", " "), "targets[0].name must be a non-empty string"),
    (_set(None, "targets", []), "targets is empty"),
    (_set(None, "elements", [0, 8]), "elements must be atomic numbers from 1 to 100"),
    (_set(None, "elements", [8, 101]), "elements must be atomic numbers from 1 to 100"),
    (_set("model", "members", 0), "model.members must be at least 1"),
    (_set("model", "dim", -16), "model.dim must be at least 1"),
    (_set("model", "targets", 2), "model.targets is 2 but targets lists 1"),
    (_set("model", "cutoff", float("nan")), "model.cutoff must be a finite number above 0"),
    (_set("calibration", "std_scale", [-1.0]), "calibration.std_scale must be a list of finite"),
    (_set("calibration", "std_scale", [1.5, 2.0]), "calibration.std_scale has 2 values for 1"),
    (_set("calibration", "coverage", 1.5), "calibration.coverage must be above 0 and at most 1"),
    (_set("calibration", "n", -1), "calibration.n must be at least 0"),
    (_set("parity", "n_structures", -300), "parity.n_structures must be at least 0"),
])
def test_a_value_out_of_range_is_a_one_line_error_naming_it(
        edit: Callable[[dict[str, Any]], None], named: str) -> None:
    message = _refusal(edit)
    assert message.startswith("m.onnx: damaged deepergat metadata: "), message
    assert named in message and message.endswith("use an intact copy of the model file"), message


def test_repeated_target_names_are_refused() -> None:
    doc = _exported_doc()
    doc["targets"].append(dict(doc["targets"][0]))
    doc["model"]["targets"] = 2
    doc["calibration"]["std_scale"] = [1.5, 1.5]
    with pytest.raises(DeepergatError, match=r"targets\[1\]\.name 'heat_ref' repeats"):
        ModelMetadata.from_dict(doc, where="m.onnx")


def test_graph_settings_of_constructor_arguments_are_checked() -> None:
    """`deepergat.graphs.graph_settings` reads a model's arguments or a ``graph`` document
    with the same checks: NaN would hang the neighbor search, -3 would change it silently."""
    import numpy as np

    from deepergat.graphs import graph_settings

    assert graph_settings({"cutoff": 8, "max_neighbors": np.int64(12), "graph": "periodic"}) == {
        "cutoff": 8.0, "max_neighbors": 12, "construction": "periodic"}
    for bad, named in (({"cutoff": float("nan")}, "cutoff must be a finite number"),
                       ({"cutoff": -8.0}, "cutoff must be above 0"),
                       ({"max_neighbors": -3}, "max_neighbors must be from 1 to 256"),
                       ({"max_neighbors": 12.5}, "max_neighbors must be an integer"),
                       ({"construction": "cube"}, "construction 'cube' is not one of")):
        source = {"cutoff": 8.0, "max_neighbors": 12, **bad}
        with pytest.raises(DeepergatError, match=named):
            graph_settings(source, where="x.ckpt")
    with pytest.raises(DeepergatError, match="graph settings missing"):
        graph_settings({"cutoff": 8.0})


def _edited_onnx(source: Path, path: Path, keys: str, value: Any) -> Path:
    """A copy of an exported ONNX file whose metadata value at ``keys`` ("graph.cutoff",
    "targets.0.mean") is replaced, as a hand edit would (NaN written as JSON's NaN)."""
    import onnx

    proto = onnx.load_model(str(source))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            doc = json.loads(prop.value)
            node: Any = doc
            *parents, last = keys.split(".")
            for k in parents:
                node = node[int(k)] if k.isdigit() else node[k]
            node[int(last) if last.isdigit() else last] = value
            prop.value = json.dumps(doc)  # allow_nan: a hand edit can write NaN
    onnx.save_model(proto, str(path))
    return path


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("keys", "value", "named"), [
    ("graph.cutoff", float("nan"), "cutoff must be a finite number, got nan"),
    ("graph.cutoff", -1.0, "cutoff must be above 0"),
    ("graph.cutoff", 1e6, "cutoff must be above 0 and at most 30"),
    ("graph.max_neighbors", -3, "max_neighbors must be from 1 to 256"),
    ("targets.0.mean", "abc", "targets[0].mean must be a finite number, got 'abc'"),
    ("targets.0.std", 0, "targets[0].std must be above 0"),
    ("elements", [0, 8], "elements must be atomic numbers from 1 to 100"),
])
def test_hand_edited_onnx_metadata_is_one_line_in_predict_info_and_screen(
        small_model: dict[str, Any], tmp_path: Path, keys: str, value: Any, named: str) -> None:
    """Each command refuses the edited file with one line and exit 2, before any work: a NaN
    cutoff never reaches the neighbor search (it hung predict), max_neighbors -3 never
    changes predictions silently."""
    from click.testing import CliRunner

    from deepergat.cli import main
    from deepergat.export.samples import parity_structures
    from deepergat.io.store import write_store

    model = _edited_onnx(small_model["onnx"], tmp_path / "edited.onnx", keys, value)
    store = tmp_path / "s.h5"
    write_store(store, parity_structures(4))
    out = tmp_path / "s.predictions.h5"
    for args in (["info", str(model)],
                 ["predict", str(model), str(store)],
                 ["screen", "--input", str(store), "--model", str(model), "--output", str(out),
                  "--workers", "0"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert "edited.onnx: damaged deepergat metadata" in lines[0] and named in lines[0], (
            args, lines[0])
        assert r.stdout == "", (args, r.stdout)
    assert not out.exists()


# ------------------------------------------------------------- metadata against the weights


def _ensemble_doc(mean: float) -> dict[str, Any]:
    return {"format": 2, "model": {"members": 3, "max_neighbors": 12, "cutoff": 8.0},
            "graph": {"cutoff": 8.0, "max_neighbors": 12},
            "targets": [{"name": "e", "units": "eV", "mean": mean, "std": 1.0}],
            "elements": [8]}


def _onnx_like(**values: Any) -> Any:
    """A `WeightsView` that names only some tensors, as an ONNX file does."""
    import numpy as np

    from deepergat.metadata import WeightsView

    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in values.items()}
    return WeightsView({k: a.shape for k, a in arrays.items()}, arrays.__getitem__,
                       complete=False)


def test_a_merged_members_scaling_bounds_the_ensembles_mean() -> None:
    """An ONNX ensemble keeps one copy of identical tensors: member 2's target mean, equal to
    one of the others', is not named. The recorded mean must lie where some such copy puts
    it; anywhere else is refused. Read without torch."""
    from deepergat.metadata import check_weights

    weights = _onnx_like(**{"members.0.target_mean": [1.0], "members.1.target_mean": [4.0],
                            "members.2.degree_classes": list(range(14))})
    for mean in (2.0, 3.0, 2.5):  # (1 + 4 + 1) / 3, (1 + 4 + 4) / 3, between
        check_weights(ModelMetadata.from_dict(_ensemble_doc(mean)), weights, where="e.onnx")
    for mean in (1.5, 3.5):
        with pytest.raises(DeepergatError, match=r"^e\.onnx: the metadata contradicts the "
                                                 r"model's weights: targets\[0\]\.mean is "
                                                 rf"{mean} but the weights scale by 2 to 3 "):
            check_weights(ModelMetadata.from_dict(_ensemble_doc(mean)), weights,
                          where="e.onnx")


def test_a_file_that_names_none_of_the_checked_tensors_is_not_refused() -> None:
    from deepergat.metadata import check_weights

    meta = ModelMetadata.from_dict({**_ensemble_doc(1.0), "model": {}})  # a single model
    check_weights(meta, _onnx_like(), where="bare.onnx")
