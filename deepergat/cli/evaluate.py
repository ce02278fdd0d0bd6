"""``deepergat evaluate``: a model's errors on a labelled store."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from deepergat.api.metrics import DEFAULT_TOP_FRACTIONS, GOALS
from deepergat.errors import SettingError

from .options import (
    DEVICE_HELP,
    TRUST_HELP,
    describe_model_argument,
    device_option,
    rank_k_option,
)

if TYPE_CHECKING:
    from deepergat.api.evaluate import EvaluationResult
    from deepergat.api.metrics import ScreeningMetrics

#: The options that only mean something with --goal.
_SCREENING_OPTIONS = ("top_fractions", "hit_threshold", "rank_k")


@click.command()
@click.argument("model")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Labelled store.")
@click.option("--target", required=True, help="Target to evaluate.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Parity plot PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Metrics JSON.")
@click.option("--batch-size", type=int, default=100, show_default=True)
@click.option("--goal", type=click.Choice(GOALS),
              help="Also score the top-K lists of a screen for this end of the target: "
                   "precision, recall and DAF.")
@click.option("--top-fraction", "top_fractions", type=float, multiple=True,
              default=DEFAULT_TOP_FRACTIONS, metavar="F",
              help="With --goal: K of a list as a share of the structures; repeatable "
                   f"[default: {', '.join(f'{f:g}' for f in DEFAULT_TOP_FRACTIONS)}].")
@click.option("--hit-threshold", type=float, metavar="X",
              help="With --goal: a hit is a structure whose true value is ≤ X (min) or ≥ X "
                   "(max) [default: one in the true top K].")
@rank_k_option("With --goal and an ensemble: the lists are also ranked by mean + k·σ (min) "
               "or mean − k·σ (max).")
@device_option(DEVICE_HELP)
@click.option("--trust", is_flag=True, help=TRUST_HELP)
@describe_model_argument
def evaluate(model: str, *, data: str, target: str, plot: str | None, json_path: str | None,
             batch_size: int, goal: str | None, top_fractions: tuple[float, ...],
             hit_threshold: float | None, rank_k: float, device: str, trust: bool) -> None:
    """MAE, RMSE and R² of MODEL on a labelled store. MODEL: {model}.

    With --goal, also how good the short list is: for the top K by prediction (and, for an
    ensemble, by its confident bound), the share of real hits (precision), the share of all
    hits found (recall) and the DAF (precision / share of hits in the set).

    \b
    Examples:
      deepergat evaluate runs/heat/best.ckpt --data test.h5 --target heat_ref --plot parity.png
      deepergat evaluate exported/model.onnx --data test.h5 --target heat_ref
      deepergat evaluate perovskite-heat --data test.h5 --target heat_ref --json metrics.json
      deepergat evaluate perovskite-heat --data test.h5 --target heat_ref --goal min
      deepergat evaluate perovskite-heat --data test.h5 --target heat_ref --goal min \\
          --top-fraction 0.02 --hit-threshold 0.5
    """
    import json

    from deepergat.api.evaluate import evaluate as run_evaluate
    from deepergat.api.evaluate import parity_plot

    ctx = click.get_current_context()
    if goal is None:
        given = [name for name in _SCREENING_OPTIONS
                 if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
        if given:
            raise SettingError(f"{{{given[0]}}} needs {{goal}} min or max")
    result = run_evaluate(model, data, target, batch_size=batch_size, device=device, trust=trust,
                          goal=goal, top_fractions=top_fractions, hit_threshold=hit_threshold,
                          rank_k=rank_k)
    u = f" {result.units}" if result.units else ""
    click.echo(f"{result.target}: MAE {result.mae:.5g}{u}  RMSE {result.rmse:.5g}{u}  "
               f"R² {result.r2:.4f}  n {result.n}")
    if result.uncertainty:
        m = result.uncertainty
        rho = m["spearman_std_abs_error"]
        click.echo(f"  spread: |error| ≤ σ for {m['coverage_1sigma']:.3f}, ≤ 2σ for "
                   f"{m['coverage_2sigma']:.3f}; Spearman(σ, |error|) "
                   f"{'-' if rho is None else f'{rho:.3f}'}; mean σ {m['mean_std']:.4g}{u}")
    if result.screening is not None:
        for line in _screening_lines(result, result.screening):
            click.echo(line)
    if result.skipped:
        click.echo(f"left out {result.skipped} structures (failed checks or no label)", err=True)
    if plot:
        parity_plot(result, plot)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result.as_json(), f, indent=2)


def _screening_lines(result: EvaluationResult, m: ScreeningMetrics) -> list[str]:
    """The screening metrics, one line per ranking and list."""
    def num(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    u = f" {result.units}" if result.units else ""
    if m.hit_threshold is None:
        hit = "in the true top K"
    else:
        first = next(iter(m.rankings.values()))[0]
        hit = (f"true {result.target} {'≤' if m.goal == 'min' else '≥'} "
               f"{m.hit_threshold:g}{u}: {first.true_hits} of {m.n}, prevalence "
               f"{first.prevalence:.3g}")
    lines = [f"  top-K lists (goal {m.goal}; a hit is {hit}):"]
    for name, rows in m.rankings.items():
        by = name if name == "mean" else (
            f"{name} (mean {'+' if name == 'upper' else '−'} {m.rank_k:g}σ)")
        lines.extend(
            f"    top {100 * row.fraction:g} % (K {row.top_k} of {m.n}) by {by}: "
            f"precision {num(row.precision, '.3f')}, recall {num(row.recall, '.3f')}, "
            f"DAF {num(row.daf, '.3g')} ({row.hits} hit{'' if row.hits == 1 else 's'})"
            for row in rows
        )
    return lines
