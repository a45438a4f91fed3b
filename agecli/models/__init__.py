"""Model registry: `create_model(name, **kwargs)` and `list_models()`.

Adding a model is one file plus one line in MODELS. Every model's forward returns a dict:
  "age":    (B,) predicted age in years, always present;
  "logits": (B, K) for distribution heads, over the ages in the model's `ages` buffer.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import torch.nn as nn

from agecli.errors import AgeCliError


def _ssrnet(**kwargs) -> nn.Module:
    from agecli.models.ssrnet import SSRNet

    return SSRNet(**kwargs)


def _ssrnet_dist(**kwargs) -> nn.Module:
    from agecli.models.ssrnet import SSRNetDist

    return SSRNetDist(**kwargs)


def _small_resnet(**kwargs) -> nn.Module:
    from agecli.models.small_resnet import SmallResNet

    return SmallResNet(**kwargs)


def _ensemble(**kwargs) -> nn.Module:
    from agecli.models.ensemble import AgeEnsemble

    return AgeEnsemble(**kwargs)


def _efficientnet(variant: str) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from agecli.models.efficientnet import EfficientNetLiteAge

        return EfficientNetLiteAge(variant=variant, **kwargs)

    return build


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(**kwargs) -> nn.Module:
        from agecli.models.resnet import ResNetAge

        return ResNetAge(depth=depth, **kwargs)

    return build


# name -> (builder, one-line description)
MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "ssrnet": (_ssrnet, "SSR-Net (Yang et al., IJCAI 2018): soft stagewise regression, 64 px, ~45k params"),
    "ssrnet_dist": (_ssrnet_dist, "SSR-Net features with a softmax-over-ages head (mean-variance ready)"),
    "small_resnet": (_small_resnet, "Compact ResNet for 64-px faces (~0.7M params) with a softmax-over-ages head"),
    "efficientnet_lite0": (_efficientnet("lite0"), "EfficientNet-Lite0 from timm (3.4M params), ImageNet weights offline, softmax-over-ages head"),
    "resnet18": (_resnet(18), "torchvision ResNet18 with a BN-Dropout-Linear softmax-expectation head"),
    "resnet34": (_resnet(34), "torchvision ResNet34 with a BN-Dropout-Linear softmax-expectation head (Pan et al.)"),
    "resnet50": (_resnet(50), "torchvision ResNet50 with a BN-Dropout-Linear softmax-expectation head"),
    "ensemble": (_ensemble, "Average of trained age models (any mix of the above) over flipped and shifted views"),
}


WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def builtin_models() -> list[dict]:
    """Trained models shipped inside the package (agecli/weights/*.pt), with the metrics they record."""
    from agecli.checkpoint import load_checkpoint, model_from_checkpoint

    found = []
    for path in sorted(WEIGHTS_DIR.glob("*.pt")):
        state = load_checkpoint(path)
        info = state.get("info", {})
        found.append({"name": path.stem, "path": path, "architecture": describe(state["model"]),
                      "params": sum(p.numel() for p in model_from_checkpoint(state).parameters()),
                      "megabytes": path.stat().st_size / 2**20, "data": info.get("trained_on", ""),
                      "metrics": info.get("test_metrics", state.get("metrics", {})),
                      "licence": info.get("licence", "")})
    return found


def describe(spec: dict) -> str:
    """'ssrnet_dist', or for an ensemble e.g. '5 x ssrnet_dist + 2 x small_resnet + flip + 5 crops, median'."""
    if spec["name"] != "ensemble":
        return spec["name"]
    kw = spec.get("kwargs", {})
    counts = Counter(m["name"] for m in kw.get("members", []))
    views = len(kw.get("shifts") or [[0, 0]])
    return (" + ".join(f"{n} x {name}" for name, n in counts.items()) + (" + flip" if kw.get("flip") else "")
            + (f" + {views} crops" if views > 1 else "") + (", median" if kw.get("point") == "median" else ""))


def list_models() -> list[str]:
    return list(MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in MODELS:
        raise AgeCliError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    builder, _ = MODELS[name]
    try:
        return builder(**kwargs)
    except TypeError as err:  # an unexpected keyword from a preset or an old checkpoint
        raise AgeCliError(f"model '{name}': {err}") from None
