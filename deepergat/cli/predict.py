"""``deepergat predict``: a model's predictions of structure files and stores, as CSV rows."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

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

    Rows are id,<target>...,status (status codes as in deepergat-screen; a structure with
    status other than 0 has an empty value); an ensemble adds <target>_std after each target:
    id,<target>,<target>_std,status. --csv writes the rows to a temporary file beside OUT that
    replaces OUT only when every row is written: after an error OUT is as it was. Without
    --csv rows stream to standard output as they are computed, so an error (exit status 2)
    may follow rows already printed.

    \b
    Examples:
      deepergat predict perovskite-heat some.cif
      deepergat predict exported/model.onnx candidates.h5 --csv predictions.csv
      deepergat predict runs/heat/best.ckpt candidates.h5 cifs/ --csv predictions.csv
      deepergat predict perovskite-heat 'runs/*/CONTCAR' --id-from path
    """
    import csv
    import math

    from deepergat.api.predict import predict_inputs
    from deepergat.errors import environment_error, is_full_disk

    def skipped(count: int, what: str) -> None:
        click.echo(f"skipped {count} input{'s' if count != 1 else ''} that could not be read: "
                   f"{what}", err=True)

    ck, rows = predict_inputs(model, inputs, batch_size=batch_size, max_atoms=max_atoms,
                              overlap_threshold=overlap_threshold, device=device,
                              on_skipped=skipped, trust=trust, id_from=id_from)
    out = _AtomicCsv(csv_path) if csv_path else None  # fails now on an unwritable folder
    try:
        # the model, the inputs and the first block are read before anything is written
        first = next(rows, None)
        handle = out.handle if out is not None else sys.stdout
        writer = csv.writer(handle, lineterminator="\n")
        header = [c for t in ck.targets for c in ((t, f"{t}_std") if ck.has_std else (t,))]
        writer.writerow(["id", *header, "status"])
        counts: dict[int, int] = {}

        def text(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        for row in itertools.chain([first] if first is not None else [], rows):
            if row.std is None:
                values = [text(v) for v in row.values.tolist()]
            else:
                values = [text(x) for v, s in zip(row.values.tolist(), row.std.tolist(),
                                                   strict=True) for x in (v, s)]
            writer.writerow([row.id, *values, row.status])
            counts[row.status] = counts.get(row.status, 0) + 1
        if out is not None:
            out.commit()
    except OSError as e:
        if out is not None and is_full_disk(e):  # writing the rows: name the user's file
            raise environment_error(e, path=out.path) or e from None
        raise
    finally:
        if out is not None:
            out.discard()  # after an error: the temporary file goes, OUT is untouched
    bad = {k: v for k, v in counts.items() if k != Status.OK}
    if bad:
        from deepergat.errors import STATUS_CODES

        summary = ", ".join(f"{v} × status {k} ({STATUS_CODES.get(k, '?')})"
                            for k, v in sorted(bad.items()))
        click.echo(f"not predicted: {summary}", err=True)


class _AtomicCsv:
    """A CSV file written as ``.<name>.tmp-<host>-<pid>`` beside it and renamed into place by
    `commit`: readers never see half a file, and an error or a kill never truncates an
    existing one. Temporary files of killed runs on this host are removed when one starts.

    Raises:
        DeepergatError: the folder cannot be written (named with the user's path).
    """

    def __init__(self, path: str) -> None:
        import os
        import socket

        from deepergat.errors import environment_error

        self.path = Path(path)
        host = socket.gethostname().replace("-", "_") or "host"
        self._prefix = f".{self.path.name}.tmp-{host}-"
        self.tmp = self.path.with_name(f"{self._prefix}{os.getpid()}")
        self._clear_stale()
        try:
            self.handle = open(self.tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            err = environment_error(e, path=self.path)
            if err is not None:
                raise err from None
            raise DeepergatError(f"--csv {self.path}: cannot write it ({e.strerror or e}); "
                                 "choose a file in a folder that exists") from None

    def _clear_stale(self) -> None:
        import contextlib
        import os

        folder = self.path.parent
        with contextlib.suppress(OSError):
            for entry in os.listdir(folder):
                pid = entry[len(self._prefix):]
                if not (entry.startswith(self._prefix) and pid.isdigit()):
                    continue
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:  # its writer was killed
                    (folder / entry).unlink(missing_ok=True)
                except OSError:  # alive (another user's)
                    pass

    def commit(self) -> None:
        """Close the temporary file and rename it to the final name."""
        import os

        from deepergat.errors import environment_error

        try:
            self.handle.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            err = environment_error(e, path=self.path)
            if err is not None:
                raise err from None
            raise

    def discard(self) -> None:
        """Close and remove the temporary file (nothing after `commit`)."""
        import contextlib

        with contextlib.suppress(OSError):
            self.handle.close()
        self.tmp.unlink(missing_ok=True)
