"""The `age` command. This package only parses arguments and renders results; the work is in the library."""

from __future__ import annotations

import os
import sys

from agecli.errors import AgeCliError


def main() -> None:
    """Entry point: known errors become one line on stderr and exit 1 (AGECLI_DEBUG=1 shows the traceback)."""
    from agecli.cli.app import app
    from agecli.utils import keep_freed_memory

    keep_freed_memory()  # reuse activation buffers instead of page-faulting them in every step
    try:
        app()
    except AgeCliError as err:
        if os.environ.get("AGECLI_DEBUG"):
            raise
        message = " ".join(str(err).split())  # always exactly one line
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
