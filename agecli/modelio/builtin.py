"""The trained models shipped inside the package (agecli/weights/*.pt): finding them by name, and listing them for `age models`."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from agecli.errors import AgeCliError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # the models shipped in the package (`age models`)


BUILTIN_MODEL = WEIGHTS_DIR / "default.pt"


def builtin_models() -> list[dict]:
    """Every shipped model with its architecture, size and the metrics it records."""
    from agecli.modelio.checkpoint import load_checkpoint, model_from_checkpoint  # torch: not for ONNX users
    from agecli.models import describe

    found = []
    for path in sorted(WEIGHTS_DIR.glob("*.pt")):
        state = load_checkpoint(path)
        info = state.get("info", {})
        metrics = info.get("test_metrics", state.get("metrics", {}))
        # each test source apart where it trained on several: a pooled figure compares with no other model's
        by_source = info.get("test_metrics_by_source") or {state["config"]["data"].get("manifest", "test"): metrics}
        found.append({"name": path.stem, "path": path, "architecture": describe(state["model"]),
                      "params": sum(p.numel() for p in model_from_checkpoint(state).parameters()),
                      "bytes": path.stat().st_size, "data": info.get("trained_on", ""),
                      "metrics": metrics, "by_source": by_source, "licence": info.get("licence", "")})
    return found


def is_shipped(path: str | Path) -> bool:
    """Whether a model file is one of the models shipped inside the package."""
    return Path(path).resolve().parent == WEIGHTS_DIR


def default_model_path() -> Path:
    """The built-in model shipped inside the package, once there is one."""
    if not BUILTIN_MODEL.is_file():
        raise AgeCliError("no built-in model is installed yet; pass --model CHECKPOINT")
    return BUILTIN_MODEL


def resolve_model_path(model: str | Path | None) -> Path:
    """--model as given: a file, or the bare name of a shipped model (`--model lite0`); none: the built-in one.
    A file of that name in the working folder wins over a shipped model."""
    if not model or not str(model).strip():
        return default_model_path()
    path, shipped = Path(model), WEIGHTS_DIR / f"{Path(model).name}.pt"
    bare_name = str(model) == path.name and not path.suffix and not os.path.lexists(path)
    if bare_name and shipped.is_file():
        return shipped
    if bare_name:  # neither a file nor a shipped model: most likely a misspelt name
        names = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))
        hint = difflib.get_close_matches(str(model), names, n=1)
        raise AgeCliError(f"{model}: no such model file or shipped model"
                          f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; shipped: {', '.join(names)}")
    return path
