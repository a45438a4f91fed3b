"""`age bench` needs no data folder: without --data it times seeded synthetic faces and photos."""

from __future__ import annotations

import pandas as pd
import pytest

from agecli.bench import runner as bench
from agecli.errors import AgeCliError


def test_bench_data_is_generated_when_no_folder_is_given(tmp_path):
    prepared, photos, note = bench._bench_data(None, tmp_path, faces=6, photo_limit=3)
    assert len(pd.read_csv(prepared / "manifest.csv")) == 6 and (prepared / "crops_64.npy").is_file()
    assert len(photos) == 3 and all(p.endswith(".jpg") for p in photos)
    assert "synthetic" in note


def test_bench_data_folder_must_hold_utkface_and_fairface(tmp_path):
    (tmp_path / "data" / "utkface").mkdir(parents=True)
    with pytest.raises(AgeCliError, match="fairface: not found"):
        bench._bench_data(tmp_path / "data", tmp_path / "work", faces=6, photo_limit=3)
