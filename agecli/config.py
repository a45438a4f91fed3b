"""One Config object, resolved from a preset YAML plus `key=value` overrides.

The CLI and the library both go through `resolve_config(preset, overrides)`, so a run started from
Python and one started from the shell see exactly the same values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import re
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agecli.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, MAX_SIDE, MIN_SIDE
from agecli.errors import AgeCliError
from agecli.files.safe_yaml import read_yaml, yaml_snippet
from agecli.system.reproducibility import SEED_MAX

AUGMENTS = ("none", "flip", "mvloss", "photo", "photo_turn")


@dataclass
class ModelConfig:
    name: str = "ssrnet"  # registry name, see `age models`
    kwargs: dict = field(default_factory=dict)  # constructor arguments, stored in the checkpoint
    pretrained: str = "none"  # imagenet | none | PATH to a state dict (ResNets only)


@dataclass
class DataConfig:
    manifest: str = "utkface"  # a prepared dataset name under prepared/, a folder, or a manifest.csv
    # several prepared datasets at once (replaces `manifest`): names/folders, or {name, weight}; each keeps its own
    # splits and crop cache. weight w: each of its faces is drawn w times as often as a face of a weight-1 source
    sources: list = field(default_factory=list)
    cache_size: int = 64  # side of the cached square crops, in pixels
    input_size: int = 64  # side fed to the network (centre/random crop of the cached crop)
    # none | flip | mvloss (random crop, p=0.5 affine 10 deg / shear 16 + flip) | photo (mvloss, zoom, colour,
    # blur) | photo_turn (photo, and half the faces turned about the vertical axis: agecli.data.cache.random_turn)
    augment: str = "none"
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))  # ImageNet statistics
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    channel_order: str = "RGB"  # RGB | BGR (order the network sees; mean/std follow it)
    train_split: str = "train"  # manifest split used for training ('' = every row not in test)
    test_split: str = "test"  # manifest split held out for `age eval`
    val_fraction: float = 0.1  # share of training rows held out to pick the best epoch
    val_mode: str = "random"  # random images (the reference) | subject (person-disjoint)
    split_seed: int = -1  # seed of the validation draw; -1 follows train.seed. Fix it to compare seeds on one split
    # the model's age range, which a preset states once, in model.kwargs (age_min/age_max; SSR-Net: V, ages 0 to V):
    # these follow it, and a preset or override that states them too must agree with it
    age_min: float = 0.0
    age_max: float = 101.0


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 0.001
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only


@dataclass
class SchedConfig:
    name: str = "step"  # step | multistep | cosine | none
    step_size: int = 30  # step: decay every step_size epochs
    milestones: list = field(default_factory=list)  # multistep: epochs at which lr decays
    gamma: float = 0.1


@dataclass
class LossConfig:
    name: str = "l1"  # l1 | mse | softmax | mean_variance
    lambda_mean: float = 0.2  # mean_variance: weight of the mean term (lambda_1 in Pan et al.)
    lambda_var: float = 0.05  # mean_variance: weight of the variance term (lambda_2)


@dataclass
class DistillConfig:
    teacher: str = ""  # checkpoint (one model or an ensemble) whose age distributions the student also learns; several, comma-separated, are averaged
    weight: float = 0.5  # share of the loss that follows the teacher; the rest follows the labels
    temperature: float = 1.0  # softens both distributions before they are compared (Hinton et al., 2015)
    sources: list = field(default_factory=list)  # data.sources whose faces the teacher teaches (their folder or its name); empty: all


@dataclass
class TrainConfig:
    epochs: int = 90
    batch_size: int = 50  # SSR-Net's authors note that batch size changes results
    seed: int = 0
    freeze_epochs: int = 0  # train only the head for this many epochs first
    select: str = "ca3"  # validation metric that picks best.pt: ca3 | ca5 | mae
    amp: bool = False  # mixed precision (CUDA only)
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    init: str = ""  # checkpoint to start from (e.g. SSR-Net v2 fine-tuned from v1)


@dataclass
class Config:
    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def presets_dir():
    """Presets ship inside the package (agecli.presets) so they work after `pip install`."""
    return resources.files("agecli.presets")


def list_presets() -> list[str]:
    found = []
    for family in presets_dir().iterdir():
        if family.is_dir() and not family.name.startswith(("_", ".")):
            found += [f"{family.name}/{p.name[:-5]}" for p in family.iterdir() if p.name.endswith(".yaml")]
    return sorted(found)


def find_preset(name: str, family: str | None = None):
    """A preset by path (my.yaml), full name (ssrnet/paper) or short name within a family (paper)."""
    path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise AgeCliError(f"{name}: no such preset file")
        return path
    candidates = [name] if "/" in name else ([f"{family}/{name}"] if family else []) + [name]
    known = list_presets()
    for candidate in candidates:
        if candidate in known:
            fam, short = candidate.split("/")
            return presets_dir() / fam / f"{short}.yaml"
    hint = difflib.get_close_matches(candidates[0], known, n=1)
    suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
    raise AgeCliError(f"unknown preset '{name}'{suggestion} (known: {', '.join(known)})")


def preset_text(name: str, family: str | None = None) -> str:
    """A preset's YAML exactly as shipped, comments included (`age presets --show NAME`)."""
    return find_preset(name, family).read_text(encoding="utf-8")


