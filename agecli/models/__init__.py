"""Model registry: `create_model(name, **kwargs)`, `list_models()` and the preset family of each model.

Adding a model is one file in agecli/models/ (a subclass of agecli.models.base.AgeModel) plus one entry
in MODELS; a recipe for it is a preset YAML in presets/FAMILY/. Every model follows the AgeModel contract
(agecli/models/base.py), and create_model checks it on each model it builds. Every model's forward returns a dict:
  "age":    (B,) predicted age in years, always present;
  "logits": (B, K) for distribution heads, over the ages in the model's `ages` buffer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch.nn as nn

from agecli.errors import AgeCliError
from agecli.models.base import AgeModel, check_contract
from agecli.models.efficientnet import EfficientNetLiteAge
from agecli.models.ensemble import AgeEnsemble
from agecli.models.resnet import ResNetAge
from agecli.models.small_resnet import SmallResNet
from agecli.models.ssrnet import SSRNet, SSRNetDist


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # a class or factory taking the model's keyword arguments
    description: str  # one line, shown by `age models`
    family: str = ""  # the folder of presets/ that holds its recipes ("" when it has none)

    def __post_init__(self):
        built = getattr(self.build, "func", self.build)  # a partial's class
        if isinstance(built, type) and not issubclass(built, AgeModel):
            raise TypeError(f"{built.__name__} is not an AgeModel: the registry holds only models that follow "
                            "the contract of agecli/models/base.py")


def _ensemble(**kwargs) -> nn.Module:
    """An ensemble builds its members through this registry, which it cannot import itself."""
    return AgeEnsemble(build_member=create_model, **kwargs)


MODELS: dict[str, ModelEntry] = {
    "ssrnet": ModelEntry(SSRNet, "SSR-Net (Yang et al., IJCAI 2018): soft stagewise regression, 64 px, ~45k params", "ssrnet"),
    "ssrnet_dist": ModelEntry(SSRNetDist, "SSR-Net features with a softmax-over-ages head (mean-variance ready)", "ssrnet"),
    "small_resnet": ModelEntry(SmallResNet, "Compact ResNet for 64-px faces (~0.7M params) with a softmax-over-ages head", "small_resnet"),
    "efficientnet_lite0": ModelEntry(partial(EfficientNetLiteAge, variant="lite0"), "EfficientNet-Lite0 from timm (3.4M params), ImageNet weights offline, softmax-over-ages head", "efficientnet_lite0"),
    "resnet18": ModelEntry(partial(ResNetAge, depth=18), "torchvision ResNet18 with a BN-Dropout-Linear softmax-expectation head", "mvloss"),
    "resnet34": ModelEntry(partial(ResNetAge, depth=34), "torchvision ResNet34 with a BN-Dropout-Linear softmax-expectation head (Pan et al.)", "mvloss"),
    "resnet50": ModelEntry(partial(ResNetAge, depth=50), "torchvision ResNet50 with a BN-Dropout-Linear softmax-expectation head", "mvloss"),
    "ensemble": ModelEntry(_ensemble, "Average of trained age models (any mix of the above) over flipped and shifted views"),
}


def list_models() -> list[str]:
    return list(MODELS)


def create_model(name: str, **kwargs) -> AgeModel:
    """The registered model `name`, built with `kwargs` and checked against the AgeModel contract."""
    if name not in MODELS:
        raise AgeCliError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    try:
        model = MODELS[name].build(**kwargs)
    except TypeError as err:  # an unexpected keyword from a preset or an old checkpoint
        raise AgeCliError(f"model '{name}': {err}") from None
    check_contract(model)
    return model


def preset_families() -> list[str]:
    """The preset families the registry knows, e.g. ssrnet, small_resnet, mvloss."""
    return list(dict.fromkeys(entry.family for entry in MODELS.values() if entry.family))


def preset_family(name: str) -> str | None:
    """The preset family of a model name or of a family name itself; None when neither."""
    if name in MODELS:
        return MODELS[name].family or None
    return name if name in preset_families() else None


def describe(spec: dict) -> str:
    """'ssrnet_dist', or for an ensemble e.g. '5 x ssrnet_dist + 2 x small_resnet + flip + 5 crops, median'."""
    if spec["name"] != "ensemble":
        return spec["name"]
    kw = spec.get("kwargs", {})
    counts = Counter(m["name"] for m in kw.get("members", []))
    views = len(kw.get("shifts") or [[0, 0]])
    return (" + ".join(f"{n} x {name}" for name, n in counts.items()) + (" + flip" if kw.get("flip") else "")
            + (f" + {views} crops" if views > 1 else "") + (", median" if kw.get("point") == "median" else ""))
