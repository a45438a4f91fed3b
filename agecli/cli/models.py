"""`age models`: the shipped trained models and the registered architectures."""

from __future__ import annotations

from rich.table import Table

from agecli.cli.common import out_console


def models() -> None:
    """List the built-in trained models with their test metrics (each test source apart) and the architectures."""
    from agecli.modelio.builtin import builtin_models
    from agecli.models import MODELS  # imports torch

    trained = Table(title="built-in trained models (age predict uses 'default' unless --model is given)")
    for header in ("name", "params", "MiB", "test split", "faces", "MAE", "CA(3)", "CA(5)"):
        trained.add_column(header, no_wrap=True, justify="left" if header in ("name", "test split") else "right")
    entries = builtin_models()
    for entry in entries:
        for i, (source, m) in enumerate(entry["by_source"].items()):  # the model's own columns on its first row
            own = (entry["name"], f"{entry['params']:,}", f"{entry['bytes'] / 2**20:.2f}") if i == 0 else ("", "", "")
            trained.add_row(*own, source, f"{m['n']:,}" if "n" in m else "", f"{m.get('mae', float('nan')):.2f}",
                            f"{m.get('ca3', float('nan')):.3f}", f"{m.get('ca5', float('nan')):.3f}")
    out_console.print(trained)
    for entry in entries:  # below the table: an ensemble's description is too long for a column
        out_console.print(f"{entry['name']}: {entry['architecture']}; trained on {entry['data']}; "
                          f"licence: {entry['licence']}")
    table = Table(title="architectures (age train NAME)")
    for header in ("name", "presets", "description"):
        table.add_column(header)
    for name, entry in MODELS.items():
        table.add_row(name, entry.family and f"{entry.family}/", entry.description)
    out_console.print(table)
