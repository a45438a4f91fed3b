"""ResNet backbones from torchvision with the mean-variance paper's head (Pan et al., CVPR 2018).

Head: BN1d(features) -> Dropout(0.5) -> Linear(number of ages); the age is the softmax expectation.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
import torchvision

from agecli.errors import AgeCliError
from agecli.models.base import AgeModel, DistributionHead, age_range
from agecli.safeload import load_raw

_BUILDERS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


class ResNetAge(AgeModel):
    def __init__(self, depth: int = 34, num_ages: int = 70, age_min: float = 0.0, dropout: float = 0.5):
        super().__init__()
        if depth not in _BUILDERS:
            raise AgeCliError(f"resnet: depth must be one of {sorted(_BUILDERS)}")
        self.depth = depth
        backbone = _BUILDERS[depth](weights=None)
        width = backbone.fc.in_features
        backbone.fc = torch.nn.Identity()
        self.backbone = backbone
        self.head = DistributionHead(width, num_ages, dropout)
        self.register_buffer("ages", age_range(age_min, age_min + num_ages - 1))

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


_WEIGHTS = {
    18: torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    34: torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    50: torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}
DOWNLOAD_TIMEOUT_S = 20


def imagenet_state_dict(depth: int) -> tuple[dict, Path]:
    """torchvision's ImageNet weights from the local torch hub cache, else a bounded download attempt."""
    url = _WEIGHTS[depth].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True), cached
    advice = (f"use --pretrained none to train from scratch, or --pretrained PATH to a local copy of "
              f"{cached.name} (or place it at {cached})")
    if os.environ.get("AGECLI_OFFLINE"):
        raise AgeCliError(f"ImageNet weights for resnet{depth} are not cached and AGECLI_OFFLINE is set; {advice}")
    result: dict = {}

    def fetch() -> None:  # in a thread, so a stalled DNS lookup or socket cannot hang the command
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=False)  # atomic: temp file, then move
            result["state"] = torch.load(cached, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any failure means the same advice
            result["error"] = err

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(DOWNLOAD_TIMEOUT_S)
    if "state" in result:
        return result["state"], cached
    reason = str(result.get("error", f"no answer in {DOWNLOAD_TIMEOUT_S} s")).splitlines()[0][:120]
    raise AgeCliError(f"could not download ImageNet weights for resnet{depth} ({reason}); {advice}")

