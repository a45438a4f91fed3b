"""Checkpoints hold tensors and plain data only, so `torch.load(weights_only=True)` reads them.

Layout of the saved dict:
  format, format_version   -- "agecli-checkpoint", 1
  model: {name, kwargs}    -- enough to rebuild the network with create_model
  state_dict               -- the weights (float32, or float16 for compact built-in models)
  preprocess               -- what the model expects: size, mean, std, channel_order, margin, age range
  config, epoch, metrics, versions
  train_state (last.pt only) -- optimizer, scheduler, RNG state, history: everything --resume needs
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from agecli.errors import AgeCliError
from agecli.utils import atomic_path, library_versions

FORMAT = "agecli-checkpoint"
FORMAT_VERSION = 1

# What an RGB model trained here expects, unless its config says otherwise.
DEFAULT_PREPROCESS = {
    "size": 64,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "RGB",
    "margin": 0.4,
    "age_min": 0.0,
    "age_max": 101.0,
}


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    model_name: str,
    model_kwargs: dict,
    preprocess: dict,
    config: dict | None = None,
    epoch: int = 0,
    metrics: dict | None = None,
    train_state: dict | None = None,
    info: dict | None = None,
    half: bool = False,
) -> None:
    """`half`: store floating-point weights as float16, half the file; loading casts them back to float32."""
    weights = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": weights,
        "preprocess": dict(preprocess),
        "config": config or {},
        "epoch": int(epoch),
        "metrics": metrics or {},
        "versions": library_versions(),
        "info": info or {},
    }
    if train_state is not None:
        state["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_raw(path: str | Path) -> Any:
    """torch.load with weights_only=True; anything that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise AgeCliError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AgeCliError(
            f"{path}: refused to load: it holds pickled Python objects that could run code ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise AgeCliError(f"{path}: not a readable PyTorch checkpoint ({str(err).splitlines()[0][:160]})") from None


def load_checkpoint(path: str | Path) -> dict:
    state = load_raw(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AgeCliError(
            f"{path}: not an agecli checkpoint (for the SSR-Net PyTorch port's .pth use `age import ssrnet-port`)"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise AgeCliError(f"{path}: checkpoint format {state['format_version']} is newer than this agecli; upgrade")
    return state


def model_from_checkpoint(state: dict) -> torch.nn.Module:
    from agecli.models import create_model

    spec = state["model"]
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise AgeCliError(
            f"checkpoint weights do not fit model '{spec['name']}': missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.eval()
    return model


def load_model(path: str | Path) -> tuple[torch.nn.Module, dict, dict]:
    """Rebuild a model from a checkpoint: (model in eval mode, preprocess, full state)."""
    state = load_checkpoint(path)
    return model_from_checkpoint(state), {**DEFAULT_PREPROCESS, **state.get("preprocess", {})}, state


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP or torch.compile wrappers, so state_dict keys stay clean."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
