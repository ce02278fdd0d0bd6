"""The run's settings: flat and sectioned YAML, the flat form runs write, defaults, and
messages that name the settings (the command line names its flags instead)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from deepergat.errors import DeepergatError, SettingError
from deepergat.training.config import (
    DEFAULTS,
    SECTIONS,
    NetworkSettings,
    TrainConfig,
    TrainerSettings,
    flat_settings,
    parse_max_time,
)

ACCURACY = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy"

#: ``config.yaml`` as the starting commit (4a91ba8) wrote it for these settings:
#: data perov.h5, target heat_ref, out runs/ens, arch cgcnn, deeper, val_fraction 0.2,
#: test_fraction 0.1, ensemble 3, members seeds, member 1, max_time "01:30", model {dim: 32,
#: identity: single}, graph minimum-image, distance_scale "6.5", lr_schedule cosine, keep last,
#: early_stop 20, per_atom.
WRITTEN_BEFORE = """\
data: perov.h5
target: heat_ref
out: runs/ens
val_data: null
val_fraction: 0.2
test_data: null
test_fraction: 0.1
arch: cgcnn
deeper: true
layers: 10
epochs: 500
batch_size: 100
lr: 0.002
seed: 0
per_atom: true
init_from: null
early_stop: 20
max_time: 5400.0
device: auto
cache_dir: null
resume: false
cv: null
ensemble: 3
members: seeds
member: 1
oof: null
local_neighbors: 30
model:
  dim: 32
  identity: single
