"""The contract every age model follows, written down once.

An age model is an `AgeModel`:
  forward(x) -> {"age": (B,) years} plus, for a distribution model, {"logits": (B, K)} over the integer
  ages in its `ages` buffer; the age is then the softmax expectation (`distribution_stats`).
  forward_features(x) -> what the head reads; forward_head(features) -> the dict above.
  head: the module named `head`; everything else is the backbone. freeze_backbone() trains only the head,
  BatchNorm statistics included, and holds across model.train(). A model without a head that can be
  trained alone sets `can_freeze = False`.
  load_pretrained(source) -> a line saying what was loaded (ImageNet weights, a file); the default refuses.

Distribution models share `DistributionHead` (BN1d -> Dropout -> Linear over the ages, the mean-variance
paper's head) and `distribution_moments` / `distribution_stats` (expectation, variance, spread), so the
formula lives in one place: the losses, `age eval`, `age predict` and the exported graphs all call it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from agecli.errors import AgeCliError


def age_range(age_min: int, age_max: int) -> torch.Tensor:
    if int(age_max) <= int(age_min):
        raise AgeCliError(f"age_max ({age_max}) must be above age_min ({age_min})")
    return torch.arange(int(age_min), int(age_max) + 1, dtype=torch.float32)


def distribution_moments(logits: torch.Tensor, ages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of softmax(logits) over `ages` (the mean-variance loss differentiates both)."""
    p = logits.float().softmax(1)
    ages = ages.to(p.dtype)
    mean = (p * ages).sum(1)
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
    backbone: nn.Module
    head: nn.Module

    def __init__(self):
        super().__init__()
        self._backbone_frozen = False

    def forward_features(self, x: torch.Tensor):
        return self.backbone(x)

    def forward_head(self, features) -> dict[str, torch.Tensor]:
        logits = self.head(features)
        return {"age": (logits.softmax(1) * self.ages).sum(1), "logits": logits}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    @property
    def is_distribution(self) -> bool:
        return getattr(self, "ages", None) is not None

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
