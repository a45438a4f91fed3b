"""Training memory does not grow with the dataset: peak RSS at 20,000 vs 200,000 cached faces.

    python benchmarks/memory_scale.py [--rows 20000,200000] [--steps 200] [--batch 50] [--tmp DIR]

For each size it writes a synthetic prepared dataset into a temporary folder: a manifest.csv with that
many rows and a crops_64.npy memory map (200,000 x 64 x 64 x 3 uint8 = 2.4 GB), filled cheaply by
tiling 256 random smooth "faces". Then a fresh Python process trains SSR-Net on it for --steps steps
through agecli itself (datasets.load_data, open_crops, split_rows, Batches with a shuffled order that
reads rows from all over the file, engine.train_one_epoch) and reports its memory from
/proc/self/status:

  * peak RSS (VmHWM) of the training process;
  * anonymous RSS (RssAnon): Python, torch, the model, activations, the manifest table;
  * file-backed RSS (RssFile): shared libraries (torch's alone are a few hundred MiB), plus the pages
    of crops_64.npy this run has read. Those are page cache mapped into the process: bounded by the
    rows read (steps x batch x 12 KiB, times the kernel's fault-around, which maps up to 64 KiB of
    already-cached neighbours per fault), not by the file's size, and the kernel can drop them any time.

The temporary data is deleted at the end (also after an error or Ctrl-C). If the disk is short, the
largest size is reduced to what fits, and the output says so.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SIZE = 64
ROW_BYTES = SIZE * SIZE * 3
CHUNK = 8_192  # rows written per step: ~100 MB of the memory map in RAM at a time


def memory_status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process, in MiB (Linux)."""
    wanted = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in wanted:
            found[key] = int(line.split()[1]) / 1024
    return found


def build_dataset(folder: Path, rows: int, seed: int = 0) -> None:
    """manifest.csv + crops_64.npy for `rows` synthetic faces; ages cycle through 1-80."""
    import pandas as pd

    from agecli.data.manifest import COLUMNS

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    # 256 smooth random images: upsampled 8x8 noise, so the cache is not all one value
    low = rng.integers(0, 256, (256, 8, 8, 3), dtype=np.uint8)
    pattern = low.repeat(SIZE // 8, axis=1).repeat(SIZE // 8, axis=2)
    crops = np.lib.format.open_memmap(folder / f"crops_{SIZE}.npy", mode="w+", dtype=np.uint8,
                                      shape=(rows, SIZE, SIZE, 3))
    for start in range(0, rows, CHUNK):
        stop = min(start + CHUNK, rows)
        crops[start:stop] = pattern[np.arange(start, stop) % len(pattern)]
        crops.flush()
    del crops
    index = np.arange(rows)
    manifest = pd.DataFrame({"path": [f"/synthetic/face_{i:07d}.png" for i in index], "age": 1.0 + index % 80,
                             "subject": "", "split": "train", "source": "synthetic", "gender": "", "box": "",
                             "cache_row": index})
    manifest[COLUMNS].to_csv(folder / "manifest.csv", index=False)


def child(folder: str, steps: int, batch: int) -> None:
    """Train `steps` steps on the prepared dataset in `folder`; print memory figures as JSON."""
    import torch

    from agecli.config import resolve_config
    from agecli.data.cache import Batches, open_crops
    from agecli.report.progress import NullReporter
    from agecli.system.device import keep_freed_memory
    from agecli.training import datasets, engine
    from agecli.training.losses import create_loss

    keep_freed_memory()  # as the `age` command does (agecli.cli.main): the heap `age train` would hold

    after_imports = memory_status()
    cfg = resolve_config("ssrnet/paper", {"data.manifest": folder, "train.device": "cpu", "train.batch_size": batch})
    prepared, df = datasets.load_data(folder)
    crops = open_crops(prepared, SIZE)
    train_df, _ = datasets.split_rows(df, cfg)
    model = engine.build_model(cfg)
    optimizer = engine.make_optimizer(cfg, model)
    loss_fn = create_loss(cfg.loss.name, cfg.loss.lambda_mean, cfg.loss.lambda_var)
    batches = Batches(crops, train_df["cache_row"].to_numpy(), train_df["age"].to_numpy(), batch,
                      preprocess=engine.preprocess_for(cfg, model), shuffle=True)
    batches.set_epoch(1)
    loaded = memory_status()

    class FirstSteps:  # engine.train_one_epoch over only the first `steps` batches of the epoch
        def __len__(self):
            return min(steps, len(batches))

        def __iter__(self):
            for i, item in enumerate(batches):
                if i == len(self):
                    return
                yield item

    torch.manual_seed(0)
    t0 = time.perf_counter()
    engine.train_one_epoch(model, FirstSteps(), loss_fn, optimizer, None, NullReporter())
    seconds = time.perf_counter() - t0
    print("MEMORY " + json.dumps({"imports": after_imports, "loaded": loaded, "end": memory_status(),
                                  "steps": len(FirstSteps()), "seconds": seconds, "train_rows": len(train_df)}))


def measure(folder: Path, steps: int, batch: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(folder), str(steps), str(batch)],
                          capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("MEMORY ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"training on {folder} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("MEMORY "):])


