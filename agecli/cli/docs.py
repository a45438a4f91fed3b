"""docs/cli.md, generated from the Typer app: every command, its arguments and visible options with their
defaults and help. Hidden (deprecated) options are left out. Regenerate with `python scripts/cli_docs.py`;
tests/test_cli_vocabulary.py fails when the committed file is stale."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

VALUE_NAMES = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH"}
EXAMPLE_PREFIXES = ("age ", "curl ")
DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

HEADER = """# `age` command reference

Every command with its arguments and options, generated from the CLI itself by `python scripts/cli_docs.py`
(do not edit by hand: a test fails when this file and the CLI disagree). `age COMMAND --help` prints the same.
Options that several commands share mean the same thing and have the same help everywhere; what changed in
this release is in [cli-changes.md](cli-changes.md).
"""


def cli_markdown() -> str:
    """The whole reference as markdown; the same text for the same CLI, whatever the terminal."""
    from agecli.cli.app import app

    root = typer.main.get_command(app)
    commands = list(_walk(root, ("age",)))
    lines = [HEADER, "## Commands", ""]
    lines += [f"- [`{' '.join(path)}`](#{_anchor(path)}): {_first_line(cmd)}" for path, cmd in commands]
    for path, command in commands:
        lines += ["", *_command_section(path, command)]
    return "\n".join(lines).rstrip() + "\n"


def write_cli_docs(path: Path = DOC_PATH) -> Path:
    path.write_text(cli_markdown(), encoding="utf-8")
    return path


def _walk(command, path: tuple[str, ...]):
    """(path, command) of every leaf command, in the order the app registers them. Typer ships its own
    click, so commands, groups and parameters are told apart by their attributes, not by class."""
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path, command
        return
    for name, sub in subcommands.items():
        if not sub.hidden:
            yield from _walk(sub, (*path, name))


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def _text(text: str | None) -> str:
    """Help as written, without rich's escapes ('\\[default: ...]'); example command lines as code."""
    lines = inspect.cleandoc(text or "").replace("\\[", "[").split("\n")
    return "\n".join(f"`{line}`" if line.startswith(EXAMPLE_PREFIXES) else line for line in lines)


def _first_line(command) -> str:
    return _text(command.help).split("\n\n")[0].replace("\n", " ")


def _command_section(path: tuple[str, ...], command) -> list[str]:
    arguments = [p for p in command.params if p.param_type_name == "argument" and not getattr(p, "hidden", False)]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    usage = " ".join([*path, "[OPTIONS]", *(_argument_usage(a) for a in arguments)])
    lines = [f"## {' '.join(path)}", "", f"`{usage}`", "", _text(command.help), ""]
    if arguments:
        lines += ["| argument | required | description |", "|---|---|---|"]
        lines += [f"| `{_argument_name(a)}` | {'yes' if a.required else 'no'} | {_cell(_text(a.help))} |"
                  for a in arguments]
        lines.append("")
    lines += ["| option | default | description |", "|---|---|---|"]
    lines += [f"| `{_option_flags(o)}` | {_cell(_default(o))} | {_cell(_text(o.help))} |" for o in options]
    lines.append("| `--help`, `-h` | | Show the help and exit. |")
    return lines


def _argument_name(argument) -> str:
    return argument.metavar or argument.name.upper()


def _argument_usage(argument) -> str:
    name = _argument_name(argument) + ("..." if argument.nargs == -1 else "")
    return name if argument.required else f"[{name}]"


def _option_flags(option) -> str:
    flags = ", ".join([*option.opts, *option.secondary_opts])
    if option.is_flag:
        return flags
    return f"{flags} {option.metavar or _value_name(option)}" + (" (repeatable)" if option.multiple else "")


def _value_name(option) -> str:
    """INTEGER, NUMBER, TEXT or PATH, from the parameter's annotation (list[X]: X)."""
    annotation = option.type_descriptor.annotation
    item = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
    return VALUE_NAMES.get(item, "VALUE")


def _default(option) -> str:
    """What leaving the option out does: the command's own words where it gives them."""
    if option.required:
        text = "required"
    elif isinstance(option.show_default, str):
        text = option.show_default
    elif option.is_flag and not option.secondary_opts:
        text = "on" if option.default else "off"
    elif option.default is None or option.default == [] or option.show_default is False:
        text = ""
    elif isinstance(option.default, bool):
        text = option.opts[0] if option.default else option.secondary_opts[0]
    else:
        text = str(option.default)
    if option.envvar:
        text = f"{text}; env {option.envvar}" if text else f"env {option.envvar}"
    return text


def _cell(text: str) -> str:
    """One table cell: paragraphs joined on one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
