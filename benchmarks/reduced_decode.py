"""What a reduced-scale JPEG decode would cost in accuracy, and what the full decode age predict uses costs in time.

  python benchmarks/reduced_decode.py [--model CHECKPOINT] [--prepared prepared/utkface] [--split test]

Runs the model on the chips of a prepared UTKFace split twice, once decoded in full (as `age prepare` and
`age predict` decode every photo) and once at PIL's reduced DCT scale (which `age predict --detector none`
used before 2026-12-06 and no longer does: it moved ages), and prints both MAEs, how much one face's age
changes (beside how much it changes for the mirror image) and the decode rates on 1 and 2 threads: in full
through PIL, in full as agecli reads JPEGs (simplejpeg where it can: the same pixels), and reduced through
PIL. Needs `age prepare utkface --root DIR` first.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.data.imageio import _decode, load_image  # noqa: E402
from agecli.predict.predictor import Predictor  # noqa: E402


def ages_of(predictor: Predictor, images: list[np.ndarray], batch: int = 64, mirror: bool = False) -> np.ndarray:
    crops = np.stack([predictor.crops(image[:, ::-1] if mirror else image, None)[0] for image in images])
    return np.concatenate([predictor.backend.run(crops[i: i + batch])[0] for i in range(0, len(crops), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or .onnx (default: the built-in model)")
    parser.add_argument("--prepared", type=Path, default=Path("prepared/utkface"))
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    from agecli.system.device import keep_freed_memory

    keep_freed_memory()  # as the `age` command does (agecli.cli.main)
    rows = pd.read_csv(args.prepared / "manifest.csv")
    rows = rows[rows["split"] == args.split]
    predictor = Predictor(args.model, detector="none", device="cpu")
    paths, side = list(rows["path"]), predictor.preprocess.crop_size
    pil_full = lambda p: _decode(io.BytesIO(Path(p).read_bytes()), p)  # noqa: E731
    pil_reduced = lambda p: reduced_decode(p, side)  # noqa: E731
    full = [load_image(p) for p in paths]
    reduced = [pil_reduced(p) for p in paths]
    truth = rows["age"].to_numpy(float)
    a, b = ages_of(predictor, full), ages_of(predictor, reduced)
    print(f"{len(rows)} {args.split} chips, {predictor.model_path.name}")
    print(f"full decode:    MAE {np.abs(a - truth).mean():.3f}")
    print(f"reduced decode: MAE {np.abs(b - truth).mean():.3f}")
    print(f"age change per face: mean {np.abs(a - b).mean():.3f}, largest {np.abs(a - b).max():.2f} years")
    m = ages_of(predictor, full, mirror=True)  # for scale: how much the model's age moves for the mirror image
    print(f"for comparison, the mirror image: mean change {np.abs(a - m).mean():.3f}, largest {np.abs(a - m).max():.2f} years")
    for name, decode in (("full, PIL", pil_full), ("full, as agecli reads (simplejpeg where it can)", load_image),
                         ("reduced, PIL (not used)", pil_reduced)):
        rates = [decode_rate(decode, paths, threads) for threads in (1, 2)]
        print(f"decode {name}: {rates[0]:,.0f} images/s on 1 thread, {rates[1]:,.0f} on 2")


def reduced_decode(path: str, side: int) -> np.ndarray:
    """PIL's decode of a JPEG at the smallest DCT scale that still covers side x side (PIL's draft)."""
    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        return np.asarray(im.convert("RGB"))


def decode_rate(decode, paths: list[str], threads: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(decode, paths):
            pass
    return len(paths) / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
