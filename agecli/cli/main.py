"""The `age` entry point: run the app, and turn every known error into one line on stderr."""

from __future__ import annotations

import os
import signal
import sys

from agecli.errors import AgeCliError


def main() -> None:
    """Entry point: known errors become one line on stderr and exit 1 (AGECLI_DEBUG=1 shows the traceback)."""
    from agecli.cli.app import app
    from agecli.cli.train import legacy_resume_argv
    from agecli.system.device import keep_freed_memory

    keep_freed_memory()  # reuse activation buffers instead of page-faulting them in every step
    try:  # SIGTERM cleans up as Ctrl-C does (an unfinished run's folder, temporaries)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # called from another thread by an embedding program: its signals are its own
        previous = None
    try:
        sys.argv[1:] = legacy_resume_argv(sys.argv[1:])  # before parsing: --resume is a switch now
        app()
    except AgeCliError as err:
        if os.environ.get("AGECLI_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def one_line(err: BaseException) -> str:
    """The message on one line, control characters made visible; the exception's type when the message is empty
    or cannot be rendered."""
    from agecli.report.progress import terminal_text

    try:
        message = terminal_text(" ".join(str(err).split()))
    except Exception:  # a broken __str__ must not turn one line into a traceback
        message = ""
    return message or type(err).__name__
