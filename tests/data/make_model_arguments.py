"""Write tests/data/model_arguments.json from the starting commit of issue 23 (4a91ba8).

Run it against that commit, whose module names `main` imports (``deepergat.model``,
``deepergat.checkpoint``, ``deepergat.store``), from a checkout of it (tests/data/README.md
says how to prepare one):

    PYTHONPATH=/tmp/deepergat-4a91ba8 python tests/data/make_model_arguments.py \
        tests/data/model_arguments.json

The file records what that release wrote, so that tests/nn/test_arguments.py can prove that
today's models write the same constructor-argument dicts (keys, values and their order) for
every architecture and option, name the same architectures and checkpoint formats, refuse bad
settings with the same messages, and that the bundled models load and predict as before. The
test builds the same cases (`model_cases`, `error_cases`) with today's functions (an `Api`).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch


class Api(NamedTuple):
    """The functions the cases call, from whichever release builds them."""

    make_model: Callable[..., Any]
    DeeperGATGNN: Callable[..., Any]
    DeeperGATGNNEnsemble: Callable[..., Any]
    build_from_config: Callable[..., Any]


ROOT = Path(__file__).resolve().parents[2]
#: Graph settings of a training run (`deepergat.train._build_model` always passes them).
RUN = {"layers": 2, "per_atom": False, "targets": 1, "cutoff": 8.0, "max_neighbors": 12,
       "graph": "periodic", "distance_scale": None}
ARCHS = ("deepergatgnn", "gatgnn", "cgcnn", "schnet", "mpnn", "megnet")
#: Options of each architecture beyond the shared ones, set to values other than the defaults.
OWN = {
    "deepergatgnn": {"dim": 16, "heads": 2, "groups": 4, "negative_slope": 0.1,
                     "agat_form": "direct"},
    "gatgnn": {"dim": 16, "heads": 2, "negative_slope": 0.1},
    "cgcnn": {"dim": 16, "hidden": 24, "post_layers": 1, "groups": 4, "pool": "add"},
    "schnet": {"dim": 16, "hidden": 24, "filters": 20, "post_layers": 2, "pool": "mean"},
    "mpnn": {"dim": 8, "hidden": 12, "edge_hidden": 10, "post_layers": 1, "pool": "max"},
    "megnet": {"dim": 8, "hidden": 12, "mlp_layers": 3, "global_dim": 4, "post_layers": 1},
}
SHARED = {"gaussians": 20, "gaussian_width": 0.3, "cutoff": 6.5, "max_neighbors": 10,
          "graph": "minimum-image", "distance_scale": 7, "targets": 2, "per_atom": True}


def singles(api: Api) -> dict[str, Callable[[], Any]]:
    """name -> a call that builds a single model."""
    make_model, DeeperGATGNN, build_from_config = (
        api.make_model, api.DeeperGATGNN, api.build_from_config)
    cases: dict[str, Callable[[], Any]] = {}
    for arch in ARCHS:
        for deeper in (False, True):
            tag = f"{arch}{'-deeper' if deeper else ''}"
            cases[f"{tag}/defaults"] = lambda a=arch, d=deeper: make_model(a, deeper=d)
            cases[f"{tag}/run"] = lambda a=arch, d=deeper: make_model(a, deeper=d, **RUN)
            cases[f"{tag}/options"] = lambda a=arch, d=deeper: make_model(
                a, deeper=d, layers=3, **OWN[a], **SHARED)
            cases[f"{tag}/run-scaled"] = lambda a=arch, d=deeper: make_model(
                a, deeper=d, **{**RUN, "distance_scale": 5.4321, "per_atom": True,
                                "graph": "minimum-image"})
    for arch in ("cgcnn", "schnet", "megnet"):
        cases[f"{arch}-deeper/identity-single"] = lambda a=arch: make_model(
            a, deeper=True, identity="single", **RUN)
        cases[f"{arch}-deeper/identity-single-options"] = lambda a=arch: make_model(
            a, deeper=True, identity="single", layers=3, **OWN[a], **SHARED)
        cases[f"{arch}-deeper/identity-doubled"] = lambda a=arch: make_model(
            a, deeper=True, identity="doubled", **RUN)
    cases["mpnn/identity-doubled"] = lambda: make_model("mpnn", identity="doubled", **RUN)
    cases["DeeperGATGNN/direct"] = lambda: DeeperGATGNN(layers=2, dim=8)
    cases["DeeperGATGNN/no-norm"] = lambda: DeeperGATGNN(layers=2, dgn=False)
    cases["DeeperGATGNN/batch-norm-skip"] = lambda: DeeperGATGNN(
        layers=2, dgn=False, batch_norm=True, skip=True)
    cases["DeeperGATGNN/batch-norm-false"] = lambda: DeeperGATGNN(layers=2, batch_norm=False)
    cases["DeeperGATGNN/scaled-buffers"] = lambda: DeeperGATGNN(
        layers=2, targets=2, target_mean=[1.0, 2.0], target_std=[0.5, 0.25])
    cases["CGCNN/buffers"] = lambda: make_model(
        "cgcnn", layers=1, target_mean=[1.0], target_std=[2.0])

    def set_form() -> Any:
        m = DeeperGATGNN(layers=2)
        m.set_agat_form("direct")
        return m

    cases["DeeperGATGNN/set_agat_form"] = set_form
    # arguments of files older than an option: rebuilt, they gain its default
    cases["rebuilt/format-1-minimal"] = lambda: build_from_config({"dim": 16, "layers": 2})
    cases["rebuilt/arch-minimal"] = lambda: build_from_config({"arch": "schnet", "layers": 1})
    cases["rebuilt/gatgnn"] = lambda: build_from_config(
        {"layers": 2, "dgn": False, "skip": False, "batch_norm": True})
    return cases


def ensembles(api: Api) -> dict[str, Callable[[], Any]]:
    """name -> a call that builds an ensemble."""
    make_model, DeeperGATGNNEnsemble = api.make_model, api.DeeperGATGNNEnsemble
    cases: dict[str, Callable[[], Any]] = {}
    members = {
        "deepergatgnn": make_model("deepergatgnn", **RUN),
        "gatgnn": make_model("gatgnn", **RUN),
        "cgcnn-deeper-single": make_model("cgcnn", deeper=True, identity="single", **RUN),
        "megnet-options": make_model("megnet", layers=3, **OWN["megnet"], **SHARED),
        "schnet-deeper": make_model("schnet", deeper=True, **RUN),
    }
    local = {"neighbors": 5, "bandwidth": 0.3, "references": 40, "features": 48}
    for name, member in members.items():
        cases[f"ensemble/{name}"] = lambda m=member: DeeperGATGNNEnsemble(
            members=3, **m.config)
        cases[f"ensemble/{name}/std_scale"] = lambda m=member: DeeperGATGNNEnsemble(
            members=2, std_scale=[1.5] * m.config["targets"], **m.config)
        cases[f"ensemble/{name}/local-error"] = lambda m=member: DeeperGATGNNEnsemble(
            members=3, local_error=dict(local), **m.config)
    cases["ensemble/bare"] = lambda: DeeperGATGNNEnsemble(members=2, layers=2, dim=16)

    def with_local() -> Any:
        ens = DeeperGATGNNEnsemble(members=2, **members["deepergatgnn"].config)
        ens.set_local_error(torch.randn(2, 30, 64), torch.rand(30, 1).abs(), neighbors=7)
        return ens

    def with_form() -> Any:
        ens = DeeperGATGNNEnsemble(members=2, **members["deepergatgnn"].config)
        ens.set_agat_form("direct")
        return ens

    cases["ensemble/set_local_error"] = with_local
    cases["ensemble/set_agat_form"] = with_form
    return cases


def model_cases(api: Api) -> dict[str, Callable[[], Any]]:
    """name -> a call that builds a model, single or ensemble (in a fixed order: the random
    tensors of ``ensemble/set_local_error`` do not reach the recorded arguments)."""
    return {**singles(api), **ensembles(api)}


def record(model: Any, checkpoint_format: Callable[[Any], int],
           architecture_name: Callable[[Any], str]) -> dict[str, Any]:
    """What the fixture holds of a model: its arguments as [key, value] pairs (in order), the
    checkpoint format they need and the architecture's paper name."""
    config = model.config
    return {"model": list(map(list, config.items())), "format": checkpoint_format(config),
            "architecture": architecture_name(config)}


