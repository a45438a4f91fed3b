"""Recall and speed of every available face detector, plus the crop margin each one needs.

    python benchmarks/detectors.py [--data ../shared/data] [--limit N] [--margins N]

* FairFace (in-the-wild crops, >= 1 face each): recall = share of photos with >= 1 face found;
  faces/photo counts every face found (background people are real faces there too).
* MORPH (mugshots, exactly one face each): recall = share with >= 1 face; faces/photo > 1
  means false positives.
* Speed: detection only (decoding is not timed), after one warm-up call, with the libraries'
  default thread settings (OpenCV: cv2.getNumThreads(); onnxruntime: one thread per core).
* Margins: UTKFace chips (the training framing) are pasted in the middle of a black canvas
  twice their size; the face box found there gives the margin and vertical shift that make
  crop_face(detector box) reproduce the chip (see agecli.data.preprocess.MARGINS / SHIFTS).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agecli.data import detectors as faces  # noqa: E402
from agecli.data.imageio import load_image  # noqa: E402
from agecli.errors import AgeCliError  # noqa: E402

DEFAULT_DATA = ROOT / ".." / "shared" / "data"


def available_detectors() -> tuple[dict[str, faces.Detector], dict[str, str]]:
    """Detectors that can be built here, and why the others cannot."""
    built, missing = {}, {}
    for name in faces.DETECTORS:
        try:
            built[name] = faces.create_detector(name)
        except AgeCliError as exc:
            missing[name] = str(exc)
    return built, missing


def load_set(folder: Path, limit: int | None) -> list[np.ndarray]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if limit:
        # Spread the sample over the whole folder rather than taking the first few subjects.
        step = max(1, len(paths) // limit)
        paths = paths[::step][:limit]
    return [load_image(p) for p in paths]


def measure(detector: faces.Detector, images: list[np.ndarray]) -> dict[str, float]:
    detector.detect(images[0])  # warm-up: lazy sessions, caches
    counts = []
    start = time.perf_counter()
    for image in images:
        counts.append(len(detector.detect(image)))
    seconds = time.perf_counter() - start
    return {
        "recall": float(np.mean([c > 0 for c in counts])),
        "faces": float(np.mean(counts)),
        "ms": 1000 * seconds / len(images),
        "fps": len(images) / seconds,
    }


def needed_geometry(detector: faces.Detector, chips: list[np.ndarray]) -> dict[str, float]:
    """Margin and shift that turn the detector's box on a chip back into the chip itself."""
    margins, shifts = [], []
    for chip in chips:
        side = chip.shape[0]
        pad = side // 2
        canvas = np.zeros((2 * side, 2 * side, 3), np.uint8)
        canvas[pad : pad + side, pad : pad + side] = chip
        found = detector.detect(canvas)
        if not found:
            continue
        centre = pad + side / 2
        # The face nearest the chip centre (a chip can show a second face at its edge).
        nearest = min(found, key=lambda f: abs(sum(f.box[::2]) / 2 - centre) + abs(sum(f.box[1::2]) / 2 - centre))
        x0, y0, x1, y1 = nearest.box
        margins.append((side / max(x1 - x0, y1 - y0) - 1) / 2)
        shifts.append((centre - (y0 + y1) / 2) / side)
    if not margins:
        return {"found": 0.0}
    q = lambda values: np.percentile(values, [25, 50, 75])  # noqa: E731
    (m25, m50, m75), (s25, s50, s75) = q(margins), q(shifts)
    return {"found": len(margins) / len(chips), "m25": m25, "m50": m50, "m75": m75, "s25": s25, "s50": s50, "s75": s75}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="at most N photos per data set (spread evenly)")
    parser.add_argument("--margins", type=int, default=200, help="UTKFace chips for the margin check (0: skip)")
    args = parser.parse_args(argv)

    data = args.data.resolve()
    fairface_dir, morph_dir, utk_dir = data / "fairface", data / "morph", data / "utkface"
    if not fairface_dir.is_dir() or not morph_dir.is_dir():
        print(f"error: {data} lacks fairface/ or morph/ (pass --data)", file=sys.stderr)
        return 2

    import cv2

    detectors, missing = available_detectors()
    fairface = load_set(fairface_dir, args.limit)
    morph = load_set(morph_dir, args.limit)
    print(f"CPU cores: {os.cpu_count()}, cv2 threads: {cv2.getNumThreads()}, onnxruntime: default (1 per core)")
    print(f"Photos: FairFace {len(fairface)}, MORPH {len(morph)} (from {data})\n")

    print("| detector | FairFace recall | FairFace faces/photo | FairFace ms/photo | MORPH recall "
          "| MORPH faces/photo | MORPH ms/photo | photos/s (MORPH) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, detector in detectors.items():
        ff, mo = measure(detector, fairface), measure(detector, morph)
        print(f"| {name} | {ff['recall']:.1%} | {ff['faces']:.2f} | {ff['ms']:.1f} | {mo['recall']:.1%} "
              f"| {mo['faces']:.2f} | {mo['ms']:.1f} | {mo['fps']:.0f} |")
    for name, reason in missing.items():
        print(f"| {name} | not available: {reason} | | | | | | |")

    if args.margins and utk_dir.is_dir():
        chips = load_set(utk_dir, args.margins)
        print(f"\nCrop geometry that reproduces {len(chips)} UTKFace chips (median [IQR]):\n")
        print("| detector | chips found | needed margin | needed shift | configured margin | configured shift |")
        print("|---|---|---|---|---|---|")
        for name, detector in detectors.items():
            g = needed_geometry(detector, chips)
            if not g["found"]:
                print(f"| {name} | 0% | - | - | {detector.margin} | {detector.shift} |")
                continue
            print(f"| {name} | {g['found']:.0%} | {g['m50']:+.3f} [{g['m25']:+.3f}, {g['m75']:+.3f}] "
                  f"| {g['s50']:+.3f} [{g['s25']:+.3f}, {g['s75']:+.3f}] | {detector.margin} | {detector.shift} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
