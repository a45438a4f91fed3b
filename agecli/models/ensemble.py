"""An average of trained models of one architecture, optionally with horizontal-flip test-time augmentation.

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
    """`members` copies of `member` (built with `member_kwargs`); `flip` also averages mirrored inputs."""

    def __init__(self, member: str = "ssrnet_dist", members: int = 2, flip: bool = True,
                 member_kwargs: dict | None = None):
        super().__init__()
        from agecli.models import create_model

        if member == "ensemble":
            raise AgeCliError("an ensemble's members cannot be ensembles themselves")
        if int(members) < 1:
            raise AgeCliError(f"an ensemble needs at least one member (got {members})")
        self.members = nn.ModuleList(create_model(member, **(member_kwargs or {})) for _ in range(int(members)))
        self.flip = bool(flip)
        ages = getattr(self.members[0], "ages", None)
        if ages is not None:
            self.register_buffer("ages", ages.clone())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        views = [x, x.flip(3)] if self.flip else [x]
        outs = [m(v) for m in self.members for v in views]
        if "logits" not in outs[0]:
            return {"age": torch.stack([o["age"] for o in outs]).mean(0)}
        probs = torch.stack([o["logits"].softmax(1) for o in outs]).mean(0)
        # log of the averaged distribution: softmax(logits) gives it back, so spreads and exports need no change
        return {"age": (probs * self.ages).sum(1), "logits": probs.clamp_min(1e-12).log()}


def ensemble_from_checkpoints(states: list[dict], flip: bool = True, names: list[str] | None = None) -> dict:
    """Checkpoint dict of an AgeEnsemble built from loaded member checkpoints (see agecli.checkpoint).

    Members must share architecture, model kwargs and preprocessing, or their averaged output would be
    meaningless; the first member's config and preprocessing are kept.
    """
    from agecli.checkpoint import model_from_checkpoint

    if not states:
        raise AgeCliError("an ensemble needs at least one member checkpoint")
    names = names or [f"member {i + 1}" for i in range(len(states))]
    first = states[0]
    for name, state in zip(names[1:], states[1:]):
        for key, what in (("model", "model"), ("preprocess", "preprocessing")):
            differ = sorted(k for k in {**state[key], **first[key]} if state[key].get(k) != first[key].get(k))
            if differ:
                shown = ", ".join(f"{k}={state[key].get(k)!r} vs {first[key].get(k)!r}" for k in differ)
                raise AgeCliError(f"{name}: its {what} does not match {names[0]}'s ({shown}); "
                                  "ensemble members must match")
    spec = first["model"]
    kwargs = {"member": spec["name"], "members": len(states), "flip": bool(flip),
              "member_kwargs": dict(spec.get("kwargs", {}))}
    model = AgeEnsemble(**kwargs)
    for slot, state in zip(model.members, states):
        slot.load_state_dict(model_from_checkpoint(state).state_dict())
    model.eval()
    return {"model": model, "model_name": "ensemble", "model_kwargs": kwargs, "preprocess": first["preprocess"],
            "config": first.get("config", {})}
