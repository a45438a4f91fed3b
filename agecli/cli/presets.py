"""`age presets`: list the shipped presets, or print one."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from agecli.cli.common import out_console
from agecli.config import list_presets, preset_summary, preset_text


def presets(
    show: Annotated[Optional[str], typer.Option("--show", metavar="NAME", help="Print this preset's YAML, comments included (e.g. ssrnet/paper).")] = None,
) -> None:
    """List the shipped presets; copy one with `age presets --show NAME > my.yaml`."""
    if show is not None:
        typer.echo(preset_text(show), nl=False)  # plain text: YAML comments may hold [brackets] rich would eat
        return
    table = Table(title="presets (age train MODEL --preset NAME; --show NAME prints one)")
    table.add_column("name", no_wrap=True)
    table.add_column("what it is")
    for name in list_presets():
        table.add_row(name, preset_summary(name))
    out_console.print(table)
