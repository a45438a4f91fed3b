"""Whether any spread could cover a source's errors as a Gaussian's would, from an `age eval` predictions.csv.

    python benchmarks/spread_shape.py runs/eval/NAME/predictions.csv [more.csv ...]

For each source (the `source` column; one source when there is none) it prints the MAE, the mean spread,
how well the spreads rank the errors (Spearman correlation of spread and |error|), the shares within ±1 and
±2 spreads, and two facts about the errors alone:
- the ratio of their 95.4th to 68.3rd percentile of |error|: 2.0 for a Gaussian, more for heavier tails;
- the constant spreads, the same for every face, under which ±1 / ±2 fall within 68 ± 5% / 95 ± 3%.
When the errors' own ratio is well under 2, only a narrow window of spreads meets both shares.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

WITHIN_1, WITHIN_2 = (0.63, 0.73), (0.92, 0.98)


def constant_window(error: np.ndarray) -> str:
    """The constant spreads (0.05-year steps) whose ±1 / ±2 shares meet the band, as 'low to high' years."""
    fits = [s for s in np.arange(0.5, 30, 0.05)
            if WITHIN_1[0] <= np.mean(error <= s) <= WITHIN_1[1] and WITHIN_2[0] <= np.mean(error <= 2 * s) <= WITHIN_2[1]]
    return f"{fits[0]:.2f} to {fits[-1]:.2f}" if fits else "none"


def shape(rows: pd.DataFrame) -> dict:
    error, spread = (rows["pred"] - rows["age"]).abs().to_numpy(), rows["spread"].to_numpy()
    q68, q95 = np.quantile(error, [0.683, 0.954])
    return {"faces": len(rows), "MAE": f"{error.mean():.2f}", "mean spread": f"{spread.mean():.2f}",
            "rank corr": f"{pd.Series(spread).corr(pd.Series(error), method='spearman'):.2f}",
            "±1": f"{np.mean(error <= spread):.1%}", "±2": f"{np.mean(error <= 2 * spread):.1%}",
            "|error| q95.4 / q68.3": f"{q95 / q68:.2f}", "constant spreads in band": constant_window(error)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, nargs="+", help="predictions.csv files written by age eval")
    args = parser.parse_args()
    table = []
    for path in args.predictions:
        df = pd.read_csv(path)
        if "spread" not in df:
            raise SystemExit(f"{path}: no spread column (the model gives no spread)")
        groups = df.groupby("source", sort=False) if "source" in df else [("all", df)]
        table += [{"predictions": str(path), "source": name, **shape(rows)} for name, rows in groups]
    columns = list(table[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in table:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
