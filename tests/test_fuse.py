"""Folding BatchNorm into convolutions for inference (agecli/models/fuse.py)."""

import pytest
import torch
from test_model_contract import SMALL
from torch import nn

from agecli.models import create_model, list_models
from agecli.models.fuse import fold_batchnorm


def _randomise_batchnorm(model: nn.Module) -> None:
    """Trained-looking statistics, so that a wrong fold shows (fresh BatchNorm is the identity)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.mark.parametrize("name", list_models())
def test_folded_models_give_the_same_ages(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {})).eval()
    _randomise_batchnorm(model)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        bn_before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        folded = fold_batchnorm(model)
        after = model(x)
    bn_after = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert bn_before - bn_after == folded
    if name.startswith(("efficientnet", "resnet", "small_resnet")):
        assert bn_after == 0, f"{bn_after} of {bn_before} BatchNorm layers left unfolded"
    assert torch.allclose(before["age"], after["age"], atol=1e-3)
    if "logits" in before:
        a, b = before["logits"], after["logits"]
        assert (a - b).abs().max() <= 1e-4 * (1 + a.abs().max())


class _SharedOutput(nn.Module):
    """A convolution whose output feeds a BatchNorm and a skip: folding it would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_convolution_used_twice_is_left_alone():
    model = _SharedOutput().eval()
    _randomise_batchnorm(model)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 0
        assert torch.equal(model(x), before)


def test_a_training_model_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(create_model("small_resnet").train())
