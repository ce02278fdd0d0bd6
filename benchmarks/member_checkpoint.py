"""One member of an ensemble checkpoint as a single-model checkpoint (how the bundled
``perovskite-heat-mic`` was made from ``perovskite-heat``'s member 0):

    python benchmarks/member_checkpoint.py deepergat/models/perovskite-heat/ensemble.ckpt \
        best.ckpt [--member 0]

The member keeps its weights and its own target scaling; the new checkpoint records the
ensemble's training config (with ``member`` set), the member's seed and kept epoch, and the
ensemble file it came from (sha256). Export it as any checkpoint (``deepergat export best.ckpt
--format onnx --check-data perov.h5``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deepergat.nn.checkpoint import load_checkpoint, save_checkpoint
from deepergat.nn.ensemble import DeeperGATGNNEnsemble
from deepergat.system.files import file_sha256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ensemble", type=Path, help="an ensemble checkpoint (ensemble.ckpt)")
    ap.add_argument("output", type=Path, help="the single-model checkpoint to write")
    ap.add_argument("--member", type=int, default=0)
    opts = ap.parse_args()
    ens = load_checkpoint(opts.ensemble)
    if not isinstance(ens.model, DeeperGATGNNEnsemble):
        raise SystemExit(f"{opts.ensemble} is not an ensemble checkpoint")
    k = opts.member
    if not 0 <= k < len(ens.model.members):
        raise SystemExit(f"--member must be in 0..{len(ens.model.members) - 1}")
    data = ens.data
    extra = data.get("extra") or {}
    members = extra.get("members") or [{}] * len(ens.model.members)
    config = dict(extra.get("config") or {}, ensemble=None, members=None, member=k, oof=None)
    save_checkpoint(
        opts.output, ens.model.members[k], targets=data["targets"], units=data["units"],
        elements=data["elements"], store_digest=data["store_digest"],
        extra={"config": config, "seed": members[k].get("seed"),
               "best_epoch": members[k].get("best_epoch"),
               "member_of": {"checkpoint": opts.ensemble.name,
                             "sha256": file_sha256(opts.ensemble), "member": k}},
    )
    print(f"{opts.output}: member {k} of {opts.ensemble} (sha256 {file_sha256(opts.output)})")


if __name__ == "__main__":
    main()
