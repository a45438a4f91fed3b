"""Wires the command modules into one Typer app; nothing else lives here."""

from __future__ import annotations

import typer

from agecli.cli import import_model as port
from agecli.cli import train

app = typer.Typer(
    name="age",
    help="Age estimation from face photos: prepare datasets, train, evaluate, predict, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # our errors are one line; AGECLI_DEBUG=1 shows tracebacks
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(train.prepare)
app.command()(train.train)
app.command("eval")(train.evaluate)
app.command()(train.models)
app.command()(train.presets)
app.add_typer(port.app, name="import")

from agecli.cli import predict  # noqa: E402

app.command()(predict.predict)
app.command()(predict.export)

from agecli.cli import lopo  # noqa: E402

app.command()(lopo.lopo)

from agecli.cli import bench  # noqa: E402

app.command()(bench.bench)

from agecli.cli import report  # noqa: E402

app.command()(report.report)
from agecli.cli import serve  # noqa: E402

app.command()(serve.serve)
