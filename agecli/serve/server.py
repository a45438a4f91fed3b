"""Starting the server: settings, the checks made before binding, and uvicorn.

Why FastAPI on uvicorn: Starlette's ASGI core with typed routes, OpenAPI docs generated from the code
and an in-process test client; uvicorn is the ASGI server it is most often deployed with, and can run
several worker processes.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Callable, Optional

from agecli.errors import AgeCliError
from agecli.serve.app import build_app
from agecli.serve.settings import ServeSettings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_warning(host: str, token: Optional[str]) -> Optional[str]:
    if is_loopback(host) or token:
        return None
    return (f"warning: listening on {host} without --token: anyone who can reach this port can use the model "
            "(set --token or AGECLI_SERVE_TOKEN, or keep the default --host 127.0.0.1)")


def check_can_listen(host: str, port: int) -> None:
    """A one-line error now, rather than uvicorn's log after the model has loaded."""
    if not 1 <= port <= 65535:
        raise AgeCliError(f"--port {port}: expected 1 to 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise AgeCliError(f"--host {host}: cannot resolve it ({err.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise AgeCliError(f"cannot listen on {host}:{port} ({err.strerror or err})") from None


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info", say: Callable[[str], None] = print) -> None:
    """Run until interrupted. Workers are processes, each with its own copy of the model."""
    import uvicorn

    if workers < 1:
        raise AgeCliError(f"--workers {workers}: expected 1 or more")
    token = settings.token if settings.token is not None else os.environ.get("AGECLI_SERVE_TOKEN")
    if token is not None and not token.strip():  # an empty token must not mean "no token" silently
        raise AgeCliError("--token / AGECLI_SERVE_TOKEN: is empty; give a token, or unset it to serve without one")
    check_can_listen(host, port)
    warning = exposure_warning(host, settings.token)
    if warning:
        say(warning)
    app = build_app(settings)  # also when workers > 1: a bad model fails here, once, in one line
    card, shown = app.state.service.card, f"[{host}]" if ":" in host else host
    say(f"serving model {card['name']} ({card['backend']}, detector {card['detector']}) on http://{shown}:{port}/ "
        f"(page) and /docs (API), {workers} worker process{'es' if workers > 1 else ''}; Ctrl+C stops")
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    del app
    os.environ[ServeSettings.ENV] = settings.to_json()  # each worker process builds its app from this
    uvicorn.run("agecli.serve.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