def error_cases(api: Api) -> dict[str, Callable[[], Any]]:
    """name -> a call the starting commit refused."""
    make_model, DeeperGATGNN, DeeperGATGNNEnsemble, build_from_config = api
    return {
        "unknown-setting-deepergatgnn": lambda: make_model("deepergatgnn", foo=1),
        "unknown-setting-gatgnn": lambda: make_model("gatgnn", foo=1),
        "unknown-setting-cgcnn": lambda: make_model("cgcnn", deeper=True, foo=1),
        "unknown-setting-schnet": lambda: make_model("schnet", edge_hidden=3),
        "unknown-setting-mpnn": lambda: make_model("mpnn", filters=3),
        "unknown-setting-megnet": lambda: make_model("megnet", heads=3),
        "unknown-setting-ensemble": lambda: DeeperGATGNNEnsemble(members=2, foo=1),
        "identity-gatgnn": lambda: make_model("gatgnn", identity="single"),
        "identity-mpnn": lambda: make_model("mpnn", deeper=True, identity="single"),
        "identity-plain-cgcnn": lambda: make_model("cgcnn", identity="single"),
        "identity-unknown": lambda: make_model("schnet", deeper=True, identity="triple"),
        "megnet-pool": lambda: make_model("megnet", pool="max"),
        "pool-unknown": lambda: make_model("cgcnn", pool="median"),
        "layers-zero": lambda: make_model("mpnn", layers=0),
        "graph-unknown-net": lambda: make_model("cgcnn", graph="voronoi"),
        "graph-unknown-deepergatgnn": lambda: make_model("deepergatgnn", graph="voronoi"),
        "distance-scale": lambda: make_model("schnet", distance_scale=-1.0),
        "dgn-and-batch-norm": lambda: DeeperGATGNN(batch_norm=True),
        "agat-form": lambda: DeeperGATGNN(agat_form="folded"),
        "arch-unknown": lambda: make_model("painn"),
        "arch-unknown-config": lambda: build_from_config({"arch": "painn"}),
        "ensemble-one": lambda: DeeperGATGNNEnsemble(members=1),
        "ensemble-local": lambda: DeeperGATGNNEnsemble(
            members=2, local_error={"neighbors": 5, "bandwidth": 0.3, "references": 4,
                                    "features": 8}),
    }


