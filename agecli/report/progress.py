"""Progress reporting for long work. The library calls a Reporter; the CLI passes a rich one."""

from __future__ import annotations

import os
import re

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def terminal_text(value: object) -> str:
    """A value as a terminal may show it: control characters as \\xNN (an ESC byte in a file name must not
    recolour the terminal), bytes that are not UTF-8 as \\xNN too."""
    pathlike = isinstance(value, (str, bytes, os.PathLike))
    text = os.fsencode(value).decode("utf-8", "backslashreplace") if pathlike else str(value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def markup_text(value: object) -> str:
    """A value to put inside rich markup: terminal_text with its brackets escaped, so `[/]` or `[bold]` in a
    path is shown as written instead of failing or styling the line."""
    return escape(terminal_text(value))


class Reporter:
    """Silent by default; subclasses show what they like."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...
    def batch(self, done: int, total: int, loss: float) -> None: ...
    def end_epoch(self, row: dict, improved: bool) -> None: ...
    def message(self, text: str) -> None: ...


NullReporter = Reporter


def progress_bar(console: Console | None = None, transient: bool = False) -> Progress:
    """The one progress style used everywhere: description, bar, count, elapsed and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console or Console(stderr=True), transient=transient)


class RichReporter(Reporter):
    """An epoch bar with loss and ETA, and one table row per finished epoch (on stderr; stdout stays data)."""

    def __init__(self, console: Console | None = None, prefix: str = ""):
        self.console = console or Console(stderr=True)
        self.prefix = prefix
        self.progress = progress_bar(self.console)
        self.overall = None
        self.task = None
        self.header_shown = False

    def start_epoch(self, epoch, epochs, batches):
        if self.overall is None:
            self.progress.start()
            self.overall = self.progress.add_task(f"{self.prefix}epochs", total=epochs, completed=epoch - 1, info="")
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"{self.prefix}epoch {epoch}/{epochs}", total=batches, info="")

    def batch(self, done, total, loss):
        self.progress.update(self.task, completed=done, info=f"loss {loss:.4f}")

    def end_epoch(self, row, improved):
        self.progress.advance(self.overall)
        table = Table(show_header=not self.header_shown, box=None, pad_edge=False)
        for name, width in (("epoch", 6), ("train_loss", 11), ("val_mae", 8), ("val_ca3", 8), ("val_ca5", 8),
                            ("lr", 9), ("s", 6), ("", 4)):
            table.add_column(name, width=width, justify="right")
        table.add_row(str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['val_mae']:.3f}", f"{row['val_ca3']:.3f}",
                      f"{row['val_ca5']:.3f}", f"{row['lr']:.2e}", f"{row['seconds']:.1f}", "*" if improved else "")
        self.header_shown = True
        self.progress.console.print(table)
        if row["epoch"] == self.progress.tasks[0].total:
            self.close()

    def message(self, text):
        self.progress.console.print(terminal_text(text), markup=False, highlight=False)

    def close(self):
        if self.overall is not None:
            self.progress.stop()
            self.overall = None
            self.task = None


class WorkProgress:
    """Progress of a stream of photos or frames; silent by default (library callers)."""

    def start(self, total: int | None, unit: str = "photos", name: str = "predict") -> None: ...
    def advance(self, faces: int = 0) -> None: ...
    def stop(self) -> None: ...


class RichWorkProgress(WorkProgress):
    """A rich bar on stderr: done / total, photos (or frames) per second, faces found, elapsed and ETA."""

    def __init__(self, console: Console | None = None, min_total: int = 2):
        self.console, self.min_total = console or Console(stderr=True), min_total
        self.bar = None

    def start(self, total, unit="photos", name="predict"):
        self.stop()
        self.unit, self.faces, self.done = unit, 0, 0
        self.bar = progress_bar(self.console, transient=True)
        self.task = self.bar.add_task(name, total=total, info="", visible=total is None or total >= self.min_total)
        self.bar.start()

    def advance(self, faces=0):
        self.faces += faces
        self.done += 1
        elapsed = self.bar.tasks[0].elapsed or 0.0
        rate = f"{self.done / elapsed:.1f} {self.unit}/s · " if elapsed > 0 else ""
        self.bar.update(self.task, advance=1, info=f"{rate}{self.faces} faces")

    def stop(self):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
