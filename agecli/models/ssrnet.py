"""SSR-Net: Yang, Huang, Lin, Hsiu, Chuang, "SSR-Net: A Compact Soft Stagewise Regression Network
for Age Estimation", IJCAI 2018.

The idea: instead of regressing age directly, split the range [0, V] coarse-to-fine into K stages of
s_k bins each. Stage k predicts a distribution p_k over its bins, a per-bin shift eta_k in (-1, 1)
("dynamic index shifting") and a bin-width scale delta_k in (-1, 1) ("dynamic range"). The age is

    y = V * sum_k  sum_i p_k,i * (i + lambda_local * eta_k,i)  /  prod_{j<=k} s_j * (1 + lambda_d * delta_j)

Two streams (A: ReLU + average pooling, 32 channels; B: tanh + max pooling, 16 channels) see the same
64x64 image; stage 1 (coarsest) reads the deepest features, stage K the shallowest. At every stage a
fusion block multiplies the two streams' features and yields p, eta and delta.

Where this follows the authors' released code (and the public PyTorch port, whose weights
`agecli.modelio.ssrnet_port` imports) rather than the paper's text -- needed to reproduce the port's outputs:
  * p_k comes out of a ReLU, not a softmax, so it is not normalised (and the age is not clamped
    to [0, V]);
  * there is no pooling after the 4th conv block: stage 1 reads the 8x8 map of the last block;
  * delta_k is computed from the product of the two streams' 1x1-reduced features before the
    prediction blocks (and their dropout), eta_k and p_k after them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agecli.errors import AgeCliError
from agecli.models.base import AgeModel, age_range

REDUCED_CHANNELS = 10  # 1x1 conv width in the fusion blocks (paper and released code)
# Pooling applied to each stage's features before the fusion block, stage 1 (deepest) first:
# the 8x8 map is used as is, the 16x16 and 32x32 maps are both brought to 4x4.
FUSION_POOL = (1, 4, 8)


def _pool(x: torch.Tensor, k: int, kind: str) -> torch.Tensor:
    if k == 1:  # a Python int fixed at build time, so tracing/export sees no data-dependent branch
        return x
    return F.avg_pool2d(x, k) if kind == "avg" else F.max_pool2d(x, k)


def _act_pool(x: torch.Tensor, act: str, k: int, kind: str) -> torch.Tensor:
    """act(x) then k x k pooling, with the cheaper of two orders that give identical values.

    Max pooling commutes with an increasing activation (ReLU, tanh): max(f(x)) == f(max(x)) exactly, so
    pooling first applies f to 1/k^2 of the values. Average pooling does not commute, so it comes after.
    `x` must be a fresh intermediate: the activation runs in place (no extra full-size buffer).
    """
    if kind == "max":
        x = _pool(x, k, kind)
        return torch.relu_(x) if act == "relu" else torch.tanh_(x)
    x = torch.relu_(x) if act == "relu" else torch.tanh_(x)
    return _pool(x, k, kind)


def reduce_streams(conv_a: nn.Conv2d, conv_b: nn.Conv2d, fa: torch.Tensor, fb: torch.Tensor, pool: int):
    """A stage's fusion input: 1x1 conv + ReLU, each stream's own pooling (A avg, B max), flattened."""
    ra = _act_pool(conv_a(fa), "relu", pool, "avg").flatten(1)
    rb = _act_pool(conv_b(fb), "relu", pool, "max").flatten(1)
    return ra, rb


class ConvBNAct(nn.Module):
    """3x3 conv (with bias, as in the released code) -> BatchNorm -> ReLU or tanh -> optional 2x2 pooling."""

    def __init__(self, cin: int, cout: int, act: str, pool: str = ""):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act  # "relu" or "tanh"
        self.pool = pool  # "avg", "max" or "" (none)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _act_pool(self.bn(self.conv(x)), self.act, 2 if self.pool else 1, self.pool or "avg")


class Stream(nn.Module):
    """Four conv blocks with 2x2 pooling after the first three.

    Returns the stage features coarse-to-fine: [block4 (H/8), pooled block2 (H/4), pooled block1 (H/2)].
    """

    def __init__(self, channels: int, act: str, pool: str):
        super().__init__()
        self.kind = pool  # "avg" (stream A) or "max" (stream B)
        self.block1 = ConvBNAct(3, channels, act, pool)
        self.block2 = ConvBNAct(channels, channels, act, pool)
        self.block3 = ConvBNAct(channels, channels, act, pool)
        self.block4 = ConvBNAct(channels, channels, act)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.block1(x)
        f2 = self.block2(f1)
        return [self.block4(self.block3(f2)), f2, f1]


class FusionBlock(nn.Module):
    """One stage's head: both streams -> (p, eta, delta) for s bins."""

    def __init__(self, ch_a: int, ch_b: int, flat: int, bins: int, dropout: float):
        super().__init__()
        self.reduce_a = nn.Conv2d(ch_a, REDUCED_CHANNELS, 1)
        self.reduce_b = nn.Conv2d(ch_b, REDUCED_CHANNELS, 1)
        self.drop = nn.Dropout(dropout)
        self.pred_a = nn.Linear(flat, bins)  # the "prediction blocks" of each stream
        self.pred_b = nn.Linear(flat, bins)
        self.fc = nn.Linear(bins, 2 * bins)
        self.p = nn.Linear(2 * bins, bins)  # bin "probabilities" (ReLU, unnormalised: see module doc)
        self.eta = nn.Linear(2 * bins, bins)  # dynamic index shift per bin
        self.delta = nn.Linear(flat, 1)  # dynamic range: scales this stage's bin width

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, pool: int):
        ra, rb = reduce_streams(self.reduce_a, self.reduce_b, fa, fb, pool)
        delta = torch.tanh(self.delta(ra * rb)).squeeze(1)
        h = F.relu(self.pred_a(self.drop(ra))) * F.relu(self.pred_b(self.drop(rb)))
        h = F.relu(self.fc(h))
        return F.relu(self.p(h)), torch.tanh(self.eta(h)), delta


