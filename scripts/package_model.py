"""Package a trained run's best.pt as a built-in model: agecli/weights/NAME.pt.

  python scripts/package_model.py runs/train/utk-ssrnet-dist [--name default]

Keeps weights, preprocessing and config (no optimizer state) and records the test metrics from the
run's results.json, the data it was trained on and its licence, which `age models` shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint  # noqa: E402

LICENCE = "non-commercial research only"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory made by age train")
    parser.add_argument("--name", default="default")
    parser.add_argument("--trained-on", default="UTKFace train split")
    args = parser.parse_args()
    state = load_checkpoint(args.run / "best.pt")
    results = json.loads((args.run / "results.json").read_text())
    out = ROOT / "agecli" / "weights" / f"{args.name}.pt"
    save_checkpoint(out, model=model_from_checkpoint(state), model_name=state["model"]["name"],
                    model_kwargs=state["model"]["kwargs"], preprocess=state["preprocess"], config=state["config"],
                    epoch=state["epoch"], metrics=state["metrics"],
                    info={"trained_on": args.trained_on, "licence": LICENCE, "test_metrics": results.get("test", {}),
                          "val_metrics": results.get("val", {}), "run": args.run.name})
    print(f"{out} ({out.stat().st_size / 2**20:.2f} MB): test {results.get('test')}")


if __name__ == "__main__":
    main()
