"""Every command and subcommand answers --help: walked from the app itself, so a new command is covered."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from agecli.cli.app import app


def command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path under `command` (itself included), e.g. (), ('train',), ('import', 'ssrnet-port').
    A group is anything with subcommands (typer ships its own click, so no isinstance check)."""
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += command_paths(sub, path + (name,))
    return paths


PATHS = command_paths(typer.main.get_command(app))


def test_the_walk_finds_the_commands_and_the_nested_group():
    names = {" ".join(p) for p in PATHS}
    assert {"", "train", "eval", "predict", "presets", "import", "import ssrnet-port"} <= names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "age")
def test_help_exits_zero_and_describes_the_command(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output
