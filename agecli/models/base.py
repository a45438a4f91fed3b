"""The contract every age model follows, written down once and checked by `check_contract`.

Every model the registry builds is an `AgeModel` and provides:
  forward(x) -> {"age": (B,) years}, plus {"logits": (B, K)} over `ages` when `is_distribution`.
  age_min, age_max: the ages it covers, in years; the one spelling of the range for every model.
  ages: a distribution model's (K,) buffer of the integers age_min..age_max; None for a regression model.
  is_distribution: True when forward returns logits over `ages` and the age is their softmax expectation.
  spread(out) / age_and_spread(out): the predicted standard deviation in years; None for a regression model.
  backbone and head: modules. forward_features(x) is the backbone's embedding, what the head reads;
  forward_head(features) -> the dict above. freeze_backbone() trains only the head, BatchNorm statistics
  included, and holds across model.train(); a model whose head should not train alone sets can_freeze = False.
  load_pretrained(source) -> a line saying what was loaded (ImageNet weights, a file); the default refuses.

The formulas live here only: `expected_age` (sum of p * ages), `distribution_moments` / `distribution_stats`
(mean, variance, spread). The losses, `age eval`, `age predict`, calibration and the exported graphs all call
them, and a subclass may not redefine the methods that apply them (`__init_subclass__` refuses it).

Where a model differs, it says so here and in its code:
  * SSRNet is a regression model: no `ages` (None), is_distribution False, spread None. Its range is
    [0, V] (its output is not clamped to it). Its head is its three fusion blocks (stored as `fuse`), which
    read the backbone's maps at three depths: forward_features returns those maps per stage, not one vector.
  * AgeEnsemble is composite (`composite = True`): it has `members`, each a model that follows this
    contract, and no backbone or head of its own; its ages are its members' (all the same). Its age is the
    mean, or with point="median" the median, of the members' averaged distribution; its logits are the log of
    that average divided by spread_temperature, which widens the spread and leaves the age alone.
  * Distribution heads are `DistributionHead` (BN1d -> Dropout -> Linear over the ages, the mean-variance
    paper's head), except SSRNetDist's Dropout -> Linear: its checkpoints predate the shared head.
  * Module names are state dict keys: a model keeps the names its checkpoints were saved with and aliases the
    contract's name (SmallResNet's backbone is stored as `features`, SSRNet's head as `fuse`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from agecli.errors import AgeCliError

SHARED_FORMULAS = ("age_and_spread", "spread")  # methods no subclass may redefine: one formula, here


def age_range(age_min: int, age_max: int) -> torch.Tensor:
    if int(age_max) <= int(age_min):
        raise AgeCliError(f"age_max ({age_max}) must be above age_min ({age_min})")
    return torch.arange(int(age_min), int(age_max) + 1, dtype=torch.float32)


def expected_age(probs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """The mean age of distributions (B, K) over `ages` (K,): the age every distribution model reports."""
    return (probs * ages).sum(1)


def distribution_moments(logits: torch.Tensor, ages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of softmax(logits) over `ages` (the mean-variance loss differentiates both)."""
    p = logits.float().softmax(1)
    ages = ages.to(p.dtype)
    mean = expected_age(p, ages)
    return mean, (p * (ages[None, :] - mean[:, None]) ** 2).sum(1)


