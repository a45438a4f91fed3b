"""How much the crop geometry matters on full photos: MAE of a model on MORPH for a few margins and shifts.

  python benchmarks/crop_geometry.py [--model CHECKPOINT] [--data ../shared/data] [--photos 300]
                                    [--margins -0.03,0.05,0.15] [--shifts 0,0.08]

Uses the even-numbered MORPH subjects only (a calibration half), so that benchmarks/photo_path.py can
report on all photos without this sweep having chosen anything on them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.data import crops, preprocess
from agecli.data.imageio import load_image  # noqa: E402
from agecli.predict.predictor import Predictor  # noqa: E402

NAME = re.compile(r"^(\d+)_\d+[MF](\d+)\.JPG$", re.IGNORECASE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the built-in model)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--margins", default="-0.03,0.05,0.15", help="margins to try, comma-separated")
    parser.add_argument("--shifts", default=f"0,{preprocess.DEFAULT_SHIFT}", help="downward shifts to try, comma-separated")
    args = parser.parse_args()
    predictor = Predictor(args.model, device="cpu")
    paths = [p for p in sorted((args.data / "morph").iterdir())
             if NAME.match(p.name) and int(NAME.match(p.name).group(1)) % 2 == 0][: args.photos]
    images = [load_image(p) for p in paths]
    ages = np.array([float(NAME.match(p.name).group(2)) for p in paths])
    boxes = [predictor.detector.detect(image)[0].box for image in images]
    size = predictor.backend.crop_size
    print(f"$ python benchmarks/crop_geometry.py {' '.join(sys.argv[1:])}")
    print(f"{len(paths)} MORPH photos (even subject ids), model {predictor.model_path}, detector {predictor.detector_name}")
    print("| margin | shift | MAE | mean signed error |\n|---:|---:|---:|---:|")
    for margin in (float(v) for v in args.margins.split(",")):
        for shift in (float(v) for v in args.shifts.split(",")):
            batch = np.stack([crops.crop_face(im, box, size, margin, shift) for im, box in zip(images, boxes)])
            pred, _ = predictor.backend.run(batch)
            print(f"| {margin:+.2f} | {shift:.2f} | {np.abs(pred - ages).mean():.2f} | {(pred - ages).mean():+.2f} |")


if __name__ == "__main__":
    main()
