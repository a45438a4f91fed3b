"""Packaging trained models: one ensemble checkpoint from the checkpoints of its members
(scripts/package_model.py builds the built-in model with it)."""

from __future__ import annotations

from dataclasses import fields, replace

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.modelio.checkpoint import model_from_checkpoint, stored_preprocess
from agecli.models import create_model


def ensemble_from_checkpoints(states: list[dict], flip: bool = True, names: list[str] | None = None,
                              shift: int = 0, point: str = "mean") -> dict:
    """Checkpoint dict of an AgeEnsemble built from loaded member checkpoints (see agecli.modelio.checkpoint).

    Members may differ in architecture, but must share the crop geometry (margin, shift), normalisation and
    age range, or they would not see the same face the same way. They may differ in resolution
    (`crop_size`, the side of the cached crop) and in the central part of it they see (`input_size`). The
    ensemble takes the crop at the largest resolution and the largest share of it any member sees (all
    of it when `shift` is set); each member's view is resized to its own resolution and cut as in its
    training. `shift` > 0 also averages four views moved diagonally by that many pixels; `point` is
    AgeEnsemble's. The first member's config is kept.
    """
    if not states:
        raise AgeCliError("an ensemble needs at least one member checkpoint")
    names = names or [f"member {i + 1}" for i in range(len(states))]
    views = [stored_preprocess(s) for s in states]
    for name, view in zip(names[1:], views[1:]):
        differ = [f.name for f in fields(Preprocess)
                  if f.name not in ("input_size", "crop_size") and getattr(view, f.name) != getattr(views[0], f.name)]
        if differ:
            shown = ", ".join(f"{k}={getattr(view, k)!r} vs {getattr(views[0], k)!r}" for k in differ)
            raise AgeCliError(f"{name}: its preprocessing does not match {names[0]}'s ({shown}); "
                              "ensemble members must match")
    sizes = [v.input_size for v in views]
    caches = [v.crop_size for v in views]
    cache = max(caches)
    share = 1.0 if shift else max(size / c for size, c in zip(sizes, caches))  # of the crop, seen by the ensemble
    side = round(cache * share)  # the ensemble's input, in `cache` pixels
    members = [{"name": s["model"]["name"], "kwargs": dict(s["model"].get("kwargs", {})), "size": size,
                "resize": 0 if c == cache else round(side * c / cache)} for s, size, c in zip(states, sizes, caches)]
    for name, member, c in zip(names, members, caches):
        if shift and (c - member["size"]) // 2 < shift:
            raise AgeCliError(f"{name}: a {shift}-px shift leaves its {member['size']}-px view of the "
                              f"{c}-px crop; use a shift of at most {(c - member['size']) // 2}")
    shifts = [[0, 0]] + ([[d * shift, e * shift] for d in (-1, 1) for e in (-1, 1)] if shift else [])
    kwargs = {"members": members, "flip": bool(flip), "shifts": shifts, "point": point}
    model = create_model("ensemble", **kwargs)
    for slot, state in zip(model.members, states):
        slot.load_state_dict(model_from_checkpoint(state).state_dict())
    model.eval()
    preprocess = replace(views[0], input_size=side, crop_size=cache)
    return {"model": model, "model_name": "ensemble", "model_kwargs": kwargs, "preprocess": preprocess,
            "config": states[0].get("config", {})}


def member_weights(state: dict) -> list[tuple[str, dict]]:
    """(architecture, float weights) of each single network in a checkpoint from load_checkpoint (which has
    restored int8/float16 weights to float32): the network itself, or each member of a packaged ensemble with
    its `members.i.` prefix removed, so a shipped model can start a training run (`age train --init`)."""
    weights = state["state_dict"]
    if state["model"]["name"] != "ensemble":
        return [(state["model"]["name"], weights)]
    found = []
    for i, member in enumerate(state["model"]["kwargs"]["members"]):
        prefix = f"members.{i}."
        found.append((member["name"], {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}))
    return found