def _check_size(image_size: int) -> None:
    if image_size % 16 != 0 or image_size <= 0:
        raise AgeCliError(f"SSR-Net needs an image size divisible by 16, got {image_size}")


class TwoStreams(nn.Module):
    """The backbone both heads share: streams A and B, features per stage (coarse-to-fine)."""

    def __init__(self, image_size: int = 64):
        super().__init__()
        _check_size(image_size)
        self.image_size = int(image_size)
        self.stream_a = Stream(32, "relu", "avg")
        self.stream_b = Stream(16, "tanh", "max")
        # Spatial side of each stage's map after fusion pooling: 8, 4, 4 at 64 px.
        sides = (image_size // 8, image_size // 4, image_size // 2)
        self.flat_sizes = [REDUCED_CHANNELS * (s // p) ** 2 for s, p in zip(sides, FUSION_POOL)]

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            # a larger crop (more context) at the backbone's own resolution; training does the same resize
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return list(zip(self.stream_a(x), self.stream_b(x)))


def _init_weights(model: nn.Module) -> None:
    # Kaiming for convs (ReLU nets); Linear layers keep PyTorch's default, which is close to the
    # Glorot-style init the authors' Keras code trained with.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)


class SSRNet(AgeModel):
    """SSR-Net with the soft stagewise regression head; forward -> {"age": (B,)}.

    A regression model in the AgeModel contract: no `ages`, no logits, no spread; it covers ages 0 to V (its
    output is not clamped to them). Its head is the three fusion blocks, stored as `fuse` (the state dict keys
    the SSR-Net port's weights map onto); they read every stream at three depths, so it has no head that
    trains alone.
    """

    can_freeze = False
    age_min = 0.0

    def __init__(
        self,
        stage_num: tuple[int, ...] | list[int] = (3, 3, 3),
        lambda_local: float = 1.0,
        lambda_d: float = 1.0,
        V: float = 101.0,
        image_size: int = 64,
        dropout: float = 0.2,
    ):
        super().__init__()
        if len(stage_num) != 3:
            raise AgeCliError(f"SSR-Net has 3 stages, got stage_num={list(stage_num)}")
        self.stage_num = [int(s) for s in stage_num]
        self.lambda_local = float(lambda_local)
        self.lambda_d = float(lambda_d)
        self.V = float(V)
        self.backbone = TwoStreams(image_size)
        self.fuse = nn.ModuleList(
            FusionBlock(32, 16, flat, bins, dropout)
            for flat, bins in zip(self.backbone.flat_sizes, self.stage_num)
        )
        _init_weights(self)

    @property
    def age_max(self) -> float:
        return self.V

    @property
    def head(self) -> nn.ModuleList:
        """The stage fusion blocks: (stream A map, stream B map) per stage -> (p, eta, delta)."""
        return self.fuse

    def forward_features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per stage (coarsest first): (stream A map, stream B map)."""
        return self.backbone(x)

    def stage_outputs(self, feats) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per stage: (p (B,s), eta (B,s), delta (B,))."""
        return [block(fa, fb, pool) for block, (fa, fb), pool in zip(self.fuse, feats, FUSION_POOL)]

    def forward_head(self, feats) -> dict[str, torch.Tensor]:
        age = 0.0
        width = 1.0  # product over stages so far of s_j * (1 + lambda_d * delta_j)
        for (p, eta, delta), s in zip(self.stage_outputs(feats), self.stage_num):
            index = torch.arange(s, dtype=p.dtype, device=p.device)
            width = width * (s * (1.0 + self.lambda_d * delta))
            age = age + (p * (index + self.lambda_local * eta)).sum(1) / width
        return {"age": age * self.V}


class SSRNetDist(AgeModel):
    """SSR-Net's two streams with a softmax-over-integer-ages head (for DLDL / mean-variance losses).

    Each stage's streams are reduced and fused by an elementwise product, as in SSR-Net; the three
    fused vectors are concatenated (forward_features) and the head, Dropout -> Linear, gives one logit per age
    in `ages`. Its head is not the shared DistributionHead (which adds a BatchNorm1d): the checkpoints trained
    with this one would no longer load. forward -> {"age": softmax expectation (B,), "logits": (B, K)}.
    """

    def __init__(self, age_min: int = 0, age_max: int = 100, dropout: float = 0.2, image_size: int = 64):
        super().__init__()
        ages = age_range(age_min, age_max)
        self.backbone = TwoStreams(image_size)
        self.reduce_a = nn.ModuleList(nn.Conv2d(32, REDUCED_CHANNELS, 1) for _ in FUSION_POOL)
        self.reduce_b = nn.ModuleList(nn.Conv2d(16, REDUCED_CHANNELS, 1) for _ in FUSION_POOL)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(sum(self.backbone.flat_sizes), len(ages)))
        self.register_buffer("ages", ages)
        self.rename_legacy_keys({"classifier.": "head.1."})  # checkpoints from before the shared contract
        _init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 960) at 64 px: per stage, reduced stream A times reduced stream B, concatenated."""
        fused = []
        for conv_a, conv_b, (fa, fb), pool in zip(self.reduce_a, self.reduce_b, self.backbone(x), FUSION_POOL):
            ra, rb = reduce_streams(conv_a, conv_b, fa, fb, pool)
            fused.append(ra * rb)
        return torch.cat(fused, 1)
