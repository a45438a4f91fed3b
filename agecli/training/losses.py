"""Losses. Each takes the model's output dict and the true ages (B,) and returns a scalar.

mean_variance follows Pan et al., CVPR 2018: L = L_softmax + lambda_1 * L_mean + lambda_2 * L_var, with
L_mean = mean((m - y)^2) / 2 and L_var = mean(v), where m and v are the mean and variance of the
predicted distribution over ages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agecli.models.base import distribution_moments


def age_to_class(target: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """Index of the nearest age bin; ages outside the range go to the end bins."""
    idx = torch.round(target - ages[0]).long()
    return idx.clamp(0, ages.numel() - 1)


def _need_logits(output: dict, loss: str) -> torch.Tensor:
    if "logits" not in output:
        raise ValueError(f"loss '{loss}' needs a distribution head; this model predicts a single age")
    return output["logits"]


def l1_loss(output: dict, target: torch.Tensor, ages=None) -> torch.Tensor:
    return F.l1_loss(output["age"], target)


def mse_loss(output: dict, target: torch.Tensor, ages=None) -> torch.Tensor:
    return F.mse_loss(output["age"], target)


def softmax_loss(output: dict, target: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_need_logits(output, "softmax"), age_to_class(target, ages))


class MeanVarianceLoss:
    def __init__(self, lambda_mean: float = 0.2, lambda_var: float = 0.05):
        self.lambda_mean = lambda_mean
        self.lambda_var = lambda_var

    def __call__(self, output: dict, target: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
        logits = _need_logits(output, "mean_variance")
        mean, var = distribution_moments(logits, ages)
        softmax = F.cross_entropy(logits, age_to_class(target, ages))
        mean_term = ((mean - target) ** 2).mean() / 2
        return softmax + self.lambda_mean * mean_term + self.lambda_var * var.mean()


def create_loss(name: str, lambda_mean: float = 0.2, lambda_var: float = 0.05):
    if name == "mean_variance":
        return MeanVarianceLoss(lambda_mean, lambda_var)
    return {"l1": l1_loss, "mse": mse_loss, "softmax": softmax_loss}[name]
