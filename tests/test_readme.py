"""The README is the front door: short, and every `age` command it shows is one the CLI accepts as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from agecli.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def shown_commands(text: str) -> list[str]:
    """Every line of a ```bash block that runs `age`, without its trailing comment."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("age "):
                commands.append(line)
    return commands


def parse(command: str):
    """Parse a command line as `age` would, down to its subcommand, without running it."""
    command_, args = typer.main.get_command(app), shlex.split(command)[1:]
    ctx = command_.context_class(command_, info_name="age")
    while hasattr(command_, "get_command"):  # a group (Typer vendors its own click, so no isinstance)
        name, args = args[0], args[1:]
        command_ = command_.get_command(ctx, name)
        assert command_ is not None, f"no command {name!r}"
        ctx = command_.context_class(command_, info_name=name, parent=ctx)
    return command_.make_context(ctx.info_name, args, parent=ctx.parent)


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert "python -m pytest -q" in text and 'pip install -e ".[test]"' in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page


def test_the_readme_shows_the_users_own_commands():
    commands = shown_commands(README.read_text(encoding="utf-8"))
    for own in ("age prepare megaage --root DIR", "age train ssrnet --preset paper", "age lopo fgnet --subjects all",
                "age predict photo.jpg --draw"):
        assert own in commands


@pytest.mark.parametrize("command", shown_commands(README.read_text(encoding="utf-8")))
def test_every_readme_command_parses(command, capsys):
    parse(command)
    assert "deprecated" not in capsys.readouterr().err  # the README never shows an old spelling


def test_a_wrong_flag_does_not_parse():
    with pytest.raises(Exception, match="No such option: --no-such-flag"):
        parse("age predict photo.jpg --no-such-flag")
    with pytest.raises(AssertionError, match="no command 'predikt'"):
        parse("age predikt photo.jpg")
