"""``deepergat info``: what a store, predictions file, checkpoint or exported model holds."""

from __future__ import annotations

import click


@click.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info(file: str, *, as_json: bool) -> None:
    """Describe a deepergat file (a structure store or predictions file), recognised by its content.

    \b
    Examples:
      deepergat info train.h5
      deepergat info train.h5 --json | jq .targets
      deepergat info candidates.predictions.h5
    """
    import json

    from deepergat.api.info import describe, format_text

    description = describe(file)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        click.echo(format_text(description, file))
