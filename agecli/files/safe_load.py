"""Loading a model file safely: the file is classified by its bytes, then read with
torch.load(weights_only=True), so a file holding pickled code is refused instead of run.

Models import this to read pretrained weights; it imports no model, so the registry and the checkpoint
module can both depend on it without a cycle.
"""

from __future__ import annotations

import pickle
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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise AgeCliError(
            f"{path}: refused to load: it holds pickled Python objects that could run code ({first_line(err)})"
        ) from None
    except Exception as err:  # torch raises many types on corrupt archives and foreign pickles
        what = "a pickle, but not one torch.save wrote" if kind == "pickle" else "a corrupt PyTorch checkpoint"
        raise AgeCliError(f"{path}: {what} ({first_line(err)})") from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip()[:160] if lines else type(err).__name__
