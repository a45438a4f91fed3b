"""MAE by the race and gender that UTKFace's file names record, in one age band, for models side by side.

  python benchmarks/error_by_group.py MODEL.pt [MODEL.pt ...] [--data utkface] [--split test] [--ages 30-69]

UTKFace names its files AGE_GENDER_RACE_DATE..., race 0-4 being White, Black, Asian, Indian and Others.
MORPH, where the Lite0 models lose most to the default, is mostly Black men aged 30-69. This shows whether
that gap is already visible on UTKFace faces like them, which no photo benchmark here can say.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.data.cache import open_crops  # noqa: E402
from agecli.modelio.checkpoint import load_model  # noqa: E402
from agecli.training.datasets import load_data
from agecli.training.scoring import predict_crops

RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
NAME = re.compile(r"^\d+_[01]_([0-4])_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--data", default="utkface", help="prepared UTKFace data (name or folder)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ages", default="30-69", help="true-age band, inclusive (all: every face)")
    args = parser.parse_args()
    prepared, df = load_data(args.data)
    rows = df[df["split"] == args.split].copy()
    if args.ages != "all":
        lo, hi = (float(v) for v in args.ages.split("-"))
        rows = rows[rows["age"].between(lo, hi)]
    rows["race"] = [RACES[m.group(1)] if (m := NAME.match(Path(p).name)) else "unknown" for p in rows["path"]]
    errors = {}
    for path in args.models:
        model, preprocess, _ = load_model(path)
        pred = predict_crops(model, open_crops(prepared, preprocess.crop_size), rows["cache_row"].to_numpy(), preprocess)
        errors[path.name] = np.abs(pred["age"] - rows["age"].to_numpy())
    groups = [("all", np.ones(len(rows), bool))]
    groups += [(race, (rows["race"] == race).to_numpy()) for race in [*RACES.values(), "unknown"]]
    genders = {"m": "men", "f": "women"}
    groups += [(word, (rows["gender"] == g).to_numpy()) for g, word in genders.items()]
    groups += [(f"{race} {word}", (rows["race"] == race).to_numpy() & (rows["gender"] == g).to_numpy())
               for race in RACES.values() for g, word in genders.items()]
    print(f"{args.split} split, true ages {args.ages}: MAE in years")
    print("| group | faces | " + " | ".join(errors) + " |")
    print("|---|---:|" + "---:|" * len(errors))
    for name, mask in groups:
        if mask.any():
            print(f"| {name} | {mask.sum():,} | " + " | ".join(f"{e[mask].mean():.2f}" for e in errors.values()) + " |")


if __name__ == "__main__":
    main()
