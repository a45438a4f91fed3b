"""Packaging trained models: one ensemble checkpoint from the checkpoints of its members
(scripts/package_model.py builds the built-in model with it)."""

from __future__ import annotations

from agecli.checkpoint import model_from_checkpoint
from agecli.errors import AgeCliError
from agecli.models import create_model


def ensemble_from_checkpoints(states: list[dict], flip: bool = True, names: list[str] | None = None,
                              shift: int = 0, point: str = "mean") -> dict:
    """Checkpoint dict of an AgeEnsemble built from loaded member checkpoints (see agecli.checkpoint).

    Members may differ in architecture, but must share the crop geometry (margin, shift), normalisation and
    age range, or they would not see the same face the same way. They may differ in resolution
    (`cache_size`, the side of the cached crop) and in the central part of it they see (`size`). The
    ensemble takes the crop at the largest resolution and the largest share of it any member sees (all
    of it when `shift` is set); each member's view is resized to its own resolution and cut as in its
    training. `shift` > 0 also averages four views moved diagonally by that many pixels; `point` is
    AgeEnsemble's. The first member's config is kept.
    """
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
    preprocess = {**first["preprocess"], "size": side, "cache_size": cache}
    return {"model": model, "model_name": "ensemble", "model_kwargs": kwargs, "preprocess": preprocess,
            "config": first.get("config", {})}
