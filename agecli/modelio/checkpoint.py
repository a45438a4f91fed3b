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

import threading
from pathlib import Path

import torch

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.files.atomic import atomic_path
from agecli.files.safe_load import first_line, load_raw
from agecli.modelio.limits import check_model_spec, check_preprocess, is_int, type_name
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
    """A checkpoint read and checked: every field agecli reads has the right type, and what it declares (the model,
    its weights, its preprocessing) is bounded and consistent before anything it declares is built."""
    state = load_raw(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AgeCliError(
            f"{path}: not an agecli checkpoint (for the SSR-Net PyTorch port's .pth use `age import ssrnet-port`)"
        )
    version = state.get("format_version", 0)
    if not is_int(version):
        raise AgeCliError(f"{path}: format_version must be an integer, got {type_name(version)} {version!r:.20}")
    if version > FORMAT_VERSION:
        raise AgeCliError(f"{path}: checkpoint format {version} is newer than this agecli; upgrade")
    check_fields(state, path)
    weights, scales = state["state_dict"], state.pop("weight_scales", None) or {}
    check_weights(weights, scales, path)
    name, kwargs = check_model_spec(state["model"], str(path))
    check_preprocess(state.get("preprocess"), str(path))
    check_weights_fit(weights, expected_shapes(name, kwargs, path), name, path)
    state["state_dict"] = restore_weights(weights, scales)
    return state


# top-level fields other than the weights, the model and the preprocessing: the type each must have when present
FIELD_TYPES = {"config": dict, "metrics": dict, "versions": dict, "info": dict, "train_state": dict, "epoch": int}
CONFIG_SECTIONS = ("model", "data", "optim", "sched", "loss", "train", "distill")
# slack for the weights a file may hold beyond one element per byte: tied weights, tiny files
ELEMENT_SLACK = 1_000_000
# per model: modules built, and parameters and buffers beyond what the file's bytes could hold
MAX_MODULES = 2_000  # ResNet50 has about 160, EfficientNet-Lite0 280


def check_fields(state: dict, path: str | Path) -> None:
    for key, kind in FIELD_TYPES.items():
        value = state.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise AgeCliError(f"{path}: {key} must be {'a mapping' if kind is dict else 'an integer'}, "
                              f"got {type_name(value)}")
    for section, value in (state.get("config") or {}).items():  # eval, --resume and the report read its sections
        if section in CONFIG_SECTIONS and value is not None and not isinstance(value, dict):
            raise AgeCliError(f"{path}: config.{section} must be a mapping, got {type_name(value)}")
    if "state_dict" not in state:
        raise AgeCliError(f"{path}: has no state_dict (the model's weights)")
    if "model" not in state:
        raise AgeCliError(f"{path}: has no model field ({{name, kwargs}}: which network the weights are for)")


def check_weights(weights, scales, path: str | Path) -> None:
    """state_dict: text keys to tensors, no more elements than the file's bytes could hold (a view can declare far
    more than its storage has); weight_scales: one per output channel of an int8 weight."""
    if not isinstance(weights, dict):
        raise AgeCliError(f"{path}: state_dict must be a mapping of weight names to tensors, got {type_name(weights)}")
    if not isinstance(scales, dict):
        raise AgeCliError(f"{path}: weight_scales must be a mapping of weight names to tensors, "
                          f"got {type_name(scales)}")
    for field, tensors in (("state_dict", weights), ("weight_scales", scales)):
        for key, value in tensors.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise AgeCliError(f"{path}: {field} entry {key!r:.60} must be a tensor, got {type_name(value)}")
    elements = sum(t.numel() for t in (*weights.values(), *scales.values()))
    if elements > 2 * Path(path).stat().st_size + ELEMENT_SLACK:
        raise AgeCliError(f"{path}: state_dict declares {elements:,} values, far more than its "
                          f"{Path(path).stat().st_size:,} bytes hold")
    for key, scale in scales.items():
        value = weights.get(key)
        if value is None:
            raise AgeCliError(f"{path}: weight_scales.{key} scales no weight of the state_dict")
        wanted = (value.shape[0], *[1] * (value.dim() - 1)) if value.dim() else None
        if wanted is None or tuple(scale.shape) != wanted or not scale.is_floating_point():
            raise AgeCliError(f"{path}: weight_scales.{key} has shape {list(scale.shape)}, expected float {wanted} "
                              f"(one scale per output channel of a weight of shape {list(value.shape)})")


def expected_shapes(name: str, kwargs: dict, path: str | Path) -> dict[str, tuple]:
    """The shape of every weight the model declared in the file would have, from a build on the meta device
    (no memory behind any tensor), stopped as soon as it has more parameters than the file could hold."""
    if name == "ensemble":  # its members are built one by one: the ensemble itself compares tensors, which meta cannot
        shapes = {}
        for i, member in enumerate(kwargs["members"]):
            for key, shape in expected_shapes(member["name"], member.get("kwargs") or {}, path).items():
                shapes[f"members.{i}.{key}"] = shape
                if key == "ages":
                    shapes["ages"] = shape
        return shapes
    budget = BuildBudget(elements=2 * Path(path).stat().st_size + ELEMENT_SLACK, modules=MAX_MODULES)
    try:
        with budget, torch.device("meta"):
            model = create_model(name, **kwargs)
    except AgeCliError as err:
        raise AgeCliError(f"{path}: model.kwargs: {err}") from None
    except OverBudget as over:
        raise AgeCliError(f"{path}: model.kwargs declare a '{name}' with {over}, more than a "
                          f"{Path(path).stat().st_size:,}-byte file can hold weights for") from None
    except Exception as err:  # whatever a model's constructor raises on values of the wrong kind or range
        raise AgeCliError(f"{path}: model.kwargs do not build a '{name}' ({first_line(err)})") from None
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def check_weights_fit(weights: dict, shapes: dict, name: str, path: str | Path) -> None:
    missing = [key for key in shapes if key not in weights]
    unexpected = [key for key in weights if key not in shapes]
    if missing or unexpected:
        raise AgeCliError(f"{path}: state_dict does not fit model '{name}': missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]}")
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise AgeCliError(f"{path}: state_dict.{key} has shape {list(weights[key].shape)}, model '{name}' "
                              f"needs {list(shape)}")


class OverBudget(Exception):
    """A model under construction passed its BuildBudget."""


class BuildBudget:
    """Counts the modules, parameters and buffers registered by this thread while active (torch's global
    registration hooks) and stops the build, by raising OverBudget, as soon as it passes a limit."""

    def __init__(self, elements: int, modules: int):
        self.limits = {"elements": elements, "modules": modules}
        self.counts = {"elements": 0, "modules": 0}
        self.thread = threading.get_ident()
        self.handles = []

    def _add(self, what: str, amount: int) -> None:
        if threading.get_ident() != self.thread:  # another thread building its own model
            return
        self.counts[what] += amount
        if self.counts[what] > self.limits[what]:
            raise OverBudget(f"over {self.limits[what]:,} {'parameter values' if what == 'elements' else what}")

    def _on_tensor(self, module, name, tensor):
        if tensor is not None:
            self._add("elements", tensor.numel())

    def _on_module(self, module, name, submodule):
        self._add("modules", 1)

    def __enter__(self):
        hooks = torch.nn.modules.module
        self.handles = [hooks.register_module_parameter_registration_hook(self._on_tensor),
                        hooks.register_module_buffer_registration_hook(self._on_tensor),
                        hooks.register_module_module_registration_hook(self._on_module)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def model_from_checkpoint(state: dict) -> torch.nn.Module:
    """The model of a state from load_checkpoint (which has checked that its weights fit), in eval mode."""
    spec = state["model"]
    try:
        model = create_model(spec["name"], **(spec.get("kwargs") or {}))
        missing, unexpected = model.load_state_dict(state["state_dict"], strict=False)
    except AgeCliError:
        raise
    except Exception as err:  # arguments of the wrong kind, or shapes that do not fit (meta cannot check all)
        raise AgeCliError(f"checkpoint model '{spec['name']}' does not load ({first_line(err)})") from None
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
    return check_preprocess(state.get("preprocess"), "checkpoint")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP or torch.compile wrappers, so state_dict keys stay clean."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
