"""Whole-image faces (`age predict --no-detect`) decode JPEGs at reduced scale: what it costs in accuracy.

  python benchmarks/reduced_decode.py [--model CHECKPOINT] [--prepared prepared/utkface] [--split test]

Runs the model on the chips of a prepared UTKFace split twice, once decoded in full and once at reduced
scale (as `age predict` does), and prints both MAEs, how much one face's age changes (beside how much it
changes for the mirror image) and the decode rates. Needs `age prepare utkface --root DIR` first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.data.imageio import load_image  # noqa: E402
from agecli.predict import Predictor  # noqa: E402


def ages_of(predictor: Predictor, images: list[np.ndarray], batch: int = 64, mirror: bool = False) -> np.ndarray:
    crops = np.stack([predictor.crops(image[:, ::-1] if mirror else image, None)[0] for image in images])
    return np.concatenate([predictor.backend.run(crops[i: i + batch])[0] for i in range(0, len(crops), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or .onnx (default: the built-in model)")
    parser.add_argument("--prepared", type=Path, default=Path("prepared/utkface"))
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    rows = pd.read_csv(args.prepared / "manifest.csv")
    rows = rows[rows["split"] == args.split]
    predictor = Predictor(args.model, detector="none", device="cpu")
    t0 = time.perf_counter()
    full = [load_image(p) for p in rows["path"]]
    t1 = time.perf_counter()
    reduced = [predictor.read(p)[0] for p in rows["path"]]
    t2 = time.perf_counter()
    truth = rows["age"].to_numpy(float)
    a, b = ages_of(predictor, full), ages_of(predictor, reduced)
    print(f"{len(rows)} {args.split} chips, {predictor.model_path.name}")
    print(f"full decode:    MAE {np.abs(a - truth).mean():.3f}   {len(rows) / (t1 - t0):,.0f} images/s (1 thread)")
    print(f"reduced decode: MAE {np.abs(b - truth).mean():.3f}   {len(rows) / (t2 - t1):,.0f} images/s (1 thread)")
    print(f"age change per face: mean {np.abs(a - b).mean():.3f}, largest {np.abs(a - b).max():.2f} years")
    m = ages_of(predictor, full, mirror=True)  # for scale: how much the model's age moves for the mirror image
    print(f"for comparison, the mirror image: mean change {np.abs(a - m).mean():.3f}, largest {np.abs(a - m).max():.2f} years")


if __name__ == "__main__":
    main()
