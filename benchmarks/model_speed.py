"""Crops per second of age models at one batch size, as `age predict` runs them (.pt and .onnx backends).

    python benchmarks/model_speed.py BASELINE.pt MODEL.pt [--batch 64] [--seconds 5] [--threads 2] [--rounds 3]
                                     [--compare-unfolded] [--compile]

Each checkpoint is also exported to ONNX (in a temporary folder) and both backends are timed on the same
uint8 face crops (seeded noise of the model's crop size: the content does not change the cost). Models are
timed in turns, `--rounds` times, and the median is kept, so that a machine's changing load falls on all
models alike; the ratios against the first model are what to compare across machines. --compare-unfolded
adds each .pt model as it ran before BatchNorm folding (agecli/models/fuse.py). To compare with the
previous built-in model: `git show 1f1e696:agecli/weights/default.pt > /tmp/ensemble6.pt`. --compile adds each
.pt model run through torch.compile (what a long job could gain after a compile of tens of seconds; `age
predict` does not compile), and prints how far its ages are from the eager model's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agecli.modelio.backends import TorchBackend, load_backend  # noqa: E402
from agecli.modelio.export import export  # noqa: E402


def crops_per_second(backend, batch: int, seconds: float) -> float:
    crops = np.random.default_rng(0).integers(0, 256, (batch, backend.crop_size, backend.crop_size, 3), dtype=np.uint8)
    backend.run(crops)  # warm-up: first-call allocations and kernel selection
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend.run(crops)
        done += batch
    return done / (time.perf_counter() - start)


def compiled_backend(model: Path, batch: int) -> TorchBackend:
    """The .pt backend with its network through torch.compile, compiled on one batch; prints the compile time
    and the largest age difference from the eager backend on seeded crops."""
    import torch

    eager, backend = TorchBackend(model, "cpu"), TorchBackend(model, "cpu")
    backend.model.forward = torch.compile(backend.model.forward)  # age_and_spread stays the eager code
    crops = np.random.default_rng(1).integers(0, 256, (batch, backend.crop_size, backend.crop_size, 3), dtype=np.uint8)
    start = time.perf_counter()
    compiled_age = backend.run(crops)[0]
    seconds = time.perf_counter() - start
    diff = float(np.abs(compiled_age - eager.run(crops)[0]).max())
    print(f"{model}: compiled in {seconds:.0f} s; ages within {diff:.1e} years of the eager model's", file=sys.stderr)
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="agecli checkpoints; the first is the baseline")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per model, backend and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (onnxruntime uses its default)")
    parser.add_argument("--compare-unfolded", action="store_true", help="also time .pt models without BatchNorm folding")
    parser.add_argument("--compile", action="store_true", help="also time .pt models through torch.compile")
    args = parser.parse_args()
    import torch

    from agecli.system.device import keep_freed_memory

    keep_freed_memory()  # as the `age` command does (agecli.cli.main): activation buffers are reused, not re-faulted
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        backends = {}
        for i, model in enumerate(args.models):
            onnx = export(model, "onnx", out=Path(tmp) / f"m{i}.onnx").path
            backends[(model, ".pt")] = load_backend(model, device="cpu")
            if args.compare_unfolded:
                backends[(model, ".pt unfolded")] = TorchBackend(model, "cpu", fold=False)
            if args.compile:
                backends[(model, ".pt compiled")] = compiled_backend(model, args.batch)
            backends[(model, ".onnx")] = load_backend(onnx, device="cpu")  # onnxruntime: all cores
        rates: dict = {key: [] for key in backends}
        for _ in range(args.rounds):
            for key, backend in backends.items():
                rates[key].append(crops_per_second(backend, args.batch, args.seconds))
    print(f"| model | backend | crops/s at batch {args.batch} | vs {args.models[0].name} |")
    print("|---|---|---:|---:|")
    for (model, kind), values in rates.items():
        rate, base = statistics.median(values), statistics.median(rates[(args.models[0], kind)])
        print(f"| {model} | {kind} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
