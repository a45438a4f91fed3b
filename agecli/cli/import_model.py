"""`age import ssrnet-port`: bring a model trained with the public SSR-Net PyTorch port into agecli."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import deprecated, err_console, option, output_file
from agecli.report.progress import markup_text

app = typer.Typer(help="Import checkpoints made by other code.", no_args_is_help=True)


@app.command("ssrnet-port")
def ssrnet_port(
    checkpoint: Annotated[Path, typer.Argument(help="The port's .pth (a dict with 'state_dict', or a bare state dict).")],
    output: Annotated[Optional[Path], option("--output", "-o", default="ssrnet_port.pt")] = None,
    out: Annotated[Optional[Path], deprecated("--out", "--output")] = None,
) -> None:
    """Load the port's weights (weights-only), map them onto agecli's SSR-Net and save a normal checkpoint.

    The result records the port's preprocessing (BGR order, ImageNet mean/std), so `age eval`, `age predict`
    and `age export` use it like any other checkpoint.
    """
    from agecli.modelio.ssrnet_port import import_ssrnet_port

    summary = import_ssrnet_port(checkpoint, output_file(output, out) or Path("ssrnet_port.pt"))
    err_console.print(f"imported {summary['tensors']} tensors ({summary['params']:,} parameters, "
                      f"epoch {summary['epoch']}); preprocessing: BGR, ImageNet mean/std, 64x64")
    err_console.print(f"Results saved to [bold]{markup_text(summary['out'])}[/]")
