"""An average of trained age models over test-time views of each face (mirror image, shifted crops).

Members may differ in architecture, in resolution and in how much of the face crop they see (the
`data.input_size` they were trained with, cut from a `data.cache_size` crop of the same geometry), all of
which makes their errors less alike.

Members are averaged in probability space when they have a distribution head (the age is then the mean
of the averaged distribution, which equals the mean of the members' ages, or its median), and in years
otherwise. Because the averaging lives in forward, `age eval`, `age predict` and `age export` all see
the ensemble as one model with one checkpoint.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from agecli.errors import AgeCliError
from agecli.models.base import AgeModel, expected_age


class AgeEnsemble(AgeModel):
    """An average of `members` over test-time views of each face.

    `members`: one {"name", "kwargs", "size", "resize"} per member: the registry name and arguments it is
    built with; the side the input is first resized to, for members trained on crops cached at another
    resolution (0: none); and the side of the central part of that it sees (0: all of it).
    `flip`: also average each view with its mirror image.
    `shifts`: (dy, dx) offsets in pixels of each member's view from the centre; [[0, 0]] is the centre only.
    `point`: the age reported for an averaged distribution: its "mean", or its "median", the estimate that
    minimises the expected absolute error.
    `spread_temperature`: the returned distribution is the average raised to 1/T and renormalised, which widens
    it (T > 1) so that its spread is calibrated (agecli.training.calibration fits T on validation). The age is taken
    from the average itself, so T never changes it.
    `build_member(name, **kwargs)`: builds a member; the registry passes its create_model (this module cannot
    import the registry, which imports it).
    """

    can_freeze = False  # trained members are averaged, not trained further
    composite = True  # the AgeModel contract's composite model: members, no backbone or head of its own

    def __init__(self, members: list[dict], flip: bool = True, shifts: list | None = None, point: str = "mean",
                 spread_temperature: float = 1.0, *, build_member: Callable[..., nn.Module]):
        super().__init__()
        if not isinstance(members, (list, tuple)) or not members:
            raise AgeCliError("an ensemble needs a list of at least one member ({name, kwargs, size})")
        if any(m.get("name") == "ensemble" for m in members):
            raise AgeCliError("an ensemble's members cannot be ensembles themselves")
        if point not in ("mean", "median"):
            raise AgeCliError(f"ensemble point '{point}' is not mean or median")
        self.members = nn.ModuleList(build_member(m["name"], **m.get("kwargs", {})) for m in members)
        self.member_sizes = [int(m.get("size", 0)) for m in members]
        self.member_resizes = [int(m.get("resize", 0)) for m in members]
        self.flip = bool(flip)
        self.shifts = [(int(dy), int(dx)) for dy, dx in (shifts or [(0, 0)])]
        self.point = point
        self.spread_temperature = float(spread_temperature)
        if not self.spread_temperature > 0:
            raise AgeCliError(f"ensemble spread_temperature must be positive, got {spread_temperature}")
        ages = [model.ages for model in self.members]
        if any(model.is_distribution for model in self.members):
            if any(a is None or not torch.equal(a, ages[0]) for a in ages):
                raise AgeCliError("ensemble members must all have distribution heads over the same ages, or none")
            self.register_buffer("ages", ages[0].clone())
        elif point == "median":
            raise AgeCliError("ensemble point 'median' needs members with distribution heads")

    @property
    def age_min(self) -> float:
        """Its members' range: one range for distribution members; regression members' ranges joined."""
        return min(model.age_min for model in self.members)

    @property
    def age_max(self) -> float:
        return max(model.age_max for model in self.members)

    def forward_features(self, x: torch.Tensor):
        raise NotImplementedError("an ensemble has no features of its own; each of its members has")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        averaged = []  # per member: its distribution (or age) averaged over all views
        for model, size, resize in zip(self.members, self.member_sizes, self.member_resizes):
            if resize and resize != x.shape[-1]:  # bilinear, as SSR-Net's own resize: ONNX-exportable
                x_member = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
            else:
                x_member = x
            views = [_crop(x_member, size, dy, dx) for dy, dx in self.shifts]
            if self.flip:
                views += [v.flip(3) for v in views]
            # one call on all views: at the small batches of `age predict`, calls cost more than images;
            # unflatten keeps the batch size free for ONNX
            out = model(torch.cat(views))
            per_view = out["logits"].softmax(1) if model.is_distribution else out["age"]
            averaged.append(per_view.unflatten(0, (len(views), -1)).mean(0))
        average = torch.stack(averaged).mean(0)
        if not self.is_distribution:
            return {"age": average}
        age = distribution_median(average, self.ages) if self.point == "median" else expected_age(average, self.ages)
        # log of the averaged distribution (tempered): softmax(logits) gives it back, so spreads and exports need
        # no change
        return {"age": age, "logits": average.clamp_min(1e-12).log() / self.spread_temperature}


def distribution_median(probs: torch.Tensor, ages: torch.Tensor) -> torch.Tensor:
    """Median of distributions (B, K) over consecutive integer ages, each age's mass spread evenly over
    [age - 0.5, age + 0.5]. Built from cumsum and gather, so it exports to ONNX."""
    cdf = probs.cumsum(1)
    k = (cdf < 0.5).to(probs.dtype).sum(1, keepdim=True).long().clamp(max=probs.shape[1] - 1)
    mass = probs.gather(1, k)
    below = cdf.gather(1, k) - mass
    return ages[0] + (k.to(probs.dtype) - 0.5 + (0.5 - below) / mass.clamp_min(1e-12)).squeeze(1)


def _crop(x: torch.Tensor, size: int, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """The size x size part of an (N, C, H, W) batch centred as agecli.data.cache.center_crop cuts it,
    moved by (dy, dx) pixels."""
    h, w = x.shape[-2:]
    if size <= 0 or (size >= h and size >= w):
        return x
    top, left = (h - size) // 2 + dy, (w - size) // 2 + dx
    return x[:, :, top: top + size, left: left + size]