def fit_to_disk(sizes: list[int], free: int) -> tuple[list[int], str]:
    """Shrink the largest size until every dataset fits in `free` bytes with 10% to spare."""
    def need(ns):
        return sum(n * (ROW_BYTES + 80) for n in ns) * 1.1  # crops + manifest line

    if need(sizes) <= free:
        return sizes, ""
    small = sizes[:-1]
    largest = int((free / 1.1 - need(small) / 1.1) / (ROW_BYTES + 80))
    largest = max(largest // 1000 * 1000, 0)
    if largest <= (small[-1] if small else 0):
        raise SystemExit(f"not enough free disk for these sizes ({free / 2**30:.1f} GiB free)")
    return small + [largest], f"note: only {free / 2**30:.1f} GiB free, so the largest size is {largest:,} rows, not {sizes[-1]:,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="20000,200000", help="dataset sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="training steps per size")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the temporary datasets")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.rows.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="agecli-memscale-", dir=args.tmp))
    try:
        sizes, note = fit_to_disk(sizes, shutil.disk_usage(tmp).free)
        results = []
        for n in sizes:
            folder = tmp / f"rows_{n}"
            t0 = time.perf_counter()
            build_dataset(folder, n)
            print(f"... built {n:,} rows in {time.perf_counter() - t0:.0f} s; training {args.steps} steps",
                  file=sys.stderr, flush=True)
            results.append((n, (folder / f"crops_{SIZE}.npy").stat().st_size, measure(folder, args.steps, args.batch)))
            shutil.rmtree(folder)  # before the next, larger one: the disk holds one at a time
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(results, args, note))


def report(results, args, note: str) -> str:
    import torch

    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    title = f"`{command}` (torch {torch.__version__}, {torch.get_num_threads()} thread(s)); {args.steps} steps"
    lines = [f"{title} of batch {args.batch}", ""]
    if note:
        lines += [note, ""]
    header = ("| rows | crops_64.npy | peak RSS | anon RSS at end | file RSS at end | anon after loading data "
              "| crop rows read (at most) | s/step |")
    lines += [header, "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, size, m in results:
        end, loaded = m["end"], m["loaded"]
        read = min(m["steps"] * args.batch, m["train_rows"])
        lines.append(f"| {n:,} | {size / 2**20:,.0f} MiB | {end['VmHWM']:,.0f} MiB | {end['RssAnon']:,.0f} MiB "
                     f"| {end['RssFile']:,.0f} MiB | {loaded['RssAnon']:,.0f} MiB "
                     f"| {read:,} ({read * ROW_BYTES / 2**20:,.0f} MiB) | {m['seconds'] / m['steps']:.3f} |")
    if len(results) >= 2:
        (n0, s0, m0), (n1, s1, m1) = results[0], results[-1]
        anon = m1["end"]["RssAnon"] - m0["end"]["RssAnon"]
        file = m1["end"]["RssFile"] - m0["end"]["RssFile"]
        peak = m1["end"]["VmHWM"] - m0["end"]["VmHWM"]
        table = m1["loaded"]["RssAnon"] - m0["loaded"]["RssAnon"]
        summary = (f"{n1 / n0:.0f}x the rows ({(s1 - s0) / 2**20:+,.0f} MiB of cache file): anonymous memory "
                   f"{table:+,.0f} MiB after loading the data (the larger manifest table) and {anon:+,.0f} MiB at "
                   f"the end of training, file-backed {file:+,.0f} MiB, peak RSS "
                   f"{peak:+,.0f} MiB. The file-backed part is cache pages mapped by the reads: the same number of "
                   f"rows was read from both, but the smaller file is mapped almost whole already, the larger one "
                   f"only around the rows read.")
        lines += ["", summary]
    legend = ("anon RSS: Python, torch, model, activations, manifest. file RSS: shared libraries plus the cache "
              "pages this run read (with the kernel's fault-around, up to 64 KiB per page fault), which the kernel "
              "can reclaim; it follows the rows read, not the file size.")
    lines += ["", legend]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
