"""benchmarks/spread_shape.py: the constant spreads that cover errors as a Gaussian's would."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

_spec = importlib.util.spec_from_file_location("spread_shape", Path(__file__).parents[1] / "benchmarks" / "spread_shape.py")
spread_shape = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(spread_shape)


def test_gaussian_errors_have_a_window_around_their_sd():
    error = np.abs(np.random.default_rng(0).normal(0, 4.0, 20000))
    low, high = (float(x) for x in spread_shape.constant_window(error).split(" to "))
    assert low < 4.0 < high


def test_errors_of_one_size_have_no_window():
    assert spread_shape.constant_window(np.full(500, 3.0)) == "none"  # ±1 is 0% or 100%, never 63-73%


def test_shape_reads_each_source():
    rng = np.random.default_rng(1)
    rows = pd.DataFrame({"age": 30.0, "pred": 30 + rng.normal(0, 5, 400), "spread": rng.uniform(4.5, 5.5, 400),
                         "source": ["a"] * 200 + ["b"] * 200})
    rows.loc[rows["source"] == "b", "pred"] = 30 + rng.uniform(-5, 5, 200)  # light tails: ratio under 2
    a, b = (spread_shape.shape(group) for _, group in rows.groupby("source"))
    assert a["faces"] == b["faces"] == 200
    assert float(b["|error| q95.4 / q68.3"]) < 1.6 < float(a["|error| q95.4 / q68.3"])
