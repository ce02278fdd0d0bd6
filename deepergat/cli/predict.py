"""``deepergat predict``: a model's predictions of structure files and stores, as CSV rows."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from deepergat.contract import Status
from deepergat.errors import DeepergatError

from .options import (
    DEVICE_HELP,
    TRUST_HELP,
    check_options,
    describe_model_argument,
    device_option,
)


@click.command()
@click.argument("model")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write rows here instead of standard output.")
@click.option("--batch-size", type=int, default=100, show_default=True)
@check_options
@device_option(DEVICE_HELP)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@click.option("--id-from", type=click.Choice(["stem", "path"]), default="stem",
              show_default=True,
              help="Ids of structure files: the file stem, or the path (for trees of POSCARs).")
@describe_model_argument
def predict(model: str, inputs: tuple[str, ...], *, csv_path: str | None, batch_size: int,
            max_atoms: int, overlap_threshold: float, device: str, trust: bool,
            id_from: str) -> None:
    """Predict structure files or stores with MODEL: {model}.

    Rows are id,<target>...,status,flags (status codes and flag bits as in
    deepergat-screen; a structure with status other than 0 has an empty value); an ensemble
    adds <target>_std after each target: id,<target>,<target>_std,status,flags. --csv
    writes the rows to a temporary file beside OUT that replaces OUT only when every row is
    written: after an error OUT is as it was. Without
    --csv rows stream to standard output as they are computed, so an error (exit status 2)
    may follow rows already printed.

    \b
    Examples:
      deepergat predict perovskite-heat some.cif
      deepergat predict exported/model.onnx candidates.h5 --csv predictions.csv
      deepergat predict runs/heat/best.ckpt candidates.h5 cifs/ --csv predictions.csv
      deepergat predict perovskite-heat 'runs/*/CONTCAR' --id-from path
    """
    import math

    from deepergat.api.predict import predict_inputs
    from deepergat.errors import environment_error, is_full_disk
    from deepergat.system.files import private_temporary, write_csv

    def skipped(count: int, what: str) -> None:
        click.echo(f"skipped {count} input{'s' if count != 1 else ''} that could not be read: "
                   f"{what}", err=True)

    ck, rows = predict_inputs(model, inputs, batch_size=batch_size, max_atoms=max_atoms,
                              overlap_threshold=overlap_threshold, device=device,
                              on_skipped=skipped, trust=trust, id_from=id_from)
    header = ["id", *(c for t in ck.targets for c in ((t, f"{t}_std") if ck.has_std else (t,))),
              "status", "flags"]
    counts: dict[int, int] = {}

    def text(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.6g}"

    def lines() -> Iterator[list[Any]]:
        for row in rows:
            if row.std is None:
                values = [text(v) for v in row.values.tolist()]
            else:
                values = [text(x) for v, s in zip(row.values.tolist(), row.std.tolist(),
                                                   strict=True) for x in (v, s)]
            counts[row.status] = counts.get(row.status, 0) + 1
            yield [row.id, *values, row.status, row.flags]

    if csv_path is None:  # rows stream to standard output as they are computed
        body = lines()
        first = next(body, None)  # the model, the inputs and the first block read first
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([first] if first is not None else [])
        writer.writerows(body)
    else:  # a temporary file beside OUT replaces it only when every row is written
        out = Path(csv_path)
        tmp = private_temporary(out)
        try:
            write_csv(out, header, lines(), tmp=tmp)
        except OSError as e:
            if not (is_full_disk(e) or e.filename in (str(tmp), str(out))):
                raise  # not the rows' file (an input, say)
            err = environment_error(e, path=out)
            if err is not None:
                raise err from None
            raise DeepergatError(f"--csv {out}: cannot write it ({e.strerror or e}); choose a "
                                 "file in a folder that exists") from None
    bad = {k: v for k, v in counts.items() if k != Status.OK}
    if bad:
        from deepergat.errors import STATUS_CODES

        summary = ", ".join(f"{v} × status {k} ({STATUS_CODES.get(k, '?')})"
                            for k, v in sorted(bad.items()))
        click.echo(f"not predicted: {summary}", err=True)
