"""ResNet backbones from torchvision with the mean-variance paper's head (Pan et al., CVPR 2018).

Head: BN1d(features) -> Dropout(0.5) -> Linear(number of ages); the age is the softmax expectation.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agecli.errors import AgeCliError
from agecli.files.safe_load import load_raw
from agecli.models.base import AgeModel, DistributionHead, age_range

DEPTHS = (18, 34, 50)


def _torchvision_models():
    import torchvision.models  # here, not at the top: it takes over a second that `age predict` need not pay

    return torchvision.models


class ResNetAge(AgeModel):
    """Ages age_min..age_max (the paper's 0-69 by default). `num_ages` is the older spelling of the range that
    checkpoints saved before age_max hold: age_max = age_min + num_ages - 1."""

    def __init__(self, depth: int = 34, age_min: float = 0.0, age_max: float | None = None, dropout: float = 0.5,
                 num_ages: int | None = None):
        super().__init__()
        if depth not in DEPTHS:
            raise AgeCliError(f"resnet: depth must be one of {list(DEPTHS)}")
        age_max = _age_max(age_min, age_max, num_ages)
        self.depth = depth
        backbone = getattr(_torchvision_models(), f"resnet{depth}")(weights=None)
        width = backbone.fc.in_features
        backbone.fc = torch.nn.Identity()
        self.backbone = backbone
        ages = age_range(age_min, age_max)
        self.head = DistributionHead(width, len(ages), dropout)
        self.register_buffer("ages", ages)

    def load_pretrained(self, source: str) -> str:
        """--pretrained imagenet | PATH (a torchvision state dict or an agecli checkpoint)."""
        if source == "imagenet":
            state, where = imagenet_state_dict(self.depth)
        else:
            state, where = load_raw(source), source
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            state = {k.removeprefix("backbone."): v for k, v in state.items()}
        try:
            self.load_backbone(state)
        except RuntimeError as err:
            raise AgeCliError(f"--pretrained {source}: weights do not fit resnet{self.depth} "
                              f"({str(err).splitlines()[0][:120]})") from None
        return f"loaded resnet{self.depth} ImageNet weights from {where}"

    def load_backbone(self, state_dict: dict) -> None:
        """Load torchvision ImageNet weights; their 1000-class fc layer is dropped."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        self.backbone.load_state_dict(state_dict, strict=True)


def _age_max(age_min: float, age_max: float | None, num_ages: int | None) -> float:
    """The top age from age_max, or from the older num_ages; both given must agree."""
    from_count = None if num_ages is None else age_min + int(num_ages) - 1
    if age_max is not None and from_count is not None and float(age_max) != from_count:
        raise AgeCliError(f"resnet: num_ages={num_ages} and age_max={age_max} disagree (num_ages ages from age_min "
                          f"{age_min:g} end at {from_count:g}); give age_max only")
    return float(age_max if age_max is not None else from_count if from_count is not None else age_min + 69)


def imagenet_state_dict(depth: int) -> tuple[dict, Path]:
    """torchvision's ImageNet weights from the local torch hub cache; nothing is ever downloaded."""
    weights = getattr(_torchvision_models(), f"ResNet{depth}_Weights").IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise AgeCliError(f"ImageNet weights for resnet{depth} are not on this machine ({cached}) and agecli never "
                          f"downloads; use --pretrained none to train from scratch, or --pretrained PATH to a local "
                          f"copy of {cached.name}")
    return torch.load(cached, map_location="cpu", weights_only=True), cached
