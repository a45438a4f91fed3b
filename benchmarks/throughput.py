"""Throughput and peak memory of SSR-Net training, inference and `age predict` on this machine.

    python benchmarks/throughput.py [--data ../shared/data] [--quick] [--threads N] [--json FILE]

The same as `age bench --data ../shared/data`: this script times real faces (UTKFace) and photos
(FairFace) from the shared data folder beside the checkout, which is where the README's figures come
from; `age bench` alone uses synthetic ones. The measurements live in agecli/bench.py (its docstring
says what is timed and how memory is measured). Prints a markdown table with the targets for a 2-core CPU beside the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
SHARED_DATA = ROOT / ".." / "shared" / "data"  # the development machine's data, beside the checkout

from agecli.bench import runner as bench  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="shared data folder (utkface/, fairface/) [default: %(default)s]")
    parser.add_argument("--quick", action="store_true", help="fewer faces and photos, shorter timings, no torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch/onnxruntime threads [default: torch's]")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows as JSON")
    args = parser.parse_args()
    result = bench.run_benchmarks(args.data, args.quick, args.threads,
                                  on_step=lambda text: print(f"... {text}", file=sys.stderr, flush=True))
    print(bench.markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
