"""`age export CHECKPOINT`: an ONNX or TorchScript file for serving, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import deprecated, err_console, option, out_console, output_file
from agecli.report.progress import markup_text


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.pt) made by age train or age import, or a shipped model's name (default, ensemble, lite0).")],
    format: Annotated[str, typer.Option("--format", help="onnx (runs with onnxruntime, no torch) or torchscript.")] = "onnx",
    output: Annotated[Optional[Path], option("--output", "-o", default="beside the checkpoint: best.onnx or best.torchscript.pt")] = None,
    parity_images: Annotated[Optional[list[str]], typer.Option("--parity-images", help="Face images to check parity on. \\[default: 32 seeded synthetic faces]")] = None,
    out: Annotated[Optional[Path], deprecated("--out", "--output")] = None,
) -> None:
    """Export a checkpoint for serving, then check that the exported model gives PyTorch's ages.

    Input: uint8 RGB face crops (N, S, S, 3), N free, as cut by agecli.data.crops.crop_face.

    The model does the centre crop, channel order and normalisation itself.

    Outputs: "age" (N,) in years and, for distribution models, "spread" (N,).

    Metadata ("agecli" JSON): input size, margin, mean/std, channel order, age range, model, version.

    Nothing is written if any age differs from PyTorch's by more than 0.01 years.
    """
    from agecli.modelio.export import PARITY_TOLERANCE
    from agecli.modelio.export import export as run_export

    result = run_export(checkpoint, format, output_file(output, out), parity_images)
    meta = result.metadata
    err_console.print(f"exported [bold]{meta['architecture']}[/] to {format}: input {meta['input']['dtype']} "
                      f"{meta['input']['layout']} {meta['input']['channels']} {meta['input']['size']}px, "
                      f"outputs {', '.join(meta['outputs'])}")
    out_console.print(f"parity: max |Δ age| {result.max_abs_diff:.2e} years on {result.parity_images} "
                      f"{result.parity_source} (limit {PARITY_TOLERANCE}) [green]passed[/]")
    err_console.print(f"Results saved to [bold]{markup_text(result.path)}[/]")
