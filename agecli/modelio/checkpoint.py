"""Checkpoints hold tensors and plain data only, so `torch.load(weights_only=True)` reads them.

Layout of the saved dict:
  format, format_version   -- "agecli-checkpoint", 3 (1 and 2, older layouts, are read too)
  model: {name, kwargs}    -- enough to rebuild the network with create_model
  state_dict               -- the weights: float32, or float16 / int8 for compact built-in models
  weight_scales            -- int8 checkpoints only (format_version 2 and later): per-channel scales
  preprocess               -- what the model expects: agecli.data.preprocess.Preprocess.to_dict() (crop and input
                              sizes, mean, std, channel order, crop margin and shift, detector, age range)
  config, epoch, metrics, versions
  train_state (last.pt only) -- optimizer, scheduler, epoch, best metrics, history: what --resume needs.
                                No RNG state: each epoch reseeds its shuffling, augmentation and dropout from
                                train.seed and the epoch, so a resumed run draws what an uninterrupted one
                                would. Nor the GradScaler's: a resumed --amp run starts its loss scale afresh.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.files.atomic import atomic_path
from agecli.files.safe_load import load_raw  # callers may import it from here too
from agecli.models import create_model
from agecli.system.reproducibility import library_versions

FORMAT = "agecli-checkpoint"
# The layout this agecli writes, and the newest it reads. Version 2 added int8 weights with their scales;
# version 3 names the preprocess sizes `input_size` and `crop_size` (older files say `size` and `cache_size`),
# so an agecli that knows only 1 or 2 refuses a new file instead of misreading its sizes.
FORMAT_VERSION = 3
WEIGHT_FORMATS = ("float32", "float16", "int8")


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    model_name: str,
    model_kwargs: dict,
    preprocess: Preprocess,
    config: dict | None = None,
    epoch: int = 0,
    metrics: dict | None = None,
    train_state: dict | None = None,
    info: dict | None = None,
    weights_format: str = "float32",
) -> None:
    """`weights_format`: float32, or float16 / int8 for compact built-in models (see compress_weights)."""
    weights, scales = compress_weights({k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
                                       weights_format)
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "kwargs": dict(model_kwargs)},
        "state_dict": weights,
        "preprocess": preprocess.to_dict(),
        "config": config or {},
        "epoch": int(epoch),
        "metrics": metrics or {},
        "versions": library_versions(),
        "info": info or {},
    }
    if scales:
        state["weight_scales"] = scales
    if train_state is not None:
        state["train_state"] = train_state
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def compress_weights(weights: dict, weights_format: str) -> tuple[dict, dict]:
    """(weights as stored, int8 scales). float16 halves the file. int8 stores each conv and linear weight
    as int8 with one float32 scale per output channel (symmetric, round to nearest) and everything else
    (biases, BatchNorm, buffers) as float16: about a quarter of the file."""
    if weights_format not in WEIGHT_FORMATS:
        raise AgeCliError(f"weights format '{weights_format}' is not one of {', '.join(WEIGHT_FORMATS)}")
    if weights_format == "float32":
        return weights, {}
    stored, scales = {}, {}
    for key, value in weights.items():
        if not value.is_floating_point():
            stored[key] = value
        elif weights_format == "int8" and value.dim() >= 2:
            scale = value.abs().amax(dim=tuple(range(1, value.dim())), keepdim=True).float().clamp_min(1e-12) / 127
            stored[key], scales[key] = torch.round(value / scale).to(torch.int8), scale
        else:
            stored[key] = value.half()
    return stored, scales


def restore_weights(stored: dict, scales: dict) -> dict:
    """Float32 weights back from compress_weights' output (a float32 checkpoint comes back unchanged)."""
    restored = {}
    for key, value in stored.items():
        if key in scales:
            restored[key] = value.float() * scales[key]
        else:
            restored[key] = value.float() if value.is_floating_point() else value  # step counters stay integers
    return restored


def load_checkpoint(path: str | Path) -> dict:
    state = load_raw(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AgeCliError(
            f"{path}: not an agecli checkpoint (for the SSR-Net PyTorch port's .pth use `age import ssrnet-port`)"
        )
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise AgeCliError(f"{path}: checkpoint format {state['format_version']} is newer than this agecli; upgrade")
    state["state_dict"] = restore_weights(state["state_dict"], state.pop("weight_scales", {}))
    return state


def model_from_checkpoint(state: dict) -> torch.nn.Module:
    spec = state["model"]
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise AgeCliError(
            f"checkpoint weights do not fit model '{spec['name']}': missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.eval()
    return model


def load_model(path: str | Path) -> tuple[torch.nn.Module, Preprocess, dict]:
    """Rebuild a model from a checkpoint: (model in eval mode, its preprocessing, full state)."""
    state = load_checkpoint(path)
    return model_from_checkpoint(state), stored_preprocess(state), state


def stored_preprocess(state: dict) -> Preprocess:
    """The preprocessing a loaded checkpoint records, whatever its layout (none at all: the old defaults)."""
    return Preprocess.from_dict(state.get("preprocess") or {})


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP or torch.compile wrappers, so state_dict keys stay clean."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
