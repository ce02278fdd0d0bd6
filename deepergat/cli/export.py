"""``deepergat export``: a checkpoint → parity-checked ONNX, TorchScript and torch.export files."""

from __future__ import annotations

import click

from deepergat.contract import MODEL_FORMATS


@click.command(
    epilog="""
\b
Writes OUT_DIR/model.onnx (ONNX Runtime, CPU or CUDA), OUT_DIR/model.pt (TorchScript, traced;
what C++ hosts load) and OUT_DIR/model.pt2 (torch.export); --format aoti adds
OUT_DIR/model.aoti.pt2, the torch.export program compiled by AOTInductor: the fastest on a CPU,
but compiled for this machine's CPU (export on the node type that runs it) and it needs a C++
compiler. Each carries the model's metadata (graph settings, targets, elements, source
checkpoint sha256) and the figures of its own parity check: the checkpoint in eager PyTorch
against the written file on the --check-data structures (else 1024 generated ones), a batch of
2048 and size-1 edge cases, by docs/design.md's rule |y1 - y2| <= 1e-5 std + 4 ulp32(|y1|). A failed
check leaves no file of this run behind and exits with code 2.
\b
Examples:
  deepergat export runs/heat/best.ckpt --format all -o exported/
  deepergat export perovskite-heat --format onnx -o exported/ --check-data test.h5
  deepergat info exported/model.onnx
"""
)
@click.argument("model")
@click.option(
    "--format",
    "formats",
    type=click.Choice([*MODEL_FORMATS, "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="File format to write; repeatable. all = "
         + ", ".join(name for name, f in MODEL_FORMATS.items() if f.in_all) + ".",
)
@click.option(
    "-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
    help="Folder for " + " / ".join(f.file for f in MODEL_FORMATS.values()) + " (created).",
)
@click.option(
    "--check-data", type=click.Path(dir_okay=False),
    help="Structure store (.h5) to check parity on [default: 1024 generated structures].",
)
@click.option("--opset", type=click.IntRange(min=18), default=None,
              help="ONNX opset [default: 18].")
def export(model: str, *, formats: tuple[str, ...], out_dir: str, check_data: str | None,
           opset: int | None) -> None:
    """Export MODEL (a .ckpt path or a bundled name) to parity-checked ONNX, TorchScript,
    torch.export (and AOTInductor) files."""
    from deepergat.export import export_model

    result = export_model(
        model, out_dir, formats=formats, check_data=check_data, opset=opset,
        progress=lambda message: click.echo(message, err=True),
    )
    click.echo(f"exported {result.source} (checked on {result.check_source} + edge cases)")
    for f in result.files:
        p = f.parity
        diffs = ", ".join(f"{d:.3g}" for d in p.max_abs_diff)
        allowed = ", ".join(f"{a:.3g}" for a in p.max_allowed)
        click.echo(f"  {f.path!s:<40} {f.size / 1e6:6.2f} MB  parity max |Δ| {diffs} "
                   f"(allowed {allowed}) on {p.n_structures} structures  {f.seconds:.1f} s")
