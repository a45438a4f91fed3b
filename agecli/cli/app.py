"""Wires the command modules into one Typer app; nothing else lives here."""

from __future__ import annotations

import typer

from agecli.cli import bench, export, lopo, models, predict, prepare, presets, report, serve, train
from agecli.cli import eval as evaluation
from agecli.cli import import_model as port

app = typer.Typer(
    name="age",
    help="Age estimation from face photos: prepare datasets, train, evaluate, predict, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # our errors are one line; AGECLI_DEBUG=1 shows tracebacks
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(prepare.prepare)
app.command()(train.train)
app.command("eval", context_settings=evaluation.CONTEXT)(evaluation.evaluate)
app.command()(models.models)
app.command()(presets.presets)
app.add_typer(port.app, name="import")
app.command()(predict.predict)
app.command()(export.export)
app.command(context_settings=lopo.CONTEXT)(lopo.lopo)
app.command()(bench.bench)
app.command()(report.report)
app.command()(serve.serve)
