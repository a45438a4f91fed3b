"""Loading a model file safely: the file is classified by its bytes, then read with
torch.load(weights_only=True), so a file holding pickled code is refused instead of run.

Models import this to read pretrained weights; it imports no model, so the registry and the checkpoint
module can both depend on it without a cycle.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from agecli.errors import AgeCliError
from agecli.files.outputs import file_kind, file_problem

NOT_A_CHECKPOINT = {
    "empty": "empty file (0 bytes), not a checkpoint",
    "torchscript": "a TorchScript program, not a checkpoint: it carries code that would run when loaded, so it is "
                   "not loaded (only `age predict --allow-torchscript` runs one, for files you trust)",
    "zip": "a zip archive, but not a PyTorch checkpoint (it has no data.pkl)",
    "other": "not a checkpoint: neither a PyTorch zip archive nor a pickle",
}


def load_raw(path: str | Path) -> Any:
    """torch.load with weights_only=True; anything that needs arbitrary unpickling is refused."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise AgeCliError(f"{path}: {'no such checkpoint file' if problem == 'no such file' else problem}")
    try:
        kind = file_kind(path)
    except OSError as err:
        raise AgeCliError(f"{path}: cannot read ({err.strerror or first_line(err)})") from None
    if kind in NOT_A_CHECKPOINT:
        raise AgeCliError(f"{path}: {NOT_A_CHECKPOINT[kind]}")
    if kind == "checkpoint":
        check_archive_sizes(path)
    elif kind == "pickle":
        check_legacy_storage_sizes(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise AgeCliError(
            f"{path}: refused to load: it holds pickled Python objects that could run code ({refused_global(err)})"
        ) from None
    except Exception as err:  # torch raises many types on corrupt archives and foreign pickles
        what = "a pickle, but not one torch.save wrote" if kind == "pickle" else "a corrupt PyTorch checkpoint"
        raise AgeCliError(f"{path}: {what} ({first_line(err)})") from None


def check_archive_sizes(path: Path) -> None:
    """torch.save stores its records uncompressed, so none can be larger than the file; a compressed record that
    would expand past it (a few MB standing for a 4 GiB tensor) is refused before torch.load allocates it."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise AgeCliError(f"{path}: a corrupt PyTorch checkpoint ({first_line(err)})") from None
    for record in records:
        if record.file_size > size:
            raise AgeCliError(f"{path}: record {record.filename} would expand to {record.file_size:,} bytes in a "
                              f"{size:,}-byte file; torch.save never writes that, refused")


def check_legacy_storage_sizes(path: Path) -> None:
    """torch.save's legacy (non-zip) format allocates each storage at the size its pickle declares, before reading
    its bytes: the declared sizes, read from the pickle's opcodes without running it, must fit in the file."""
    size, declared = path.stat().st_size, 0
    try:
        with open(path, "rb") as f:
            for _ in range(3):  # magic number, protocol version, system info; then the object itself
                for _op in pickletools.genops(f):
                    pass
            numbers = None  # the integers since the last 'storage' persistent id began: its numel comes first
            for op, arg, _pos in pickletools.genops(f):
                if arg == "storage":
                    numbers = []
                elif numbers is not None and isinstance(arg, int) and "PUT" not in op.name and "GET" not in op.name:
                    numbers.append(arg)
                elif op.name in ("BINPERSID", "PERSID") and numbers:
                    declared, numbers = declared + numbers[0], None
    except (ValueError, EOFError, OSError):
        return  # not torch's legacy layout: torch.load says what it is
    if declared > size:
        raise AgeCliError(f"{path}: its storages declare {declared:,} values in a {size:,}-byte file; refused")


def refused_global(err: BaseException) -> str:
    """What torch's weights-only unpickler refused, e.g. 'global builtins.print', without its advice and colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    match = re.search(r"GLOBAL ([\w.]+)", text)  # torch words it differently for blocked and unknown modules
    if match:
        return f"global {match.group(1)} is not allowed"
    match = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    if match:
        return match.group(1).strip()[:160]
    advice = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "In PyTorch")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(advice)]
    return lines[0][:160] if lines else first_line(err)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip()[:160] if lines else type(err).__name__
