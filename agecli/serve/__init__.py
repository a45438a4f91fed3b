"""`age serve`: the model behind an HTTP API and a web page (FastAPI + uvicorn).

  upload.py   request bodies read into memory with a size limit; the `image` field of a multipart form
  service.py  the shared Predictor: bytes in, one JSON-ready dict per photo out; the model's card
  app.py      the routes, the token check, JSON errors, the page and its assets (static/); build_app
  settings.py what each server process needs, and the sizes given on the command line
  server.py   the checks before binding, and uvicorn

This module imports none of them, so `age` works without the `serve` extra and says what to install.
"""

from __future__ import annotations

import importlib.util

from agecli.errors import AgeCliError

REQUIRED = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require_packages() -> None:
    """One line naming the extra to install when the server's packages are missing."""
    missing = [package for module, package in REQUIRED.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise AgeCliError(f"age serve needs {', '.join(missing)}: pip install 'agecli[serve]'")
