"""An average of trained models of one architecture, optionally with horizontal-flip test-time augmentation.

Members may look at different central parts of the same face crop (the `data.input_size` they were
trained with, cut from one shared `data.cache_size` crop), which makes their errors less alike.

Members are averaged in probability space when they have a distribution head (the age is then the
expectation of the averaged distribution, which equals the mean of the members' ages), and in years
otherwise. Because the averaging lives in forward, `age eval`, `age predict` and `age export` all see
the ensemble as one model with one checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from agecli.errors import AgeCliError


class AgeEnsemble(nn.Module):
    """`members` copies of `member` (built with `member_kwargs`); `flip` also averages mirrored inputs.

    `member_sizes`: the side of the central crop each member sees (None: the whole input).
    """

    def __init__(self, member: str = "ssrnet_dist", members: int = 2, flip: bool = True,
                 member_kwargs: dict | None = None, member_sizes: list | None = None):
        super().__init__()
        from agecli.models import create_model

        if member == "ensemble":
            raise AgeCliError("an ensemble's members cannot be ensembles themselves")
        if int(members) < 1:
            raise AgeCliError(f"an ensemble needs at least one member (got {members})")
        self.members = nn.ModuleList(create_model(member, **(member_kwargs or {})) for _ in range(int(members)))
        self.flip = bool(flip)
        self.member_sizes = [int(s) for s in member_sizes] if member_sizes else [0] * int(members)
        if len(self.member_sizes) != int(members):
            raise AgeCliError(f"member_sizes has {len(self.member_sizes)} entries for {members} members")
        ages = getattr(self.members[0], "ages", None)
        if ages is not None:
            self.register_buffer("ages", ages.clone())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = []
        for model, size in zip(self.members, self.member_sizes):
            view = _center(x, size)
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

    Members must share architecture, model kwargs and preprocessing, or their averaged output would be
    meaningless; only the input size (the central part of the cached crop each sees) may differ. The
    ensemble takes the largest of those sizes; the first member's config is kept.
    """
    from agecli.checkpoint import model_from_checkpoint

    if not states:
        raise AgeCliError("an ensemble needs at least one member checkpoint")
    names = names or [f"member {i + 1}" for i in range(len(states))]
    first = states[0]
    for name, state in zip(names[1:], states[1:]):
        for key, what in (("model", "model"), ("preprocess", "preprocessing")):
            differ = sorted(k for k in {**state[key], **first[key]}
                            if state[key].get(k) != first[key].get(k) and (key, k) != ("preprocess", "size"))
            if differ:
                shown = ", ".join(f"{k}={state[key].get(k)!r} vs {first[key].get(k)!r}" for k in differ)
                raise AgeCliError(f"{name}: its {what} does not match {names[0]}'s ({shown}); "
                                  "ensemble members must match")
    spec = first["model"]
    kwargs = {"member": spec["name"], "members": len(states), "flip": bool(flip),
              "member_kwargs": dict(spec.get("kwargs", {})),
              "member_sizes": [int(s["preprocess"]["size"]) for s in states]}
    model = AgeEnsemble(**kwargs)
    for slot, state in zip(model.members, states):
        slot.load_state_dict(model_from_checkpoint(state).state_dict())
    model.eval()
    preprocess = {**first["preprocess"], "size": max(kwargs["member_sizes"])}
    return {"model": model, "model_name": "ensemble", "model_kwargs": kwargs, "preprocess": preprocess,
            "config": first.get("config", {})}
