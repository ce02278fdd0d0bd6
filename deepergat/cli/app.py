"""The ``deepergat`` command line: one click group, one module per subcommand.

Adding a subcommand: write ``deepergat/cli/<name>.py`` with a ``@click.command`` that imports
what it needs *inside* the function (no module here may import torch, pymatgen or ASE at import
time, so that ``deepergat --help`` and light subcommands start fast), and add it below.
"""

from __future__ import annotations

import click

from deepergat._version import __version__

from . import (
    compile,
    evaluate,
    export,
    extract,
    info,
    models,
    pack,
    predict,
    report,
    screen,
    subset,
    train,
)
from .base import DeepergatGroup, setup_logging

__all__ = ["main"]

_EXAMPLES = """
\b
Examples:
  deepergat pack structures/ -o train.h5
  deepergat pack perov5.csv --target heat_ref:eV -o perov5.h5
  deepergat pack pt_clusters/ --target-name total_energy:eV -o pt.h5
  deepergat pack 'runs/*/CONTCAR' --id-from path --skip-bad -o relaxed.h5
  deepergat info train.h5 --json
"""


@click.group(
    cls=DeepergatGroup,
    epilog=_EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="deepergat")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """DeeperGATGNN: pack crystal structures, train, export and screen them on clusters."""
    setup_logging(verbose)



def _verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:  # after the subcommand as before it: `deepergat evaluate … -v`
        setup_logging(value)


for _command in (pack.pack, info.info, train.train, screen.screen, evaluate.evaluate,
                 predict.predict, models.models, report.report, extract.extract, export.export,
                 subset.subset, compile.compile_command):
    if not any("--verbose" in getattr(p, "opts", ()) for p in _command.params):
        _command.params.append(click.Option(
            ["-v", "--verbose"], count=True, expose_value=False, callback=_verbose,
            is_eager=True, help="More log output (-v info, -vv debug)."))
    main.add_command(_command)
