"""`age predict` at scale: does the pipeline keep the slowest stage busy, and does memory stay flat?

    python benchmarks/predict_scale.py                       # full size (about 20 minutes on 2 cores)
    python benchmarks/predict_scale.py --n 300 --photos 40 --mem 200,2000 --frames 60   # a quick check
    python benchmarks/predict_scale.py --model runs/train/NAME/best.pt --only a,d

Figures, each measured in a fresh process (its own warm-up and peak memory), as ratios so that the
speed of the machine (and other work on it) mostly cancels:

  (a) --detector none on a folder of N JPEG face crops (UTKFace crops from ../shared/data, linked, or
      seeded synthetic ones written as JPEG): end-to-end photos/s as a share of the same model's pure
      inference rate at batch 64 on crops already decoded, for the .pt model and its .onnx export.
      Target >= 80%.
  (b) with the default detector on FairFace photos (or synthetic 448-px photos): end-to-end photos/s
      against the slowest stage measured alone (decode + detect + crop in the same thread pool, or
      the model at batch 64 on those faces). Target >= 80%.
  (c) peak memory (VmHWM) of a --detector none run over the two --mem sizes. Target: within 10%.
  (d) frames per second of a video (640x360, moving faces), with detection and tracking, and with
      --draw as well.

"End to end" is `agecli.predict.job.run_predict`, as `age predict` runs it, timed from the start of the
pipeline to the last record written (model loading left out). Everything is written under a temporary
folder that is deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
SHARED = ROOT.parent / "shared" / "data"
TARGET = 0.8

from agecli.bench.children import peak_mib

# ---------------------------------------------------------------------------- data (parent)

def face_folder(folder: Path, n: int) -> str:
    """n JPEG face crops in folder: links to UTKFace crops (cycled past its size), else synthetic ones."""
    folder.mkdir(parents=True)
    utk = SHARED / "utkface"
    if utk.is_dir():
        names = sorted(p for p in os.listdir(utk) if p.endswith(".jpg"))
        for i in range(n):
            (folder / f"{i:06d}_{names[i % len(names)]}").symlink_to(utk / names[i % len(names)])
        return "UTKFace crops (linked)"
    import cv2

    from agecli.data.synthetic import synthetic_face

    rng = np.random.default_rng(0)
    faces = [cv2.cvtColor(synthetic_face(200, rng), cv2.COLOR_RGB2BGR) for _ in range(64)]
    for i in range(n):  # 64 distinct faces: decoding cost does not depend on which face it is
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), faces[i % 64], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return "synthetic 200-px crops"


def photo_folder(folder: Path, n: int) -> str:
    fair = SHARED / "fairface"
    if fair.is_dir():
        folder.mkdir(parents=True)
        for p in sorted(fair.glob("*.jpg"))[:n]:
            (folder / p.name).symlink_to(p)
        return "FairFace photos (448 px)"
    from agecli.data.synthetic import write_synthetic_photos

    write_synthetic_photos(folder, n)
    return "synthetic 448-px photos"


def video_file(path: Path, frames: int) -> str:
    from PIL import Image

    from agecli.data.synthetic import synthetic_faces, write_moving_faces_video

    utk = SHARED / "utkface"
    if utk.is_dir():
        names = sorted(os.listdir(utk))[5000:5003]
        faces = [np.asarray(Image.open(utk / n).convert("RGB").resize((160, 160))) for n in names]
        what = "UTKFace faces"
    else:
        faces, what = list(synthetic_faces(3, 160, seed=0)), "synthetic faces"
    write_moving_faces_video(path, faces, frames, size=(640, 360), fps=25.0, step=4.0)
    return f"{frames} frames 640x360, 3 moving {what}"


# ---------------------------------------------------------------------------- measurements (children)

def predictor_for(model: str | None, detector: str):
    from agecli.predict.predictor import Predictor

    return Predictor(model or None, detector=detector, device="cpu")


def pure_rate(predictor, crops: np.ndarray, seconds: float = 3.0) -> float:
    """Faces per second of the model alone at batch 64, on crops already decoded."""
    batch = np.ascontiguousarray(np.resize(crops, (64, *crops.shape[1:])))
    predictor.backend.run(batch)  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < 192 or time.perf_counter() - t0 < seconds:
        predictor.backend.run(batch)
        done += 64
    return done / (time.perf_counter() - t0)


class Clock:
    """A silent progress reporter that times the pipeline itself (model loading left out)."""

    def start(self, total, unit="photos", name="predict"):
        self.t0 = time.perf_counter()

    def advance(self, faces=0):
        pass

    def stop(self):
        self.seconds = time.perf_counter() - self.t0


def end_to_end(folder: str, model: str | None, out: str, no_detect: bool) -> tuple[float, dict]:
    from agecli.predict.job import PredictOptions, run_predict

    clock = Clock()
    run = run_predict([folder], PredictOptions(model=Path(model) if model else None, no_detect=no_detect,
                                               out=Path(out), device="cpu"), progress=clock)
    return run.summary["photos"] / clock.seconds, run.summary


def child_crops(folder: str, model: str | None, out: str) -> dict:
    from agecli.data.image_files import iter_images
    from agecli.predict.pipeline import prepare_photo

    predictor = predictor_for(model, "none")
    items = list(iter_images([folder]))
    crops = np.concatenate([prepare_photo(predictor, item).crops for item in items[:64]])
    pure = pure_rate(predictor, crops)
    stage1, _ = prepare_rate(predictor, items[:3000])
    rate, summary = end_to_end(folder, model, out, no_detect=True)
    return {"pure": pure, "stage1": stage1, "e2e": rate, "photos": summary["photos"], "peak_mib": peak_mib()}


def prepare_rate(predictor, items) -> tuple[float, list]:
    """(photos/s of stage 1 alone: decode, detect if any, crop, in the pipeline's thread pool; its results)."""
    from agecli.predict.pipeline import default_workers, prepare_photo

    prepare_photo(predictor, items[0])  # warm-up: the detector's session
    t0 = time.perf_counter()
    with ThreadPoolExecutor(default_workers()) as pool:
        prepared = list(pool.map(lambda item: prepare_photo(predictor, item), items))
    return len(items) / (time.perf_counter() - t0), prepared


def child_detect(folder: str, model: str | None, out: str) -> dict:
    from agecli.data.image_files import iter_images

    predictor = predictor_for(model, "default")
    items = list(iter_images([folder]))
    stage1, prepared = prepare_rate(predictor, items)
    crops = np.concatenate([p.crops for p in prepared if p.crops is not None])
    faces_per_photo = len(crops) / len(items)
    stage2 = pure_rate(predictor, crops) / max(faces_per_photo, 1e-9)  # in photos/s
    rate, summary = end_to_end(folder, model, out, no_detect=False)
    return {"stage1": stage1, "stage2": stage2, "e2e": rate, "photos": len(items), "faces": summary["faces"],
            "detector": predictor.detector_name}


def child_memory(folder: str, model: str | None, out: str) -> dict:
    rate, summary = end_to_end(folder, model, out, no_detect=True)
    return {"photos": summary["photos"], "peak_mib": peak_mib(), "e2e": rate}


def child_video(video: str, model: str | None, out: str) -> dict:
    from agecli.predict.video import predict_videos

    predictor = predictor_for(model, "default")
    rates = {}
    for draw in (False, True):
        clock = Clock()
        summary, _ = predict_videos(predictor, [(video, False)], Path(out) / f"draw{int(draw)}", draw_copy=draw,
                                    progress=clock)
        rates["draw" if draw else "plain"] = summary["frames"] / clock.seconds
    return {**rates, "frames": summary["frames"], "tracks": summary["tracks"]}


CHILDREN = {"crops": child_crops, "detect": child_detect, "memory": child_memory, "video": child_video}


def run_child(name: str, *args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, json.dumps(args)], capture_output=True,
                          text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------- report (parent)

def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def onnx_of(model: str | None, tmp: Path) -> str:
    if model and model.endswith(".onnx"):
        return model
    from agecli.modelio.builtin import default_model_path
    from agecli.modelio.export import export

    return str(export(model or default_model_path(), "onnx", out=tmp / "model.onnx").path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="face crops for (a) (default 10000)")
    parser.add_argument("--photos", type=int, default=272, help="photos with detection for (b) (default 272)")
    parser.add_argument("--mem", default="1000,20000", help="the two sizes compared in (c) (default 1000,20000)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the video for (d) (default 300)")
    parser.add_argument("--model", default=None, help="a .pt or .onnx model (default: the built-in model)")
    parser.add_argument("--only", default="a,b,c,d", help="which figures to measure (default a,b,c,d)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary data (default: the system's)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from agecli.system.device import keep_freed_memory

        keep_freed_memory()  # as the `age` command does (agecli.cli.main)
        print("RESULT " + json.dumps(CHILDREN[args.child[0]](*json.loads(args.child[1]))))
        return
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        if "a" in only:
            what = face_folder(tmp / "crops", args.n)
            models = ([args.model] if args.model and args.model.endswith(".onnx") else [args.model, onnx_of(args.model, tmp)])
            for i, model in enumerate(models):
                r = run_child("crops", str(tmp / "crops"), model, str(tmp / f"out_a{i}"))
                share = r["e2e"] / r["pure"]
                serial = 1 / (1 / r["pure"] + 1 / r["stage1"])  # both stages one after the other, each on every core
                print(f"(a) --detector none, {r['photos']} {what}, {Path(model or 'default.pt').suffix}: end to end "
                      f"{r['e2e']:.0f} photos/s, model alone {r['pure']:.0f} faces/s at batch 64: {share:.0%} "
                      f"(target >= {TARGET:.0%}: {verdict(share >= TARGET)}); crops alone {r['stage1']:.0f} "
                      f"photos/s, so {serial:.0f} one stage after the other ({r['e2e'] / serial:.0%} of that)")
        if "b" in only:
            what = photo_folder(tmp / "photos", args.photos)
            r = run_child("detect", str(tmp / "photos"), args.model, str(tmp / "out_b"))
            slowest = min(r["stage1"], r["stage2"])
            share = r["e2e"] / slowest
            serial = 1 / (1 / r["stage1"] + 1 / r["stage2"])
            print(f"(b) detector {r['detector']}, {r['photos']} {what}, {r['faces']} faces: end to end "
                  f"{r['e2e']:.1f} photos/s; alone: decode+detect {r['stage1']:.1f}, model {r['stage2']:.1f} photos/s: "
                  f"{share:.0%} of the slowest (target >= {TARGET:.0%}: {verdict(share >= TARGET)}); one stage after the "
                  f"other {serial:.1f} ({r['e2e'] / serial:.0%} of that)")
        if "c" in only:
            peaks = []
            for n in (int(v) for v in args.mem.split(",")):
                face_folder(tmp / f"mem{n}", n)
                peaks.append((n, run_child("memory", str(tmp / f"mem{n}"), args.model, str(tmp / f"out_c{n}"))))
            (n0, r0), (n1, r1) = peaks[0], peaks[-1]
            growth = r1["peak_mib"] / r0["peak_mib"] - 1
            print(f"(c) peak memory (VmHWM), --detector none: {n0} photos {r0['peak_mib']:.0f} MiB, {n1} photos "
                  f"{r1['peak_mib']:.0f} MiB: {growth:+.1%} (target within 10%: {verdict(abs(growth) <= 0.10)})")
        if "d" in only:
            what = video_file(tmp / "video.mp4", args.frames)
            r = run_child("video", str(tmp / "video.mp4"), args.model, str(tmp / "out_d"))
            print(f"(d) video, {what}: {r['plain']:.1f} frames/s with detection and tracking, {r['draw']:.1f} with "
                  f"--draw ({r['tracks']} tracks)")


if __name__ == "__main__":
    main()
