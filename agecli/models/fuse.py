"""Fold inference-time BatchNorm into the convolution before it, for faster CPU inference.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be merged into the
convolution's weights and bias: one pass over the activations fewer per layer, the same outputs up to
float rounding. Which BatchNorm follows which convolution is read from the traced graph (torch.fx), not
guessed from module order, and only a convolution whose output feeds that BatchNorm alone is folded.
timm's BatchNormAct2d (BatchNorm, then dropout and activation) keeps its activation.
"""

from __future__ import annotations

import torch
from torch import fx, nn


class _BatchNormLeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of an eval-mode model in place; returns how many were folded.
    A module that cannot be traced is searched child by child."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    try:
        graph = _BatchNormLeafTracer().trace(model)
    except Exception:  # fx cannot trace data-dependent control flow; its children may still trace
        return sum(fold_batchnorm(child) for child in model.children())
    modules = dict(model.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1):
            continue
        conv, bn = modules.get(source.target), modules[node.target]
        if type(conv) is not nn.Conv2d or not bn.track_running_stats or bn.running_mean is None:
            continue
        _merge(conv, bn)
        _replace(model, node.target, _after_norm(bn))
        folded += 1
    return folded


@torch.no_grad()
def _merge(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias * scale + shift)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BatchNorm once folded: nothing, or timm's dropout + activation."""
    parts = [m for name in ("drop", "act") if isinstance(m := getattr(bn, name, None), nn.Module)
             and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _replace(model: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, name = qualname.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, name, new)
