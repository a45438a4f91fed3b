"""`age serve`: the model behind an HTTP API and a web page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import DeviceOpt, err_console


def serve(
    model: Annotated[Optional[Path], typer.Option("--model", help="A checkpoint (.pt), an `age export` file (.onnx, .torchscript.pt) or a shipped model's name (lite0). \\[default: the built-in model]")] = None,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: default, retinaface, yunet, haar; none for photos that are already face crops.")] = "default",
    host: Annotated[str, typer.Option("--host", help="Address to listen on. The default is reachable from this machine only; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", help="Server processes, each with its own copy of the model.")] = 1,
    token: Annotated[Optional[str], typer.Option("--token", envvar="AGECLI_SERVE_TOKEN", show_envvar=True, help="Require 'Authorization: Bearer TOKEN' on every route but /health and the page, which asks for it (the environment variable keeps the token out of the process list).")] = None,
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="Largest upload, e.g. 20MB, 500kB, 2MiB; larger ones get 413.")] = "20MB",
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="Largest photo in megapixels, checked from its header before decoding (at most 50).")] = 50.0,
    device: DeviceOpt = "auto",
) -> None:
    """Serve the model: an HTTP API (POST /v1/predict) and a page at / to drop photos on.

    curl -F image=@photo.jpg http://127.0.0.1:8000/v1/predict

    The model is loaded once and shared by every request. Uploads are decoded in memory, never saved.
    """
    from agecli.serve import require_packages

    require_packages()
    from agecli.serve.server import serve as run_server
    from agecli.serve.settings import ServeSettings, max_pixels_from, parse_size

    settings = ServeSettings(model=str(model) if model else None, detector=detector, device=device, token=token or None,
                             max_bytes=parse_size(max_bytes), max_pixels=max_pixels_from(max_megapixels))
    run_server(settings, host=host, port=port, workers=workers, say=lambda text: err_console.print(text, markup=False, soft_wrap=True))