cutoff: 8.0
max_neighbors: 12
graph: minimum-image
distance_scale: 6.5
scale_targets: true
lr_monitor: val
keep: last
lr_schedule: cosine
weight_decay: 0.01
lr_factor: 0.8
lr_patience: 10
min_lr: 1.0e-05
lr_threshold: 0.0002
curve_every: 10
"""


def test_a_config_yaml_written_before_loads_and_writes_back_the_same() -> None:
    loaded = yaml.safe_load(WRITTEN_BEFORE)
    cfg = TrainConfig.from_dict(loaded)
    assert cfg.network.arch == "cgcnn" and cfg.network.model == {"dim": 32, "identity": "single"}
    assert cfg.trainer.lr == 0.002 and cfg.ensembles.member == 1 and cfg.run.max_time == 5400.0
    assert cfg.dataset.graph == "minimum-image" and cfg.network.distance_scale == 6.5
    # written back the same, with the settings added since (--compile, --precision) at the end
    assert yaml.safe_dump(cfg.to_dict(), sort_keys=False) == (
        WRITTEN_BEFORE + "compile: false\nprecision: fp32\n")


def test_the_flat_form_has_every_setting_once_in_the_order_runs_wrote() -> None:
    flat = DEFAULTS.to_dict()
    assert list(flat) == [*yaml.safe_load(WRITTEN_BEFORE), "compile", "precision"]
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert sorted(names) == sorted(flat) and len(names) == 44
    # the defaults as the starting commit had them (layers and lr from the architecture)
    assert (flat["layers"], flat["lr"], flat["epochs"], flat["batch_size"]) == (10, 0.005, 500,
                                                                                100)
    assert flat["distance_scale"] == "cutoff" and flat["model"] == {}


def test_every_accuracy_study_file_loads_unchanged() -> None:
    files = sorted(ACCURACY.glob("*.yaml"))
    assert len(files) >= 8
    for path in files:
        values = yaml.safe_load(path.read_text())
        cfg = TrainConfig.from_dict(values, source=str(path))
        flat = cfg.to_dict()
        assert {k: flat[k] for k in values} == values, path.name


def test_a_sectioned_file_equals_its_flat_form() -> None:
    flat = {"data": "a.h5", "target": "gap", "val_fraction": 0.2, "graph": "minimum-image",
            "arch": "schnet", "deeper": True, "model": {"dim": 32}, "epochs": 7, "keep": "last",
            "lr_schedule": "cosine", "cv": 3, "out": "runs/x", "seed": 4, "max_time": "00:10"}
    sectioned = {
        "dataset": {"data": "a.h5", "target": "gap", "val-fraction": 0.2,
                    "graph": "minimum-image"},
        "network": {"arch": "schnet", "deeper": True, "model": {"dim": 32}},
        "trainer": {"epochs": 7, "keep": "last", "lr_schedule": "cosine"},
        "ensembles": {"cv": 3},
        "run": {"out": "runs/x", "seed": 4, "max_time": "00:10"},
    }
    a, b = TrainConfig.from_dict(flat), TrainConfig.from_dict(sectioned)
    assert a == b and a.run.max_time == 600.0 and a.network.layers == 10  # Deeper SchNet
    mixed = {"dataset": sectioned["dataset"], **{k: flat[k] for k in ("arch", "deeper", "model",
                                                                      "epochs", "keep", "cv")},
             "lr_schedule": "cosine", "run": sectioned["run"]}
    assert TrainConfig.from_dict(mixed) == a


def test_unknown_and_repeated_settings_are_refused_with_one_line() -> None:
    with pytest.raises(DeepergatError, match=r"^run.yaml: unknown setting 'epoch'; known: "
                                             r"arch, batch_size, "):
        TrainConfig.from_dict({"epoch": 3}, source="run.yaml")
    with pytest.raises(DeepergatError, match=r"^c: unknown setting 'epochs' in section "
                                             r"'dataset'; known: cache_dir, cutoff, data, "):
        flat_settings({"dataset": {"epochs": 3}}, source="c")
    with pytest.raises(DeepergatError, match="section 'trainer' must be a mapping"):
        flat_settings({"trainer": 3})
    with pytest.raises(DeepergatError, match="setting 'epochs' is given twice"):
        flat_settings({"epochs": 3, "trainer": {"epochs": 4}})


def test_choices_are_checked_and_named_as_the_files_key() -> None:
    for name, value in (("graph", "cubic"), ("arch", "gcn"), ("lr_monitor", "test"),
                        ("keep", "first"), ("lr_schedule", "step"), ("members", "bags")):
        with pytest.raises(SettingError, match=rf"^{name}: '{value}' is not one of ") as err:
            TrainConfig.from_dict({name: value})
        # the key as the file has it, also on the command line (click checks its own flags)
        assert err.value.render({name: f"--{name}"}) == str(err.value)
    with pytest.raises(SettingError, match=r"^lr_monitor: 'x' is not one of val, train$"):
        TrainerSettings(lr_monitor="x")  # type: ignore[arg-type]
    with pytest.raises(SettingError, match="distance_scale: 'far': give cutoff, data or a"):
        NetworkSettings(distance_scale="far")
    with pytest.raises(SettingError, match=r"distance_scale: -1\.0 must be a positive length"):
        TrainConfig.from_dict({"distance_scale": -1.0})
    assert TrainConfig.from_dict({"distance_scale": "5.5"}).network.distance_scale == 5.5


def test_messages_name_settings_and_the_command_line_its_flags() -> None:
    flags = {"member": "--member", "ensemble": "--ensemble", "cv": "--cv", "oof": "--oof",
             "local_neighbors": "--local-neighbors", "max_time": "--max-time"}
    cases = [
        ({"ensemble": 2, "member": 2}, "member 2: give 0 to 1 (members of 2)",
         "--member 2: give 0 to 1 (members of 2)"),
        ({"member": 0}, "member trains one member of ensemble K or one fold of cv K: give one "
         "of them", "--member trains one member of --ensemble K or one fold of --cv K: give "
         "one of them"),
        ({"local_neighbors": -1}, "local_neighbors -1: give a count (0: no local error term)",
         "--local-neighbors -1: give a count (0: no local error term)"),
        ({"oof": "x.csv"}, "oof gives an ensemble its local error term: give ensemble K",
         "--oof gives an ensemble its local error term: give --ensemble K"),
        ({"max_time": "soon"}, "max_time 'soon': expected HH:MM, e.g. 23:30",
         "--max-time 'soon': expected HH:MM, e.g. 23:30"),
    ]
    for values, python, cli in cases:
        with pytest.raises(SettingError) as err:
            TrainConfig.from_dict(values)
        assert str(err.value) == python and err.value.render(flags) == cli


def test_layers_and_lr_come_from_the_architecture_unless_given() -> None:
    assert (DEFAULTS.network.layers, DEFAULTS.trainer.lr) == (10, 0.005)
    cgcnn = TrainConfig.from_dict({"arch": "cgcnn"})
    assert (cgcnn.network.layers, cgcnn.trainer.lr) == (4, 0.002)
    deeper = TrainConfig.from_dict({"arch": "cgcnn", "deeper": True, "lr": 0.01})
    assert (deeper.network.layers, deeper.trainer.lr) == (10, 0.01)
    built = TrainConfig(network=NetworkSettings(arch="mpnn", layers=3))
    assert (built.network.layers, built.trainer.lr) == (3, 0.001)


def test_replace_changes_settings_by_name_and_checks_them() -> None:
    cfg = TrainConfig.from_dict({"ensemble": 3, "member": 2, "model": {"dim": 8}})
    other = cfg.replace(out="runs/y", seed=5, ensemble=None, member=None)
    assert (other.run.out, other.run.seed, other.ensembles.ensemble) == ("runs/y", 5, None)
    assert (cfg.run.out, cfg.ensembles.member) == ("", 2)  # the original is left alone
    other.network.model["dim"] = 99
    assert cfg.network.model == {"dim": 8}  # no shared mutable parts
    with pytest.raises(SettingError, match="member trains one member"):
        cfg.replace(ensemble=None)


def test_max_time_reads_hours_and_minutes() -> None:
    assert parse_max_time("23:30") == 84600.0 and parse_max_time("0:01:05") == 65.0
    for bad in ("soon", "1", "1:2:3:4", "-1:00"):
        with pytest.raises(SettingError, match="expected HH:MM"):
            parse_max_time(bad)


def test_the_config_module_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, deepergat.training.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