def refusal(call: Callable[[], Any]) -> str:
    """``"<exception type>: <message>"`` of a call that must fail."""
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError("accepted")


def perovskites(n: int) -> list[dict[str, Any]]:
    from pymatgen.core import Structure

    csv.field_size_limit(1 << 30)
    out = []
    with open(ROOT / "tests" / "data" / "perov5_sample.csv", newline="") as f:
        for row in csv.DictReader(f):
            s = Structure.from_str(row["cif"], fmt="cif")
            out.append({"id": row["material_id"], "lattice": s.lattice.matrix.copy(),
                        "pbc": (True, True, True),
                        "atomic_numbers": np.array([x.specie.Z for x in s], dtype=np.int64),
                        "positions": s.cart_coords.copy()})
            if len(out) == n:
                return out
    return out


def bundled() -> dict[str, Any]:
    """Each bundled checkpoint's saved and rebuilt arguments, and its outputs on the first 6
    perovskites of tests/data/perov5_sample.csv."""
    from deepergat.checkpoint import load_checkpoint
    from deepergat.contract import INPUT_NAMES
    from deepergat.graphs import build_inputs
    from deepergat.store import StructureBatch

    structures = perovskites(6)
    out = {}
    for path in sorted((ROOT / "deepergat" / "models").glob("*/*.ckpt")):
        ck = load_checkpoint(path)
        g = ck.data["graph"]
        batch = build_inputs(StructureBatch.from_structures(structures), cutoff=g["cutoff"],
                             max_neighbors=g["max_neighbors"],
                             graph=g.get("construction", "periodic"))
        inputs = [torch.from_numpy(np.asarray(batch.inputs[n])) for n in INPUT_NAMES]
        with torch.no_grad():
            outputs = ck.model(*inputs)
        out[f"{path.parent.name}/{path.name}"] = {
            "saved": list(map(list, ck.data["model"].items())),
            "rebuilt": list(map(list, ck.model.config.items())),
            "ids": [structures[r]["id"] for r in batch.rows],
            "outputs": [o.double().tolist() for o in outputs],
        }
    return out


def main() -> None:
    from deepergat.architectures import architecture_name
    from deepergat.checkpoint import checkpoint_format
    from deepergat.model import DeeperGATGNN, DeeperGATGNNEnsemble, build_from_config, make_model

    api = Api(make_model, DeeperGATGNN, DeeperGATGNNEnsemble, build_from_config)
    torch.manual_seed(0)
    models = {name: record(build(), checkpoint_format, architecture_name)
              for name, build in model_cases(api).items()}
    errors = {name: refusal(call) for name, call in error_cases(api).items()}
    doc = {"made_by": "tests/data/make_model_arguments.py on commit 4a91ba8",
           "models": models, "errors": errors, "bundled": bundled()}
    Path(sys.argv[1]).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
