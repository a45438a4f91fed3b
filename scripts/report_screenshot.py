"""The README's picture of a report: `age eval` of the built-in model on the UTKFace test split, in Chromium.

  python scripts/report_screenshot.py [--utkface ../shared/data/utkface] [--prepared prepared/utkface-aligned]
                                      [--out docs/report.png]

Prepares UTKFace as the built-in model cuts faces (once; kept in --prepared), runs `age eval` as a user
would, and screenshots report.html down to where the face thumbnails begin: the picture holds plots and
tables only, never a dataset face.
Prints the figures the README quotes: the metrics and the calibration of the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agecli.metrics import spread_calibration  # noqa: E402

WIDTH = 1280


def age(*args: str | Path) -> None:
    """The `age` command, exactly as a user runs it, from the repository root (so paths read short)."""
    env = {**os.environ, "AGECLI_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "agecli", *map(str, args)], check=True, env=env, cwd=ROOT)


def screenshot_above_faces(report: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("AGECLI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(report.resolve().as_uri())
        faces_top = page.locator("#faces").bounding_box()["y"]  # stop above the first thumbnail
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": WIDTH, "height": faces_top - 8}, full_page=True)
        browser.close()


def print_figures(run: Path) -> None:
    import pandas as pd

    m = json.loads((run / "metrics.json").read_text())
    print(f"UTKFace {m['split']} split, {m['n']} faces: MAE {m['mae']:.2f}, CA(3) {m['ca3']:.3f}, CA(5) {m['ca5']:.3f}")
    p = pd.read_csv(run / "predictions.csv")
    cal = spread_calibration(p["pred"], p["age"], p["spread"])
    for w in cal["within"]:
        print(f"|error| within ±{w['k']} spread: {w['observed']:.1%} (calibrated Gaussian: {w['expected']:.1%})")
    for q in cal["quartiles"]:
        print(f"spread {q['quartile']} ({q['spread_min']:.1f}-{q['spread_max']:.1f} years): MAE {q['mae']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utkface", type=Path, default=ROOT / ".." / "shared" / "data" / "utkface")
    parser.add_argument("--prepared", type=Path, default=Path("prepared/utkface-aligned"),
                        help="prepared UTKFace (made here from --utkface when absent)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    if not (ROOT / args.prepared / "manifest.csv").is_file():  # relative paths start at the repository root
        from agecli.modelio.builtin import BUILTIN_MODEL
        from agecli.modelio.checkpoint import load_model

        cut = load_model(BUILTIN_MODEL)[1]  # faces cut as the built-in model was trained on them
        age("prepare", "utkface", "--root", args.utkface, "--out", args.prepared, "--align", cut.align,
            "--sizes", str(cut.crop_size))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "eval"
        age("eval", "--model", "agecli/weights/default.pt", "--data", args.prepared, "--split", "test",
            "--out", run)
        screenshot_above_faces(run / "report.html", args.out)
        print_figures(run)
    print(f"screenshot saved to {args.out}")


if __name__ == "__main__":
    main()
