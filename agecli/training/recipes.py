"""The training recipe of `age train MODEL --preset NAME`: which preset family a model trains with."""

from __future__ import annotations

import difflib
from typing import Any

from agecli.config import Config, list_presets, resolve_config
from agecli.errors import AgeCliError


def config_for_model(model: str, preset: str | None, overrides: dict[str, Any] | None = None) -> Config:
    """The config of `age train MODEL --preset NAME`. MODEL is a preset family (ssrnet, mvloss, ...), whose
    preset chooses the model, or a registered model of another name, which trains with its family's
    preset in place of the preset's own model (resnet18 --preset paper: mvloss/paper with ResNet18)."""
    from agecli.models import (  # the registry imports torch; configs need not
        MODELS,
        preset_families,
        preset_family,
    )

    family = preset_family(model)
    # a short preset name (paper) is looked up in MODEL's family, so an unknown MODEL is the error to report
    short_preset = preset and "/" not in preset and not preset.endswith((".yaml", ".yml"))
    if family is None and (not preset or (short_preset and model not in MODELS)):
        models = [name for name, entry in MODELS.items() if entry.family]
        hint = difflib.get_close_matches(model, [*preset_families(), *models], n=1)
        raise AgeCliError(f"unknown model '{model}'{f' (did you mean {hint[0]!r}?)' if hint else ''}; choose a preset "
                          f"family ({', '.join(preset_families())}) or a model ({', '.join(models)})"
                          + ("" if preset else ", or give --preset"))
    cfg = resolve_config(preset or default_preset(family or model), overrides, family=family or model)
    if model in MODELS and family not in (None, model) and "model.name" not in (overrides or {}):
        cfg.model.name = model
    return cfg



def default_preset(family: str) -> str:
    """The preset `age train MODEL` uses without --preset: the family's `paper`, or its only preset."""
    names = [name.split("/")[1] for name in list_presets() if name.split("/")[0] == family]
    if "paper" in names or not names:
        return "paper"  # no presets at all: find_preset names the problem
    if len(names) == 1:
        return names[0]
    raise AgeCliError(f"{family} has no 'paper' preset; choose one with --preset ({', '.join(names)})")
