"""``deepergat evaluate``: a model's errors on a labelled store."""

from __future__ import annotations

import click

from .options import (
    DEVICE_HELP,
    TRUST_HELP,
    describe_model_argument,
    device_option,
)


@click.command()
@click.argument("model")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Labelled store.")
@click.option("--target", required=True, help="Target to evaluate.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Parity plot PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Metrics JSON.")
@click.option("--batch-size", type=int, default=100, show_default=True)
@device_option(DEVICE_HELP)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@describe_model_argument
def evaluate(model: str, *, data: str, target: str, plot: str | None, json_path: str | None,
             batch_size: int, device: str, trust: bool) -> None:
    """MAE, RMSE and R² of MODEL on a labelled store. MODEL: {model}.

    \b
    Examples:
      deepergat evaluate runs/heat/best.ckpt --data test.h5 --target heat_ref --plot parity.png
      deepergat evaluate exported/model.onnx --data test.h5 --target heat_ref
      deepergat evaluate perovskite-heat --data test.h5 --target heat_ref --json metrics.json
    """
    import json

    from deepergat.api.evaluate import evaluate as run_evaluate
    from deepergat.api.evaluate import parity_plot

    result = run_evaluate(model, data, target, batch_size=batch_size, device=device, trust=trust)
    u = f" {result.units}" if result.units else ""
    click.echo(f"{result.target}: MAE {result.mae:.5g}{u}  RMSE {result.rmse:.5g}{u}  "
               f"R² {result.r2:.4f}  n {result.n}")
    if result.uncertainty:
        m = result.uncertainty
        rho = m["spearman_std_abs_error"]
        click.echo(f"  spread: |error| ≤ σ for {m['coverage_1sigma']:.3f}, ≤ 2σ for "
                   f"{m['coverage_2sigma']:.3f}; Spearman(σ, |error|) "
                   f"{'-' if rho is None else f'{rho:.3f}'}; mean σ {m['mean_std']:.4g}{u}")
    if result.skipped:
        click.echo(f"left out {result.skipped} structures (failed checks or no label)", err=True)
    if plot:
        parity_plot(result, plot)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result.as_json(), f, indent=2)
