"""`age serve`: the model behind an HTTP API and a web page."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from agecli.cli.common import DetectorOpt, DeviceOpt, ModelOpt, check_int, deprecated, err_console, note_deprecated
from agecli.report.progress import terminal_text


def serve(
    model: ModelOpt = None,
    detector: DetectorOpt = "default",
    host: Annotated[str, typer.Option("--host", help="Address to listen on. The default is reachable from this machine only; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    processes: Annotated[int, typer.Option("--processes", help="Server processes, each with its own copy of the model.")] = 1,
    token: Annotated[Optional[str], typer.Option("--token", envvar="AGECLI_SERVE_TOKEN", show_envvar=True, help="Require 'Authorization: Bearer TOKEN' on every route but /health and the page, which asks for it (the environment variable keeps the token out of the process list).")] = None,
    max_bytes: Annotated[str, typer.Option("--max-bytes", help="Largest upload, e.g. 20MB, 500kB, 2MiB; larger ones get 413.")] = "20MB",
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="Largest photo in megapixels, checked from its header before decoding (at most 50).")] = 50.0,
    device: DeviceOpt = "auto",
    workers: Annotated[Optional[int], deprecated("--workers", "--processes")] = None,
) -> None:
    """Serve the model: an HTTP API (POST /v1/predict) and a page at / to drop photos on.

    curl -F image=@photo.jpg http://127.0.0.1:8000/v1/predict

    The model is loaded once and shared by every request. Uploads are decoded in memory, never saved.
    """
    from agecli.serve import require_packages

    if workers is not None:  # --workers was processes here; everywhere else it is threads
        note_deprecated("age serve --workers", "--processes")
        processes = workers
    check_int("--processes", processes, 1)
    require_packages()
    from agecli.serve.server import serve as run_server
    from agecli.serve.settings import ServeSettings, max_pixels_from, parse_size

    settings = ServeSettings(model=str(model) if model else None, detector=detector, device=device, token=token,
                             max_bytes=parse_size(max_bytes), max_pixels=max_pixels_from(max_megapixels))
    run_server(settings, host=host, port=port, workers=processes, say=lambda text: err_console.print(terminal_text(text), markup=False, soft_wrap=True))
