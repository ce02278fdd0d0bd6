"""`deepergat.contract` and its users: every command-line default, choice list, file kind and
document table that restates a contract fact must equal the contract (or `TrainConfig`,
`ScreenOptions`, `deepergat.devices`), so that a change in one place cannot leave a copy behind.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from structure_helpers import random_structures

from deepergat import contract
from deepergat.cli import main
from deepergat.cli.screen import screen
from deepergat.contract import (
    INPUT_DTYPES,
    INPUT_NAMES,
    MODEL_FORMATS,
    RANK_BY,
    RANK_ORDERS,
    STATUS_CODES,
    Status,
)
from deepergat.system.devices import DEFAULT_DEVICE, DEVICE_CHOICES
from deepergat.training.config import DEFAULT_VAL_FRACTION, DEFAULTS, MEMBER_KINDS

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"


def _command(name: str) -> click.Command:
    return main.commands[name]


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params if p.name is not None}


def _choices(param: click.Parameter) -> tuple[str, ...]:
    assert isinstance(param.type, click.Choice), param.name
    return tuple(param.type.choices)


def _received(command: click.Command) -> dict[str, Any]:
    """The values ``command`` is called with when no option is given."""
    with command.make_context(command.name, [], resilient_parsing=True) as ctx:
        return dict(ctx.params)


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def test_contract_imports_no_torch() -> None:
    code = ("import sys, deepergat.contract, deepergat.training.config, "
            "deepergat.system.devices, "
            "deepergat.cli.options; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- formats -------------------------------------------------------------------------------


def test_export_format_choices_are_the_registry() -> None:
    fmt = _params(_command("export"))["formats"]
    assert _choices(fmt) == (*MODEL_FORMATS, "all")
    assert fmt.help is not None
    assert fmt.help.endswith(
        "all = " + ", ".join(n for n, f in MODEL_FORMATS.items() if f.in_all) + "."
    )
    out = _params(_command("export"))["out_dir"]
    assert all(f.file in (out.help or "") for f in MODEL_FORMATS.values())


def test_model_help_lists_every_format() -> None:
    for command in (_command("predict"), _command("evaluate")):
        assert all(f.extension in (command.help or "") for f in MODEL_FORMATS.values())
        assert "{model}" not in (command.help or "")
    model = _params(screen)["model"]
    assert all(f.extension in (model.help or "") for f in MODEL_FORMATS.values())
    for command in (_command("predict"), _command("evaluate"), screen):
        trust = _params(command)["trust"].help or ""
        assert all((f.extension in trust) for f in MODEL_FORMATS.values())


def test_file_kinds_follow_the_registry() -> None:
    from deepergat.api.info import DESCRIBERS, FORMATTERS
    from deepergat.export.files import CODE_KINDS, SUFFIX_KINDS

    kinds = {f.kind for f in MODEL_FORMATS.values()} | {contract.CHECKPOINT_KIND}
    assert {k for ks in SUFFIX_KINDS.values() for k in ks} == kinds
    assert kinds <= set(DESCRIBERS) and kinds <= set(FORMATTERS)
    assert set(CODE_KINDS) == {f.kind for f in MODEL_FORMATS.values() if f.runs_code}
    assert all(CODE_KINDS.values())
    for f in MODEL_FORMATS.values():
        assert f.file.endswith(f.suffix) and f.file == "model" + f.extension


# ---- screening and device defaults ---------------------------------------------------------


def test_screen_cli_defaults_are_screen_options() -> None:
    from deepergat.screening.run import ScreenOptions

    options = ScreenOptions.create("x.h5").settings()
    params = _params(screen)
    received = _received(screen)
    shared = set(received) & set(options)
    assert {"chunk_size", "device", "max_atoms", "overlap_threshold", "top_order", "rank_by",
            "rank_k"} <= shared
    for name in shared:
        assert received[name] == options[name], name
    assert received["no_resume"] is False and options["resume"] is True
    assert options["chunk_size"] == contract.DEFAULT_CHUNK_SIZE
    assert options["max_atoms"] == contract.DEFAULT_MAX_ATOMS
    assert options["overlap_threshold"] == contract.DEFAULT_OVERLAP_THRESHOLD
    assert options["top_order"] == contract.DEFAULT_RANK_ORDER
    assert options["rank_by"] == contract.DEFAULT_RANK_BY
    assert options["rank_k"] == contract.DEFAULT_RANK_K
    assert options["device"] == DEFAULT_DEVICE
    assert _choices(params["top_order"]) == RANK_ORDERS
    assert _choices(params["rank_by"]) == RANK_BY


def test_predict_and_extract_share_the_screening_defaults() -> None:
    predict = _params(_command("predict"))
    received = _received(_command("predict"))
    assert received["max_atoms"] == contract.DEFAULT_MAX_ATOMS
    assert received["overlap_threshold"] == contract.DEFAULT_OVERLAP_THRESHOLD
    for name in ("extract", "report"):
        assert _choices(_params(_command(name))["order"]) == RANK_ORDERS
    assert _received(_command("extract"))["order"] == contract.DEFAULT_RANK_ORDER
    # the report takes the screen's own ranking, else the short list's default
    from deepergat.screening.shortlist import ListSettings

    assert _received(_command("report"))["order"] is None
    assert ListSettings().order == contract.DEFAULT_RANK_ORDER
    extract = _received(_command("extract"))
    assert extract["rank_by"] == contract.DEFAULT_RANK_BY
    assert _choices(_params(_command("extract"))["rank_by"]) == RANK_BY
    assert extract["rank_k"] == contract.DEFAULT_RANK_K
    for name in ("max_atoms", "overlap_threshold"):
        assert predict[name].help == _params(screen)[name].help


def test_every_device_option_is_the_same() -> None:
    commands = [_command(n) for n in ("train", "predict", "evaluate")] + [screen]
    for command in commands:
        assert _choices(_params(command)["device"]) == DEVICE_CHOICES, command.name
        assert _received(command)["device"] == DEFAULT_DEVICE, command.name
    assert DEFAULTS.run.device == DEFAULT_DEVICE


def test_device_names_are_checked_once() -> None:
    from deepergat.errors import DeepergatError
    from deepergat.system.devices import check_device, parse_device, pick_device

    for name in DEVICE_CHOICES:
        assert check_device(name) == name
    for call in (lambda: check_device("gpu"), lambda: pick_device("gpu", 0, 1),
                 lambda: parse_device("gpu")):
        with pytest.raises(DeepergatError, match="must be 'auto', 'cpu'"):
            call()


# ---- training defaults ---------------------------------------------------------------------


def test_train_cli_defaults_are_train_config() -> None:
    train = _command("train")
    params = _params(train)
    settings = DEFAULTS.to_dict()
    compared = []
    for name, value in _received(train).items():
        if name not in settings or value is None:
            continue
        assert value == settings[name], name
        compared.append(name)
    assert {"arch", "epochs", "batch_size", "seed", "device", "members", "graph",
            "distance_scale"} <= set(compared)
    assert _choices(params["members"]) == MEMBER_KINDS
    assert _choices(params["graph"]) == contract.GRAPH_CONSTRUCTIONS
    assert f"[{DEFAULT_VAL_FRACTION:g}]" in (params["val_fraction"].help or "")
    assert DEFAULTS.dataset.cutoff == contract.DEFAULT_CUTOFF
    assert DEFAULTS.dataset.max_neighbors == contract.DEFAULT_MAX_NEIGHBORS


# ---- statuses ------------------------------------------------------------------------------


def _design_status_table() -> list[tuple[int, str]]:
    lines = DESIGN.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\|\s*status\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        code, meaning = (c.strip() for c in line.strip("|").split("|"))
        rows.append((int(code), meaning))
    return rows


def test_design_status_table_is_the_enum() -> None:
    rows = _design_status_table()
    assert [code for code, _ in rows] == [int(s) for s in Status]
    for (code, meaning), status in zip(rows, Status, strict=True):
        plain = re.sub(r"\s*\([^)]*\)", "", meaning).replace("`", "")
        assert plain == status.meaning == STATUS_CODES[code], code
    defaults = dict(rows)
    assert f"(default {contract.DEFAULT_MAX_ATOMS})" in defaults[Status.TOO_MANY_ATOMS]
    assert f"(default {contract.DEFAULT_OVERLAP_THRESHOLD} Å)" in defaults[Status.OVERLAP]


# ---- the model's inputs --------------------------------------------------------------------


def test_build_inputs_produces_the_contract() -> None:
    from deepergat.graphs import build_inputs
    from deepergat.io.store import StructureBatch

    batch = StructureBatch.from_structures(random_structures(4, seed=1))
    g = build_inputs(batch, max_z=contract.MAX_Z)
    assert tuple(g.inputs) == INPUT_NAMES
    for name, array in g.inputs.items():
        assert array.dtype == INPUT_DTYPES[name], name
        assert array.ndim == contract.INPUT_NDIM[name], name
    assert np.array_equal(g.status != Status.OK, np.zeros(len(batch), bool))
