"""Evaluate a model through the full photo path: detect, crop with the checkpoint's geometry, estimate.

  python benchmarks/photo_path.py [--model CHECKPOINT] [--data ../shared/data] [--detector default]

FairFace (in-the-wild crops labelled with age bins only): the share of faces whose prediction falls in
the true bin, and within one bin of it. Where a photo holds several faces, the labelled person is the
one FairFace centred the crop on, so the face nearest the centre is scored.
MORPH (uncropped mugshots): MAE, CA(3), CA(5) after detection, and MAE by age group.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.metrics import age_metrics, mae_by_age_group  # noqa: E402
from agecli.predict.predictor import Predictor  # noqa: E402
from agecli.system.device import keep_freed_memory  # noqa: E402

FAIRFACE_BINS = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"]


def bin_index(age: float) -> int:
    """Index of the FairFace bin holding a continuous age (bins cover whole years: 2.7 is in 0-2)."""
    for i, label in enumerate(FAIRFACE_BINS):
        hi = label.split("-")[1] if "-" in label else None
        if hi is None or age < int(hi) + 1:
            return i
    return len(FAIRFACE_BINS) - 1


def central_face(result) -> float | None:
    if not result.faces:
        return None
    w, h = result.size
    def distance(face):
        x0, y0, x1, y1 = face.box
        return ((x0 + x1) / 2 - w / 2) ** 2 + ((y0 + y1) / 2 - h / 2) ** 2
    return min(result.faces, key=distance).age


def yaw(landmarks) -> float:
    """How far a face is turned: the nose's offset from the eyes' midpoint along the eye line, over the eye
    distance (0 frontal; 0.5 the nose above one eye)."""
    import numpy as np

    eyes, nose = np.asarray(landmarks[:2], float), np.asarray(landmarks[2], float)
    line = eyes[1] - eyes[0]
    distance = float(np.hypot(*line))
    return abs(float((nose - eyes.mean(0)) @ line)) / distance**2 if distance else float("inf")


def central_yaw(detector, path: Path) -> float | None:
    """yaw() of the face nearest the photo's centre, as RetinaFace's landmarks give it."""
    from agecli.data.imageio import load_image

    image = load_image(path)
    faces = [f for f in detector.detect(image) if f.landmarks is not None]
    if not faces:
        return None
    h, w = image.shape[:2]
    face = min(faces, key=lambda f: ((f.box[0] + f.box[2] - w) / 2) ** 2 + ((f.box[1] + f.box[3] - h) / 2) ** 2)
    return yaw(face.landmarks)


TURNED = 0.3  # yaw above this: a turned face


def evaluate_fairface(predictor: Predictor, folder: Path) -> dict:
    from agecli.data.detectors import create_detector

    truth = {r["filename"]: r["age"] for r in json.loads((folder / "ground_truth.json").read_text())}
    names = sorted(truth)
    exact = near = found = 0
    per_bin: dict[str, list[int]] = {b: [0, 0] for b in FAIRFACE_BINS}
    per_pose = {"frontal": [0, 0, 0], "turned": [0, 0, 0]}  # in bin, within one, photos
    landmarks = create_detector("retinaface")
    for result in predictor.predict([folder / n for n in names]):
        age = central_face(result)
        face_yaw = central_yaw(landmarks, result.path)
        pose = per_pose["turned" if face_yaw is not None and face_yaw > TURNED else "frontal"]
        pose[2] += 1
        if age is None:
            continue
        found += 1
        true_bin = FAIRFACE_BINS.index(truth[result.path.name])
        pred_bin = bin_index(age)
        exact += pred_bin == true_bin
        near += abs(pred_bin - true_bin) <= 1
        pose[0] += pred_bin == true_bin
        pose[1] += abs(pred_bin - true_bin) <= 1
        per_bin[truth[result.path.name]][0] += pred_bin == true_bin
        per_bin[truth[result.path.name]][1] += 1
    n = len(names)
    return {"photos": n, "faces_found": found, "in_bin": exact / n, "within_one_bin": near / n,
            "in_bin_by_true_bin": {b: (c / t if t else None, t) for b, (c, t) in per_bin.items()},
            "by_pose": {k: {"in_bin": a / t if t else None, "within_one_bin": b / t if t else None, "photos": t}
                        for k, (a, b, t) in per_pose.items()}}


def evaluate_morph(predictor: Predictor, folder: Path, only: set[str] | None = None) -> dict:
    """MAE through detection; `only`: the photo names to score (a split that the model did not train on)."""
    pattern = re.compile(r"^\d+_\d+[MF](\d+)\.JPG$", re.IGNORECASE)
    paths = sorted(p for p in folder.iterdir() if pattern.match(p.name) and (only is None or p.name in only))
    pred, true, missed = [], [], 0
    for result in predictor.predict(paths):
        if not result.faces:
            missed += 1
            continue
        pred.append(max(result.faces, key=lambda f: f.score or 0).age)
        true.append(float(pattern.match(result.path.name).group(1)))
    return {"photos": len(paths), "no_face": missed, **age_metrics(pred, true),
            "bias": float(sum(pred) - sum(true)) / max(len(true), 1), "by_age": mae_by_age_group(pred, true)}


def morph_names(spec: str | None) -> set[str] | None:
    if spec is None:
        return None
    import pandas as pd

    prepared, _, split = spec.rpartition(":")
    rows = pd.read_csv(Path(prepared) / "manifest.csv", keep_default_na=False)
    return {Path(path).name for path in rows.loc[rows["split"] == split, "path"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or .onnx (default: the built-in model)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--detector", default="default")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--morph-split", metavar="PREPARED:SPLIT", default=None,
                        help="score only the MORPH photos of this split of an `age prepare morph` folder, e.g. "
                             "prepared/morph:test (subject-disjoint from its train split) [default: all of MORPH]")
    args = parser.parse_args()
    keep_freed_memory()  # as the `age` command does (agecli.cli.main)
    predictor = Predictor(args.model, detector=args.detector, device="cpu")
    print(f"$ python benchmarks/photo_path.py {' '.join(sys.argv[1:])}")
    print(f"model {predictor.model_path}, detector {predictor.detector_name}")
    t0 = time.time()
    fairface = evaluate_fairface(predictor, args.data / "fairface")
    morph = evaluate_morph(predictor, args.data / "morph", morph_names(args.morph_split))
    print(f"\nFairFace ({fairface['photos']} photos, {fairface['faces_found']} with a face found)")
    print(f"  prediction in the true age bin: {fairface['in_bin']:.1%}; within one bin: {fairface['within_one_bin']:.1%}")
    print("  in-bin share by true bin: " + ", ".join(
        f"{b} {v:.0%} (n={n})" for b, (v, n) in fairface["in_bin_by_true_bin"].items() if n))
    print(f"  by pose (turned: nose offset from the eye midpoint over eye distance > {TURNED}): " + ", ".join(
        f"{k} {v['in_bin']:.1%} / {v['within_one_bin']:.1%} (n={v['photos']})"
        for k, v in fairface["by_pose"].items() if v["photos"]))
    print(f"\nMORPH ({morph['photos']} photos, no face in {morph['no_face']})")
    print(f"  MAE {morph['mae']:.2f}  CA(3) {morph['ca3']:.3f}  CA(5) {morph['ca5']:.3f}  (CA(n): |error| < n, unrounded); "
          f"mean error {morph['bias']:+.2f} (negative: too young)")
    print("  MAE by age group: " + ", ".join(f"{g['group']} {g['mae']:.1f} (n={g['n']})" for g in morph["by_age"]))
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"fairface": fairface, "morph": morph}, indent=2))


if __name__ == "__main__":
    main()
