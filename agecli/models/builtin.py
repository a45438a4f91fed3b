"""The trained models shipped inside the package (agecli/weights/*.pt), listed by `age models`."""

from __future__ import annotations

from pathlib import Path

from agecli.checkpoint import load_checkpoint, model_from_checkpoint
from agecli.models import describe

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def builtin_models() -> list[dict]:
    """Every shipped model with its architecture, size and the metrics it records."""
    found = []
    for path in sorted(WEIGHTS_DIR.glob("*.pt")):
        state = load_checkpoint(path)
        info = state.get("info", {})
        found.append({"name": path.stem, "path": path, "architecture": describe(state["model"]),
                      "params": sum(p.numel() for p in model_from_checkpoint(state).parameters()),
                      "megabytes": path.stat().st_size / 2**20, "data": info.get("trained_on", ""),
                      "metrics": info.get("test_metrics", state.get("metrics", {})),
                      "licence": info.get("licence", "")})
    return found
