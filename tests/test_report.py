"""report.html: built by train, eval and lopo runs and by `age report`, self-contained, right, and readable."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from agecli.cli.app import app
from agecli.config import resolve_config
from agecli.data.prepare import prepare
from agecli.metrics import spread_calibration
from agecli.report import build_report
from agecli.training import lopo
from agecli.training.engine import train
from tests.browser import chromium_page
from tests.helpers import age_main, assert_one_line_error, synthetic_face

SUBJECTS = 5
PER_SUBJECT = 8
QUICK = {"train.epochs": 2, "train.batch_size": 16, "train.device": "cpu"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """5 synthetic subjects x 8 faces; `age prepare` splits them into train and test by subject."""
    root = tmp_path_factory.mktemp("faces")
    lines = ["filename,age,subject"]
    for s in range(1, SUBJECTS + 1):
        for j in range(PER_SUBJECT):
            age = 4 + 9 * j + s
            synthetic_face(root / f"s{s}_{j}.png", age, size=64, seed=10 * s + j)
            lines.append(f"s{s}_{j}.png,{age},{s:03d}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return prepare("csv", root, tmp_path_factory.mktemp("prep") / "syn").out


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory) -> dict[str, Path]:
    """A train run of a distribution model (ssrnet_dist), `age eval` of it, and a LOPO run of plain SSR-Net."""
    base = tmp_path_factory.mktemp("runs")
    overrides = {**QUICK, "data.manifest": str(prepared), "data.cache_size": 64}
    (base / "train").mkdir()
    train(resolve_config("ssrnet/utkface", overrides), base / "train")
    result = CliRunner().invoke(app, ["eval", "--model", str(base / "train" / "best.pt"), "--data", str(prepared),
                                      "--device", "cpu", "--out", str(base / "eval")])
    assert result.exit_code == 0, result.output
    cfg = lopo.lopo_config("ssrnet/paper", {**QUICK, "train.epochs": 1, "data.manifest": str(prepared)})
    lopo.run_lopo(cfg, base / "lopo")
    return {"train": base / "train", "eval": base / "eval", "lopo": base / "lopo"}


def html(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    return match.group(1) if match else ""


def decode_png(data_uri: str) -> np.ndarray:
    assert data_uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))))


# ---------------------------------------------------------------------------- contents

def test_every_run_folder_gets_its_report(runs):
    train_page, eval_page, lopo_page = (html(runs[k]) for k in ("train", "eval", "lopo"))
    for page in (train_page, eval_page, lopo_page):
        assert "CA(n) is the share of images with |predicted - true age| &lt; n years" in page
        assert "torch" in section(page, "versions") and "lr:" in section(page, "config")
    assert section(train_page, "curves").count("<img") == 1 and not section(train_page, "faces")
    results = json.loads((runs["train"] / "results.json").read_text())
    assert f"{results['test']['mae']:.2f}" in section(train_page, "metrics")
    assert section(eval_page, "errors") and section(eval_page, "calibration") and section(eval_page, "faces")
    assert "name: ssrnet_dist" in section(eval_page, "config")  # the checkpoint's resolved config
    subjects = section(lopo_page, "subjects")
    for s in range(1, SUBJECTS + 1):
        assert f"<td>{s:03d}</td>" in subjects  # every subject, as its id
    assert not section(lopo_page, "calibration")  # plain SSR-Net predicts no spread
    summary = json.loads((runs["lopo"] / "report.json").read_text())
    assert f"{summary['mean_subject_mae']:.2f}" in section(lopo_page, "metrics")


def test_reports_are_self_contained(runs):
    for kind, run_dir in runs.items():
        page = html(run_dir)
        assert "<script" not in page.lower(), kind
        links = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert links and all(link.startswith(("data:", "#")) for link in links), kind
        for uri in re.findall(r'<img src="([^"]+)"', page):
            assert decode_png(uri).size > 0


def test_eval_predictions_carry_the_spread_and_calibration_matches_them(runs):
    preds = pd.read_csv(runs["eval"] / "predictions.csv")
    assert {"path", "age", "pred", "spread"} <= set(preds.columns) and (preds["spread"] > 0).all()
    within = (np.abs(preds["pred"] - preds["age"]) <= preds["spread"]).mean()
    assert f"{100 * within:.1f}%" in section(html(runs["eval"]), "calibration")


def test_worst_faces_are_the_largest_errors_cut_from_the_crop_cache(runs, prepared):
    page = section(html(runs["eval"]), "faces")
    worst = page[page.index("largest errors"):page.index("random sample")]
    preds = pd.read_csv(runs["eval"] / "predictions.csv")
    error = preds["pred"] - preds["age"]
    order = np.argsort(-np.abs(error.to_numpy()), kind="stable")
    shown = re.findall(r'class="err \w+">([^<]+)<', worst)
    assert shown == [f"{error[i]:+.1f}" for i in order]  # fewer faces than a grid holds: all, worst first
    manifest = pd.read_csv(prepared / "manifest.csv", keep_default_na=False)
    row = int(manifest.loc[manifest["path"] == preds["path"][order[0]], "cache_row"].iloc[0])
    crops = np.load(prepared / "crops_64.npy")
    assert np.array_equal(decode_png(re.search(r'<img src="([^"]+)"', worst).group(1)), crops[row])


def test_spread_calibration_counts():
    target = np.zeros(8)
    pred = np.array([0.5, -1.5, 2.5, 0.2, 3.0, -0.9, 4.5, 1.0])
    std = np.array([1, 1, 1, 1, 2, 2, 2, 2], float)
    cal = spread_calibration(pred, target, std)
    assert [w["observed"] for w in cal["within"]] == [4 / 8, 6 / 8]  # within 1 sd: .5 .2 .9 1; 2 sd: also 1.5 3
    assert [round(w["expected"], 3) for w in cal["within"]] == [0.683, 0.954]
    assert [q["n"] for q in cal["quartiles"]] == [2, 2, 2, 2]
    assert [q["mae"] for q in cal["quartiles"]] == [1.0, 1.35, 1.95, 2.75]
    assert cal["curve"]["observed"][0] == 0 and cal["curve"]["observed"][-1] == 1  # every |error| <= 3 sd


# ---------------------------------------------------------------------------- rebuilding and failures

def test_age_report_rebuilds_each_kind_atomically(runs):
    for kind, run_dir in runs.items():
        (run_dir / "report.html").unlink()
        result = CliRunner().invoke(app, ["report", str(run_dir)])
        assert result.exit_code == 0, result.output
        assert section(html(run_dir), "metrics"), kind
        assert not [p for p in run_dir.iterdir() if p.name.startswith(".report.html")]  # no temporary left


def test_age_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    assert_one_line_error(age_main("report", tmp_path, cwd=tmp_path), str(tmp_path), "not a run folder")


def test_missing_dataset_leaves_a_note_not_a_failure(runs, tmp_path):
    moved = tmp_path / "eval"
    shutil.copytree(runs["eval"], moved)
    meta = json.loads((moved / "metrics.json").read_text())
    meta["data_dirs"] = [str(tmp_path / "gone")]
    (moved / "metrics.json").write_text(json.dumps(meta))
    faces = section(html(build_report(moved).parent), "faces")
    assert "no thumbnails" in faces and "gone" in faces and "<img" not in faces


def test_a_failing_report_warns_once_and_keeps_the_run(prepared, tmp_path, monkeypatch, capsys):
    import agecli.report.page as render

    def broken(record):
        raise RuntimeError("template exploded\nsecond line")

    monkeypatch.setattr(render, "render", broken)
    train(resolve_config("ssrnet/paper", {**QUICK, "train.epochs": 1, "data.manifest": str(prepared)}), tmp_path)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "report.html" in line]
    assert len(warnings) == 1 and "template exploded second line" in warnings[0]
    assert warnings[0].startswith("warning:") and f"age report {tmp_path}" in warnings[0]
    assert (tmp_path / "results.json").is_file() and (tmp_path / "best.pt").is_file()
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------------- in a browser

def test_reports_open_in_headless_chromium(runs, tmp_path):
    with chromium_page() as (page, errors):
        requests = []
        page.on("request", lambda request: requests.append(request.url))
        for kind, run_dir in runs.items():
            page.goto((run_dir / "report.html").resolve().as_uri())
            page.wait_for_load_state("load")
            broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
            assert broken == 0, kind
            shot = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"), float)
            assert shot.std() > 20, kind  # not a blank page
            page.screenshot(path=str(tmp_path / f"{kind}.png"), full_page=True)
        assert errors == []
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