def distribution_stats(logits: torch.Tensor, ages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (the spread) of softmax(logits) over `ages`."""
    mean, var = distribution_moments(logits, ages)
    return mean, var.clamp_min(0).sqrt()


class DistributionHead(nn.Sequential):
    """BN1d -> Dropout -> Linear(width, number of ages): logits over the integer ages."""

    def __init__(self, width: int, num_ages: int, dropout: float = 0.2):
        super().__init__(nn.BatchNorm1d(width), nn.Dropout(dropout), nn.Linear(width, num_ages))


class AgeModel(nn.Module):
    """Base of every model in the registry; see the module docstring for the contract."""

    can_freeze = True  # False for models whose head cannot be trained apart from the features
    composite = False  # True for a model made of other AgeModels (AgeEnsemble): no backbone or head of its own
    backbone: nn.Module
    head: nn.Module
    ages: torch.Tensor | None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        redefined = [name for name in SHARED_FORMULAS if name in vars(cls)]
        if redefined:
            raise TypeError(f"{cls.__name__} redefines {', '.join(redefined)}: the age and spread formulas live in "
                            "agecli/models/base.py only")

    def __init__(self):
        super().__init__()
        self._backbone_frozen = False
        # a regression model keeps None; a distribution model registers its ages over it. A None buffer is not
        # saved, so state dicts are as before
        self.register_buffer("ages", None)

    @property
    def is_distribution(self) -> bool:
        return self.ages is not None

    @property
    def age_min(self) -> float:
        """The youngest age covered: a distribution model's first age; a regression model sets its own."""
        return float(self._distribution_ages()[0])

    @property
    def age_max(self) -> float:
        return float(self._distribution_ages()[-1])

    def _distribution_ages(self) -> torch.Tensor:
        if self.ages is None:
            raise NotImplementedError(f"{type(self).__name__} predicts a single age: it must set age_min and age_max")
        return self.ages

    def spread(self, out: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The predicted standard deviation in years of forward's output; None for a regression model."""
        if not self.is_distribution:
            return None
        return distribution_stats(out["logits"], self.ages)[1]

    def age_and_spread(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(age as float32, spread or None) from forward's output: what eval, predict and the exports report."""
        return out["age"].float(), self.spread(out)

    def forward_features(self, x: torch.Tensor):
        return self.backbone(x)

    def forward_head(self, features) -> dict[str, torch.Tensor]:
        logits = self.head(features)
        return {"age": expected_age(logits.softmax(1), self.ages), "logits": logits}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def head_parameters(self):
        return self.head.parameters()

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Train only the head: the rest gets no gradient and its BatchNorm statistics stay put."""
        if not self.can_freeze:
            raise AgeCliError(f"{type(self).__name__} has no head that trains alone; set train.freeze_epochs=0")
        self._backbone_frozen = frozen
        head = {id(p) for p in self.head.parameters()}
        for p in self.parameters():
            p.requires_grad_(not frozen or id(p) in head)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and getattr(self, "_backbone_frozen", False):
            for child in self.children():  # frozen BatchNorm: running statistics are used, never updated
                if child is not self.head:
                    child.eval()
        return self

    def rename_legacy_keys(self, renames: dict[str, str]) -> None:
        """Let checkpoints saved before a module was renamed load: old key prefix -> new key prefix."""
        def hook(module, state_dict, prefix, *args):
            for key in [k for k in state_dict if k.startswith(prefix)]:
                for old, new in renames.items():
                    if key.startswith(prefix + old):
                        state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)

        self.register_load_state_dict_pre_hook(hook)

    def load_pretrained(self, source: str) -> str:
        raise AgeCliError(f"--pretrained {source}: {type(self).__name__} has no pretrained weights "
                          "(ResNets and EfficientNet-Lite do); use --pretrained none")


def check_contract(model: nn.Module) -> None:
    """Raise one AgeCliError line naming the model and the part of the contract it lacks.

    The registry's create_model calls it on every model it builds, so a class that misses part of the
    contract is refused the first time it is created, not deep inside training or export.
    """
    name = type(model).__name__

    def need(ok: bool, problem: str) -> None:
        if not ok:
            raise AgeCliError(f"model {name} breaks the AgeModel contract (agecli/models/base.py): {problem}")

    need(isinstance(model, AgeModel), "it is not an AgeModel")
    if model.is_distribution and model.ages.is_meta:  # built without memory (checkpoint checks): shapes only
        need(model.ages.ndim == 1 and model.ages.numel() >= 2, "its `ages` must be a vector of two ages or more")
    else:
        _check_age_range(model, need)
    if model.composite:
        members = getattr(model, "members", None)
        need(isinstance(members, nn.ModuleList) and len(members) > 0, "a composite model needs `members`")
        for member in members:
            check_contract(member)
        return
    for part in ("backbone", "head"):
        need(isinstance(getattr(model, part, None), nn.Module), f"it has no `{part}` module")


def _check_age_range(model: AgeModel, need) -> None:
    try:
        low, high = model.age_min, model.age_max
    except NotImplementedError:
        low = high = None
    need(all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)) and high > low,
         "age_min and age_max must be the numbers of its age range (a distribution model registers an `ages` buffer)")
    if model.is_distribution:
        need(isinstance(model.ages, torch.Tensor) and model.ages.ndim == 1
             and torch.equal(model.ages.cpu(), age_range(low, high)),
             f"its `ages` must be the integers age_min..age_max ({low:g}..{high:g})")
