"""``deepergat models``: the bundled models and their cards."""

from __future__ import annotations

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def models(as_json: bool) -> None:
    """List the bundled models with their cards (a bundled name predicts with its model.onnx;
    `deepergat export` starts from its checkpoint, ensemble.ckpt or best.ckpt).

    \b
    Examples:
      deepergat models
      deepergat models --json | jq 'keys'
      deepergat predict perovskite-heat some.cif      # a name listed here
    """
    import json

    from deepergat.export.resolve import bundled_checkpoint, bundled_dir, bundled_models

    found = {name: bundled_dir() / name for name in bundled_models()}
    ckpts = {name: bundled_checkpoint(d) for name, d in found.items()}
    if as_json:
        click.echo(json.dumps({name: {"path": str(ckpts[name]) if ckpts[name] else None,
                                      "onnx": str(d / "model.onnx"),
                                      "card": (d / "card.md").read_text()
                                      if (d / "card.md").is_file() else ""}
                               for name, d in found.items()}, indent=2))
        return
    if not found:
        click.echo("no bundled models")
        return
    for name, folder in found.items():
        click.echo(f"== {name} ({folder / 'model.onnx'}; checkpoint {ckpts[name]})")
        card = folder / "card.md"
        click.echo(card.read_text().rstrip() if card.is_file() else "(no card)")
        click.echo("")
