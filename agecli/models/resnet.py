"""ResNet backbones from torchvision with the mean-variance paper's head (Pan et al., CVPR 2018).

Head: BN1d(features) -> Dropout(0.5) -> Linear(number of ages); the age is the softmax expectation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

_BUILDERS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}


class ResNetAge(nn.Module):
    def __init__(self, depth: int = 34, num_ages: int = 70, age_min: float = 0.0, dropout: float = 0.5):
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"depth must be one of {sorted(_BUILDERS)}")
        self.depth = depth
        backbone = _BUILDERS[depth](weights=None)
        width = backbone.fc.in_features
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = nn.Sequential(nn.BatchNorm1d(width), nn.Dropout(dropout), nn.Linear(width, num_ages))
        self.register_buffer("ages", torch.arange(num_ages, dtype=torch.float32) + age_min)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict:
        logits = self.head(self.forward_features(x))
        age = (logits.softmax(dim=1) * self.ages).sum(dim=1)
        return {"age": age, "logits": logits}

    def head_parameters(self):
        return self.head.parameters()

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


def imagenet_state_dict(depth: int) -> dict:
    """torchvision's ImageNet weights from the local torch hub cache, else a bounded download attempt."""
    import os
    import threading
    from pathlib import Path

    from agecli.errors import AgeCliError

    url = _WEIGHTS[depth].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
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
        return result["state"]
    reason = str(result.get("error", f"no answer in {DOWNLOAD_TIMEOUT_S} s")).splitlines()[0][:120]
    raise AgeCliError(f"could not download ImageNet weights for resnet{depth} ({reason}); {advice}")


def load_pretrained(model: nn.Module, pretrained: str) -> None:
    """--pretrained imagenet | none | PATH (a torchvision state dict or an agecli checkpoint)."""
    from agecli.checkpoint import load_raw
    from agecli.errors import AgeCliError

    if pretrained in ("", "none"):
        return
    if not isinstance(model, ResNetAge):
        raise AgeCliError(f"--pretrained {pretrained}: only ResNet models take pretrained backbones")
    if pretrained == "imagenet":
        state = imagenet_state_dict(model.depth)
    else:
        state = load_raw(pretrained)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("backbone."): v for k, v in state.items()}
    try:
        model.load_backbone(state)
    except RuntimeError as err:
        raise AgeCliError(f"--pretrained {pretrained}: weights do not fit resnet{model.depth} "
                          f"({str(err).splitlines()[0][:120]})") from None
