"""The `age` entry point: run the app, and turn every known error into one line on stderr."""

from __future__ import annotations

import os
import sys

from agecli.errors import AgeCliError


def main() -> None:
    """Entry point: known errors become one line on stderr and exit 1 (AGECLI_DEBUG=1 shows the traceback)."""
    from agecli.cli.app import app
    from agecli.system.device import keep_freed_memory

    keep_freed_memory()  # reuse activation buffers instead of page-faulting them in every step
    try:
        app()
    except AgeCliError as err:
        if os.environ.get("AGECLI_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def one_line(err: BaseException) -> str:
    """The message on one line; the exception's type when the message is empty or cannot be rendered."""
    try:
        message = " ".join(str(err).split())
    except Exception:  # a broken __str__ must not turn one line into a traceback
        message = ""
    return message or type(err).__name__
