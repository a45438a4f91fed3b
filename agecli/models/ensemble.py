"""An average of trained age models, optionally with horizontal-flip test-time augmentation.

Members may differ in architecture, in resolution and in how much of the face crop they see (the
`data.input_size` they were trained with, cut from a `data.cache_size` crop of the same geometry), all of
which makes their errors less alike.

Members are averaged in probability space when they have a distribution head (the age is then the
expectation of the averaged distribution, which equals the mean of the members' ages), and in years
otherwise. Because the averaging lives in forward, `age eval`, `age predict` and `age export` all see
the ensemble as one model with one checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from agecli.errors import AgeCliError


class AgeEnsemble(nn.Module):
    """An average of `members`; `flip` also averages each face with its mirror image.

    `members`: one {"name", "kwargs", "size", "resize"} per member: the registry name and arguments it is
    built with; the side the input is first resized to, for members trained on crops cached at another
    resolution (0: none); and the side of the central part of that it sees (0: all of it).
    """

    def __init__(self, members: list[dict], flip: bool = True):
        super().__init__()
        from agecli.models import create_model

        if not isinstance(members, (list, tuple)) or not members:
            raise AgeCliError("an ensemble needs a list of at least one member ({name, kwargs, size})")
        if any(m.get("name") == "ensemble" for m in members):
            raise AgeCliError("an ensemble's members cannot be ensembles themselves")
        self.members = nn.ModuleList(create_model(m["name"], **m.get("kwargs", {})) for m in members)
        self.member_sizes = [int(m.get("size", 0)) for m in members]
        self.member_resizes = [int(m.get("resize", 0)) for m in members]
        self.flip = bool(flip)
        ages = [getattr(model, "ages", None) for model in self.members]
        if any(a is not None for a in ages):
            if any(a is None or not torch.equal(a, ages[0]) for a in ages):
                raise AgeCliError("ensemble members must all have distribution heads over the same ages, or none")
            self.register_buffer("ages", ages[0].clone())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = []
        for model, size, resize in zip(self.members, self.member_sizes, self.member_resizes):
            if resize and resize != x.shape[-1]:  # bilinear, as SSR-Net's own resize: ONNX-exportable
                x_member = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
            else:
                x_member = x
            view = _center(x_member, size)
            if self.flip:  # one call on both views: at the small batches of `age predict`, calls cost more than images
                both = {k: v.unflatten(0, (2, -1)) for k, v in model(torch.cat([view, view.flip(3)])).items()}
                outs += [{k: v[0] for k, v in both.items()}, {k: v[1] for k, v in both.items()}]  # batch-size free
            else:
                outs.append(model(view))
        if "logits" not in outs[0]:
            return {"age": torch.stack([o["age"] for o in outs]).mean(0)}
        probs = torch.stack([o["logits"].softmax(1) for o in outs]).mean(0)
        # log of the averaged distribution: softmax(logits) gives it back, so spreads and exports need no change
        return {"age": (probs * self.ages).sum(1), "logits": probs.clamp_min(1e-12).log()}


def _center(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size of an (N, C, H, W) batch, as agecli.data.cache.center_crop cuts it."""
    h, w = x.shape[-2:]
    if size <= 0 or (size >= h and size >= w):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, :, top: top + size, left: left + size]


def ensemble_from_checkpoints(states: list[dict], flip: bool = True, names: list[str] | None = None) -> dict:
    """Checkpoint dict of an AgeEnsemble built from loaded member checkpoints (see agecli.checkpoint).

    Members may differ in architecture, but must share the crop geometry (margin, shift), normalisation and
    age range, or they would not see the same face the same way. They may differ in resolution
    (`cache_size`, the side of the cached crop) and in the central part of it they see (`size`). The
    ensemble takes the crop at the largest resolution and the largest share of it any member sees; each
    member's view is resized to its own resolution and cut as in its training. The first member's config
    is kept.
    """
    from agecli.checkpoint import model_from_checkpoint

    if not states:
        raise AgeCliError("an ensemble needs at least one member checkpoint")
    names = names or [f"member {i + 1}" for i in range(len(states))]
    first = states[0]
    free = ("size", "cache_size")
    for name, state in zip(names[1:], states[1:]):
        differ = sorted(k for k in {**state["preprocess"], **first["preprocess"]}
                        if state["preprocess"].get(k) != first["preprocess"].get(k) and k not in free)
        if differ:
            shown = ", ".join(f"{k}={state['preprocess'].get(k)!r} vs {first['preprocess'].get(k)!r}" for k in differ)
            raise AgeCliError(f"{name}: its preprocessing does not match {names[0]}'s ({shown}); "
                              "ensemble members must match")
    sizes = [int(s["preprocess"]["size"]) for s in states]
    caches = [int(s["preprocess"].get("cache_size") or s["preprocess"]["size"]) for s in states]
    cache = max(caches)
    side = round(cache * max(size / c for size, c in zip(sizes, caches)))  # the ensemble's input, in `cache` pixels
    members = [{"name": s["model"]["name"], "kwargs": dict(s["model"].get("kwargs", {})), "size": size,
                "resize": 0 if c == cache else round(side * c / cache)} for s, size, c in zip(states, sizes, caches)]
    kwargs = {"members": members, "flip": bool(flip)}
    model = AgeEnsemble(**kwargs)
    for slot, state in zip(model.members, states):
        slot.load_state_dict(model_from_checkpoint(state).state_dict())
    model.eval()
    preprocess = {**first["preprocess"], "size": side, "cache_size": cache}
    return {"model": model, "model_name": "ensemble", "model_kwargs": kwargs, "preprocess": preprocess,
            "config": first.get("config", {})}
