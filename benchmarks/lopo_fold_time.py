"""Time per LOPO fold, and for a whole FG-NET-sized run, on this machine.

    python benchmarks/lopo_fold_time.py [--preset ssrnet/paper] [--epochs 3] [--folds 2] [--device cpu]
                                        [--threads N] [--synthetic]

Builds an FG-NET-like folder in a temporary directory: about 1,000 real UTKFace faces (ages 0-69) from
../shared/data/utkface spread over 82 pseudo-subjects, named images/001A02.JPG like FG-NET (generated
images with --synthetic, or when ../shared is absent), and prepares it with `age prepare`'s code. Then it
runs `--folds` real LOPO folds of `--epochs` epochs each through `agecli.training.lopo.run_lopo` (crops in RAM,
fresh model per fold, no checkpoints: exactly what `age lopo` does).

On a CPU shared with other jobs, torch's default of one thread per core oversubscribes it and epoch
times swing several-fold; --threads 1 gives steadier (if not the fastest) figures there.

Training all of the preset's epochs (90 for ssrnet/paper) for 82 folds takes hours on a CPU, so the
benchmark MEASURES a few epochs and EXTRAPOLATES: a fold = its fixed cost (model build, prediction of the
held-out subject) + preset epochs x the median measured epoch time (training plus the validation pass).
Every epoch does the same work, so the extrapolation is linear; the output says which figures are measured.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agecli.data.prepare import prepare  # noqa: E402
from agecli.training import lopo  # noqa: E402

DEFAULT_SHARED = ROOT / ".." / "shared"


def fgnet_like(shared: Path, root: Path, images: int, subjects: int, seed: int = 0) -> None:
    """images/SSSAaa[x].JPG symlinks to UTKFace faces aged 0-69; image k belongs to subject k % subjects + 1."""
    utk = shared / "data" / "utkface"
    names = sorted(n for n in os.listdir(utk) if n[0].isdigit() and int(n.split("_")[0]) <= 69)
    picks = np.random.default_rng(seed).choice(len(names), size=images, replace=False)
    folder = root / "images"
    folder.mkdir(parents=True)
    for k, i in enumerate(picks):
        stem = f"{k % subjects + 1:03d}A{int(names[i].split('_')[0]):02d}"
        suffix = next(s for s in ["", *"abcdefghijklmnopqrstuvwxyz"] if not (folder / f"{stem}{s}.JPG").exists())
        (folder / f"{stem}{suffix}.JPG").symlink_to(utk / names[i])


def synthetic_fgnet(root: Path, images: int, subjects: int, seed: int = 0) -> None:
    """The same layout from generated 200x200 images: timing does not depend on what the pixels show."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "images"
    folder.mkdir(parents=True)
    for k in range(images):
        age = int(rng.integers(0, 70))
        stem = f"{k % subjects + 1:03d}A{age:02d}"
        suffix = next(s for s in ["", *"abcdefghijklmnopqrstuvwxyz"] if not (folder / f"{stem}{s}.JPG").exists())
        pixels = np.clip(rng.normal(40 + 2 * age, 20, (200, 200, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{stem}{suffix}.JPG", format="JPEG")


class EpochTimes(lopo.FoldReporter):
    def __init__(self):
        self.epochs, self.folds = [], []  # epoch seconds per fold; fold seconds

    def start_fold(self, subject, index, total):
        self.epochs.append([])

    def end_epoch(self, row, improved):
        self.epochs[-1].append(row["seconds"])
        print(f"    epoch {row['epoch']}: {row['seconds']:.2f} s (train loss {row['train_loss']:.3f})", flush=True)

    def end_fold(self, fold):
        self.folds.append(fold["seconds"])
        print(f"  fold {fold['subject']}: {fold['seconds']:.2f} s, {fold['train_images']} training + "
              f"{fold['val_images']} validation images, {fold['metrics']['n']} tested", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder holding data/utkface")
    ap.add_argument("--preset", default=lopo.DEFAULT_PRESET)
    ap.add_argument("--images", type=int, default=1002, help="FG-NET has 1,002 images ...")
    ap.add_argument("--subjects", type=int, default=82, help="... of 82 subjects")
    ap.add_argument("--epochs", type=int, default=3, help="epochs measured per fold")
    ap.add_argument("--folds", type=int, default=2, help="folds measured")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--synthetic", action="store_true", help="generated images instead of UTKFace (same timing)")
    args = ap.parse_args()
    import torch

    from agecli.system.device import keep_freed_memory

    keep_freed_memory()  # as the `age` command does (agecli.cli.main)

    if args.threads:
        torch.set_num_threads(args.threads)
    utk = args.shared / "data" / "utkface"
    if not args.synthetic and not utk.is_dir():
        print(f"{utk} not found: using generated images (timing does not depend on the pixels)")
        args.synthetic = True

    cfg = lopo.lopo_config(args.preset, {"train.device": args.device})
    full_epochs = cfg.train.epochs
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"device {args.device}")
    print(f"preset {cfg.preset}: model {cfg.model.name}, {full_epochs} epochs, batch {cfg.train.batch_size}, "
          f"{cfg.data.input_size} px")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lopo_bench_") as tmp:
        tmp = Path(tmp)
        if args.synthetic:
            synthetic_fgnet(tmp / "FGNET", args.images, args.subjects)
        else:
            fgnet_like(args.shared.resolve(), tmp / "FGNET", args.images, args.subjects)
        t0 = time.time()
        prepared = prepare("fgnet", tmp / "FGNET", tmp / "prepared", sizes=(cfg.data.cache_size,)).out
        source = "generated" if args.synthetic else "UTKFace"
        print(f"prepare: {args.images} {source} images of {args.subjects} pseudo-subjects in "
              f"{time.time() - t0:.1f} s (once)")
        t0 = time.time()
        lopo.load_crops(prepared, cfg.data.cache_size)
        print(f"crop cache into RAM: {time.time() - t0:.2f} s (once per run, not per fold)")

        run_cfg = lopo.lopo_config(args.preset, {"train.device": args.device, "train.epochs": args.epochs,
                                                 "data.manifest": str(prepared)})
        subjects = ",".join(str(s) for s in range(1, args.folds + 1))
        times = EpochTimes()
        print(f"measuring {args.folds} folds x {args.epochs} epochs:")
        t0 = time.time()
        lopo.run_lopo(run_cfg, tmp / "run", subjects=subjects, reporter=times)
        total = time.time() - t0

    # the process's very first epoch also pays one-time start-up (kernel selection, allocator): kept apart
    steady = [t for epochs in times.epochs for t in epochs][1:]
    epoch = float(np.median(steady))  # the median resists other jobs briefly sharing the CPUs
    warmup = times.epochs[0][0] - epoch
    fixed = float(np.mean([f - sum(e) for f, e in zip(times.folds, times.epochs)]))
    fold = fixed + full_epochs * epoch
    print("\nmeasured:")
    print(f"  time per epoch (train + validation): {epoch:.2f} s  (median of {len(steady)} epochs, "
          f"min {min(steady):.2f}, max {max(steady):.2f})")
    print(f"  fixed cost per fold (split, model build, test predictions): {fixed:.2f} s")
    print(f"  one-time warm-up of the process (first epoch of the first fold): {warmup:.1f} s")
    print(f"  run_lopo wall time incl. data load and report: {total:.1f} s")
    print(f"  load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs (above the CPU count, other jobs slowed this measurement)")
    print(f"extrapolated to the preset's {full_epochs} epochs:")
    print(f"  per fold: {fold:.0f} s = {fold / 60:.1f} min")
    print(f"  all {args.subjects} folds: {(args.subjects * fold + warmup) / 3600:.1f} h on this machine "
          f"(or {args.subjects * fold / 3600 / 8:.1f} h as 8 shards on 8 such machines)")
    best = fixed + full_epochs * min(steady)
    print(f"  from the fastest epoch instead: {best / 60:.1f} min per fold, {args.subjects * best / 3600:.1f} h for all")


if __name__ == "__main__":
    main()
