"""`age presets`: list the shipped presets, or print one."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from agecli.cli.common import out_console
from agecli.config import list_presets, preset_text


def presets(
    show: Annotated[Optional[str], typer.Option("--show", metavar="NAME", help="Print this preset's YAML, comments included (e.g. ssrnet/paper).")] = None,
) -> None:
    """List the shipped presets; copy one with `age presets --show NAME > my.yaml`."""
    if show is not None:
        typer.echo(preset_text(show), nl=False)  # plain text: YAML comments may hold [brackets] rich would eat
        return
    for name in list_presets():
        out_console.print(name)
