"""``deepergat compile``: a checkpoint compiled for this machine into this user's private cache."""

from __future__ import annotations

import click


@click.command(
    name="compile",
    epilog="""
\b
Compiles the checkpoint with AOTInductor on this machine (it needs torch and a C++ compiler; a
minute or two), checks the compiled model against the checkpoint by the export's parity rule and
keeps it in a cache only you can write ($DEEPERGAT_COMPILED_CACHE, else
~/.cache/deepergat/compiled), keyed by the checkpoint's sha256, the torch and deepergat versions
and the CPU. From then on, on this kind of CPU, every .onnx file exported from that checkpoint
(a bundled model's included) runs compiled: deepergat-screen, predict and evaluate pick it up
without a flag (about 1.25x OpenVINO's rate; DEEPERGAT_ONNX_RUNTIME=openvino|onnxruntime chooses
another runtime, =compiled insists). Nothing is compiled from a file someone else wrote: the
native code is what your own compiler built from the weights. Compile once per node type
(a shared home directory holds one entry per CPU).
\b
Examples:
  deepergat compile
  deepergat compile perovskite-heat
  deepergat compile runs/heat/best.ckpt --check-data test.h5
"""
)
@click.argument("model", required=False)
@click.option("--check-data", type=click.Path(dir_okay=False),
              help="Structure store (.h5) to check parity on [default: 1024 generated structures].")
@click.option("--force", is_flag=True, help="Compile again even when this machine has it.")
def compile_command(model: str | None, *, check_data: str | None, force: bool) -> None:
    """Compile MODEL (a .ckpt, run folder or bundled name; default: the bundled
    perovskite-heat-single) for this machine's CPU."""
    from deepergat.export.compile import compile_model
    from deepergat.screening.model import DEFAULT_MODEL

    entry, compiled = compile_model(
        model or DEFAULT_MODEL, check_data=check_data, force=force,
        progress=lambda message: click.echo(message, err=True),
    )
    record = entry.record
    if compiled:
        click.echo(f"compiled {record['source']} for this CPU in {record['seconds']:.0f} s: "
                   f"{entry.package}")
    else:
        click.echo(f"already compiled for this CPU on {record['compiled_at']}: {entry.package} "
                   "(--force compiles again)")
    click.echo(f"parity with the checkpoint: {record['parity']}")
    click.echo("its .onnx files now run compiled on this machine (deepergat-screen, predict, "
               "evaluate)")
