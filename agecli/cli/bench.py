"""`age bench`: throughput and peak memory of training, inference and predict on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agecli.cli.common import JsonOpt, check_int, deprecated, emit_json, err_console, note_deprecated, option
from agecli.errors import AgeCliError


def bench(
    root: Annotated[Optional[Path], option("--root", default="seeded synthetic faces and photos")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer faces and photos, shorter timings, no torch.compile.")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch and onnxruntime threads. \\[default: torch's]")] = None,
    json_path: JsonOpt = None,
    data: Annotated[Optional[Path], deprecated("--data", "--root")] = None,
) -> None:
    """Measure SSR-Net training and inference, the built-in model's inference and `age predict`: speed and peak memory.

    --root times real faces: a folder holding utkface/ (UTKFace crops) and fairface/ (photos).
    """
    from agecli.bench import (
        runner as lib,  # imports torch and onnxruntime: only for this command
    )

    if data is not None:
        if root is not None:
            raise AgeCliError("--data and --root both name the raw folder; give only --root")
        note_deprecated("age bench --data DIR", "--root DIR")
        root = data
    check_int("--threads", threads, 1)
    result = lib.run_benchmarks(root, quick, threads,
                                on_step=lambda text: err_console.print(f"[dim]... {text}[/]"))
    typer.echo(lib.markdown(result))  # plain text: the table is markdown, not rich markup
    emit_json(result, json_path)