def preset_summary(name: str) -> str:
    """The first sentence of a preset's leading comment: what `age presets` shows beside its name."""
    lines = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return re.split(r"(?<=\.)\s+(?=[A-Z0-9])", " ".join(lines), maxsplit=1)[0]


def load_yaml(source) -> dict:
    """A preset file: a mapping of sections, read with read_yaml's bounds."""
    data = read_yaml(source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AgeCliError(f"{source}: a preset must be a mapping of sections (model, data, optim, ...)")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['optim.lr=0.0005', 'data.augment=flip'] -> {'optim.lr': 0.0005, 'data.augment': 'flip'}."""
    result = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise AgeCliError(f"override '{item}' is not key=value (example: --set optim.lr=0.0005)")
        result[key.strip()] = _literal(raw.strip())
    return result


def _literal(raw: str) -> Any:
    """Python literals (numbers, lists, True/False/None) are parsed safely; a list or mapping may also be
    written as in a preset, in YAML's flow style ([utkface, {name: morph, weight: 4}]); anything else stays
    a string."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if raw.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    if raw.startswith(("[", "{")):
        return yaml_snippet(raw, default=raw)
    return raw


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "model.kwargs":
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _valid_keys() -> dict[str, tuple[Any, Any]]:
    """'optim.lr' -> (section dataclass instance, field) for every settable key."""
    keys = {"preset": None}
    for section in fields(Config):
        if section.name != "preset":
            for f in fields(section.default_factory):
                keys[f"{section.name}.{f.name}"] = f
    return keys


def _coerce(key: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    hints = typing.get_type_hints(type(_section_default(key)))
    expected = hints[f.name]
    example = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected is str and value is None:
        return ""
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if expected in (int, float, bool, str, list, dict) and isinstance(value, expected) and not (
        expected is int and isinstance(value, bool)
    ):
        return value
    raise AgeCliError(
        f"{source}: {key} must be {expected.__name__}, got {value!r} (example: {key}={example!r})"
    )


def _section_default(key: str):
    section = key.split(".")[0]
    return next(f for f in fields(Config) if f.name == section).default_factory()


# Keys that older configs and checkpoints hold but that no longer do anything, and why. Files that hold
# them still load; an override naming one is refused, since it would silently change nothing.
RETIRED_KEYS = {"train.workers": "there is no DataLoader: batches are cut from the memory-mapped crop cache "
                                 "in the training process"}


def apply(cfg: Config, values: dict[str, Any], source: str) -> Config:
    valid = _valid_keys()
    for key, value in values.items():
        if key in RETIRED_KEYS:
            if source == "override":
                raise AgeCliError(f"override: '{key}' was removed ({RETIRED_KEYS[key]})")
            continue
        if key.startswith("model.kwargs.") and len(key) > len("model.kwargs."):  # one model argument
            cfg.model.kwargs = {**cfg.model.kwargs, key.removeprefix("model.kwargs."): value}
            continue
        if key not in valid:
            hint = difflib.get_close_matches(key, list(valid), n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise AgeCliError(f"{source}: unknown key '{key}'{suggestion}")
        if key == "preset":
            cfg.preset = str(value)
            continue
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, _coerce(key, value, valid[key], source))
    return cfg


def validate(cfg: Config) -> Config:
    def need(ok: bool, key: str, problem: str) -> None:
        if not ok:
            raise AgeCliError(f"config: {key} {problem}")

    need(cfg.optim.name in ("adam", "adamw", "sgd"), "optim.name", f"'{cfg.optim.name}' is not adam, adamw or sgd")
    need(cfg.optim.lr > 0, "optim.lr", "must be positive")
    need(cfg.sched.name in ("step", "multistep", "cosine", "none"), "sched.name", "must be step, multistep, cosine or none")
    need(cfg.loss.name in ("l1", "mse", "softmax", "mean_variance"), "loss.name",
         f"'{cfg.loss.name}' is not l1, mse, softmax or mean_variance")
    need(cfg.train.epochs >= 1, "train.epochs", "must be at least 1")
    need(cfg.train.batch_size >= 1, "train.batch_size", "must be at least 1")
    need(cfg.train.select in ("ca3", "ca5", "mae"), "train.select", "must be ca3, ca5 or mae")
    need(0 <= cfg.data.val_fraction < 1, "data.val_fraction", "must be in [0, 1)")
    need(cfg.data.val_mode in ("random", "subject"), "data.val_mode", "must be random or subject")
    need(cfg.data.augment in AUGMENTS, "data.augment", f"must be one of {', '.join(AUGMENTS)}")
    need(cfg.data.channel_order in ("RGB", "BGR"), "data.channel_order", "must be RGB or BGR")
    need(cfg.data.input_size <= cfg.data.cache_size, "data.input_size", "cannot exceed data.cache_size")
    need(len(cfg.data.mean) == 3 and len(cfg.data.std) == 3, "data.mean/std", "need three values each")
    need(cfg.data.age_max > cfg.data.age_min, "data.age_max", "must exceed data.age_min")
    _validate_numbers(need, cfg)
    _validate_age_range(need, cfg)
    _validate_sources(need, cfg.data.sources)
    need(0 <= cfg.distill.weight <= 1, "distill.weight", "must be in [0, 1]")
    need(cfg.distill.temperature > 0, "distill.temperature", "must be positive")
    need(all(isinstance(s, str) and s for s in cfg.distill.sources), "distill.sources",
         "must be a list of data.sources (their prepared folders or names)")
    need(cfg.distill.teacher or not cfg.distill.sources, "distill.sources", "needs distill.teacher (--teacher)")
    return cfg


def _validate_numbers(need, cfg: Config) -> None:
    """Ranges and signs of the numeric keys, so a bad number is one line naming its key, not a traceback later."""
    def finite(value) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    need(finite(cfg.optim.lr), "optim.lr", "must be a finite number")
    need(finite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0, "optim.weight_decay", "must be 0 or more")
    need(finite(cfg.optim.momentum) and 0 <= cfg.optim.momentum < 1, "optim.momentum", "must be in [0, 1)")
    need(cfg.sched.step_size >= 1, "sched.step_size", "must be at least 1")
    need(finite(cfg.sched.gamma) and cfg.sched.gamma > 0, "sched.gamma", "must be positive")
    need(all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in cfg.sched.milestones),
         "sched.milestones", "must be a list of epoch numbers (1 or more)")
    for key in ("lambda_mean", "lambda_var"):
        value = getattr(cfg.loss, key)
        need(finite(value) and value >= 0, f"loss.{key}", "must be 0 or more")
    need(0 <= cfg.train.seed <= SEED_MAX, "train.seed", f"must be between 0 and {SEED_MAX}")
    need(-1 <= cfg.data.split_seed <= SEED_MAX, "data.split_seed", f"must be -1 or between 0 and {SEED_MAX}")
    need(cfg.train.freeze_epochs >= 0, "train.freeze_epochs", "must be 0 or more")
    # no larger than a checkpoint may declare (agecli.modelio.limits), so every run's checkpoint loads back
    for key, side in (("data.input_size", cfg.data.input_size), ("data.cache_size", cfg.data.cache_size)):
        need(MIN_SIDE <= side <= MAX_SIDE, key, f"must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    need(all(finite(v) for v in cfg.data.mean), "data.mean", "must be three numbers")
    need(all(finite(v) and v > 0 for v in cfg.data.std), "data.std", "must be three positive numbers")
    need(finite(cfg.data.age_min) and finite(cfg.data.age_max) and cfg.data.age_min >= 0, "data.age_min",
         "must be 0 or more, with a finite data.age_max")


def _validate_sources(need, sources: list) -> None:
    """data.sources: names, or {name, weight, val_fraction} mappings with a positive weight and a validation
    share of its own in [0, 1)."""
    for i, entry in enumerate(sources):
        key = f"data.sources[{i}]"
        if isinstance(entry, str):
            need(bool(entry.strip()), key, "must name a prepared dataset")
            continue
        need(isinstance(entry, dict), key, f"must be a name or {{name: NAME, weight: W}}, got {entry!r}")
        unknown = sorted(set(entry) - {"name", "weight", "val_fraction"})
        need(not unknown, key, f"has unknown key(s) {unknown}")
        need(isinstance(entry.get("name"), str) and bool(entry["name"].strip()), key + ".name",
             "must name a prepared dataset")
        weight = entry.get("weight", 1.0)
        need(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
             and weight > 0, key + ".weight", f"must be a positive number, got {weight!r}")
        share = entry.get("val_fraction", 0.0)
        need(isinstance(share, (int, float)) and not isinstance(share, bool) and 0 <= share < 1,
             key + ".val_fraction", f"must be in [0, 1), got {share!r}")


def model_age_range(kwargs: dict) -> dict[str, tuple[str, float]]:
    """The ages model.kwargs state: {"age_min"/"age_max": (the key that states it, value)}. The spellings:
    age_min/age_max; num_ages (ResNet checkpoints from before age_max: age_min + num_ages - 1); V (SSR-Net, 0 to V).
    A bound the kwargs leave to the model's default is not known here, and left out."""
    def number(key: str) -> bool:
        return isinstance(kwargs.get(key), (int, float)) and not isinstance(kwargs.get(key), bool)

    found = {"age_min": ("model.kwargs.age_min", float(kwargs["age_min"]))} if number("age_min") else {}
    low = float(kwargs["age_min"]) if number("age_min") else 0.0
    if number("age_max"):
        found["age_max"] = ("model.kwargs.age_max", float(kwargs["age_max"]))
    elif number("num_ages"):
        found["age_max"] = ("model.kwargs.num_ages", low + kwargs["num_ages"] - 1)
    elif number("V"):
        found["age_max"] = ("model.kwargs.V", float(kwargs["V"]))
        found.setdefault("age_min", ("model.kwargs.V", 0.0))
    return found


def _validate_age_range(need, cfg: Config) -> None:
    """One age range: data.age_min/age_max agree with the model's (model_age_range), num_ages with age_max."""
    kwargs = cfg.model.kwargs
    if "num_ages" in kwargs and "age_max" in kwargs:  # the older spelling beside the new: both must say one range
        _, from_count = model_age_range({k: v for k, v in kwargs.items() if k != "age_max"}).get("age_max", ("", None))
        need(from_count == kwargs["age_max"], "model.kwargs.num_ages",
             f"({kwargs['num_ages']}) disagrees with model.kwargs.age_max ({kwargs['age_max']}); give age_max only")
    for key, (source, value) in model_age_range(kwargs).items():
        stated = getattr(cfg.data, key)
        need(stated == value, f"data.{key}", f"({stated:g}) disagrees with {source} ({value:g}); state the age range "
                                            "once, in model.kwargs")


def _data_ages_follow_model(cfg: Config, stated: set[str]) -> Config:
    """data.age_min/age_max not stated follow the model's range, so a preset states it once."""
    for key, (_, value) in model_age_range(cfg.model.kwargs).items():
        if f"data.{key}" not in stated:
            setattr(cfg.data, key, value)
    return cfg


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | None = None,
                   family: str | None = None) -> Config:
    """Dataclass defaults < preset file < overrides, then validated."""
    cfg = Config()
    stated = set(overrides or {})
    if preset:
        path = find_preset(preset, family)
        values = _flatten(load_yaml(path))
        stated |= set(values)
        cfg = apply(cfg, values, str(path) if isinstance(path, Path) else f"preset {preset}")
        if not cfg.preset:
            cfg.preset = preset if "/" in preset or not family else f"{family}/{preset}"
    return validate(_data_ages_follow_model(apply(cfg, overrides or {}, "override"), stated))


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config stored in a checkpoint or config.yaml. Its model was built from model.kwargs, so the
    data's age range follows them (runs saved before the range was checked may hold another)."""
    return validate(_data_ages_follow_model(apply(Config(), _flatten(data), "stored config"), set()))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

