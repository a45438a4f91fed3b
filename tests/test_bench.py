"""`age bench` needs no data folder: without --data it times seeded synthetic faces and photos."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agecli.bench import children
from agecli.bench import runner as bench
from agecli.errors import AgeCliError
from tests.helpers import tiny_checkpoint


def test_bench_data_is_generated_when_no_folder_is_given(tmp_path):
    prepared, photos, note = bench._bench_data(None, tmp_path, faces=6, photo_limit=3)
    assert len(pd.read_csv(prepared / "manifest.csv")) == 6 and (prepared / "crops_64.npy").is_file()
    assert len(photos) == 3 and all(p.endswith(".jpg") for p in photos)
    assert "synthetic" in note


def test_bench_data_folder_must_hold_utkface_and_fairface(tmp_path):
    (tmp_path / "data" / "utkface").mkdir(parents=True)
    with pytest.raises(AgeCliError, match="fairface: not found"):
        bench._bench_data(tmp_path / "data", tmp_path / "work", faces=6, photo_limit=3)


def test_built_in_model_rows_time_the_default_model_on_crops_of_its_own_size(tmp_path, monkeypatch):
    """`age bench` times the model `age predict` runs by default, not only SSR-Net: one child per backend, each
    given crops of that model's size."""

    from agecli.modelio.builtin import BUILTIN_MODEL
    from agecli.modelio.checkpoint import load_checkpoint, stored_preprocess

    calls = []

    def child(name, n_threads, **kwargs):  # in this process: a real measurement, only shorter
        calls.append(dict(kwargs))
        kwargs.pop("heap_kept")
        return children.CHILDREN[name](**kwargs)

    monkeypatch.setattr(bench, "run_child", child)
    rows = bench._builtin_infer_rows(BUILTIN_MODEL, tmp_path, threads=1, seconds=0.05, on_step=lambda text: None)
    size = stored_preprocess(load_checkpoint(BUILTIN_MODEL)).crop_size
    assert np.load(tmp_path / "builtin_crops.npy").shape == (64, size, size, 3)
    assert [c["kind"] for c in calls] == ["pytorch eager", "onnxruntime"] and calls[0]["heap_kept"]
    assert [(r["variant"], r["batch"]) for r in rows] == [("pytorch eager", 1), ("pytorch eager", 64),
                                                          ("onnxruntime", 1), ("onnxruntime", 64)]
    assert all(r["task"].startswith("built-in model (1 x efficientnet_lite0") and not r["target"] for r in rows)
    assert all(r["items"] > 0 and r["wall"] > 0 for r in rows)


def test_a_measurement_runs_in_its_own_interpreter_and_reports_its_peak_memory(tmp_path):
    """run_child starts `python -m agecli.bench.children` for real: the rows come back from the other process."""
    checkpoint = tiny_checkpoint(tmp_path / "ssrnet.pt")
    np.save(tmp_path / "crops.npy", np.zeros((64, 64, 64, 3), dtype=np.uint8))
    rows = bench.run_child("infer", 1, kind="pytorch eager", checkpoint=str(checkpoint), onnx_path="",
                           crops_file=str(tmp_path / "crops.npy"), seconds=0.05, threads=1, heap_kept=False)
    assert [row["batch"] for row in rows] == [1, 64] and not any("error" in row for row in rows), rows
    assert all(row["peak_mib"] > row["setup_mib"] > 0 and row["items"] > 0 for row in rows)
