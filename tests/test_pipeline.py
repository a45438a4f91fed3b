"""prepare -> train -> eval, through the library and the `age` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from agecli.config import resolve_config
from agecli.data.prepare import prepare
from agecli.training.engine import train
from tests.helpers import age_main, assert_one_line_error, link_utkface, synthetic_face

QUICK = {"train.epochs": 3, "train.batch_size": 16, "data.val_fraction": 0.2}


@pytest.fixture
def synthetic_csv(tmp_path):
    """60 synthetic faces in a filename,age CSV, with a subject column."""
    folder = tmp_path / "faces"
    folder.mkdir()
    rows = []
    for i in range(60):
        age = 5 + (i * 7) % 70
        synthetic_face(folder / f"img{i:03d}.png", age, seed=i)
        rows.append(f"img{i:03d}.png,{age},s{i % 6}")
    (folder / "labels.csv").write_text("filename,age,subject\n" + "\n".join(rows) + "\n")
    return folder


def test_prepare_csv_writes_manifest_cache_and_report(synthetic_csv, tmp_path):
    (synthetic_csv / "broken.png").write_bytes(b"not an image")
    synthetic_face(synthetic_csv / "neg.png", 20)
    with open(synthetic_csv / "labels.csv", "a") as f:
        f.write("broken.png,30,s0\nneg.png,-4,s0\n")
    result = prepare("csv", synthetic_csv, tmp_path / "prep", sizes=(64, 32))
    df = pd.read_csv(tmp_path / "prep" / "manifest.csv", keep_default_na=False)
    assert list(df.columns)[:5] == ["path", "age", "subject", "split", "source"]
    assert len(df) == 60 and result.kept == 60
    crops = np.load(tmp_path / "prep" / "crops_64.npy", mmap_mode="r")
    assert crops.dtype == np.uint8 and crops.shape[1:] == (64, 64, 3)
    assert np.load(tmp_path / "prep" / "crops_32.npy").shape[1:] == (32, 32, 3)
    report = pd.read_csv(tmp_path / "prep" / "report.csv")
    problems = " ".join(report["item"].astype(str) + " " + report["problem"].astype(str))
    assert "broken.png" in problems and "labels.csv:63" in problems  # the bad image and the negative age's line
    # by-subject seeded split: no subject in both train and test
    assert not set(df[df.split == "train"].subject) & set(df[df.split == "test"].subject)
    assert set(df.split) == {"train", "test"}


def test_prepare_is_resumable_and_idempotent(synthetic_csv, tmp_path, monkeypatch):
    import agecli.data.prepare as prep

    monkeypatch.setattr(prep, "CHUNK", 16)
    calls = []
    real = prep._process

    def crash_after_20(row, *args):
        calls.append(row["path"])
        if len(calls) == 20:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return real(row, *args)

    monkeypatch.setattr(prep, "_process", crash_after_20)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare("csv", synthetic_csv, tmp_path / "prep")
    assert not (tmp_path / "prep" / "manifest.csv").exists()  # nothing that looks complete
    monkeypatch.setattr(prep, "_process", real)
    result = prep.prepare("csv", synthetic_csv, tmp_path / "prep")
    assert result.resumed_from == 16 and result.kept == 60
    prep.prepare("csv", synthetic_csv, tmp_path / "fresh")  # uninterrupted, for comparison
    assert np.array_equal(np.load(tmp_path / "prep" / "crops_64.npy"), np.load(tmp_path / "fresh" / "crops_64.npy"))
    again = prep.prepare("csv", synthetic_csv, tmp_path / "prep")  # already complete: nothing redone
    assert again.kept == 60 and again.resumed_from == 60


def test_train_resume_and_determinism(synthetic_csv, tmp_path):
    prepare("csv", synthetic_csv, tmp_path / "prep")
    overrides = {**QUICK, "data.manifest": str(tmp_path / "prep"), "train.device": "cpu"}
    cfg = resolve_config("ssrnet/paper", overrides)
    (tmp_path / "a").mkdir()
    full = train(cfg, tmp_path / "a")
    # same seed, same data: identical metrics
    (tmp_path / "b").mkdir()
    again = train(resolve_config("ssrnet/paper", overrides), tmp_path / "b")
    assert full.history == [dict(r, seconds=s["seconds"]) for r, s in zip(again.history, full.history)]
    # two epochs, then resume to three: the same as three in one go
    (tmp_path / "c").mkdir()
    train(resolve_config("ssrnet/paper", {**overrides, "train.epochs": 2}), tmp_path / "c")
    cfg3 = resolve_config("ssrnet/paper", overrides)
    resumed = train(cfg3, tmp_path / "c", resume=True)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    for name in ("config.yaml", "env.json", "metrics.csv", "curves.png", "best.pt", "last.pt", "results.json"):
        assert (tmp_path / "c" / name).is_file(), name
    env = json.loads((tmp_path / "c" / "env.json").read_text())
    assert env["seed"] == 0 and "torch" in env["versions"]


def test_cli_train_and_eval_on_synthetic(synthetic_csv, tmp_path):
    r = age_main("prepare", "csv", "--root", synthetic_csv, "--out", tmp_path / "prep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = age_main("train", "ssrnet", "--preset", "paper", "--data", tmp_path / "prep", "--epochs", "2",
                "--set", "train.batch_size=16", "--out", "runs/train/quick", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "runs" / "train" / "quick"
    assert (run / "best.pt").is_file() and "Results saved to" in r.stderr
    r = age_main("eval", "--model", run / "best.pt", "--data", tmp_path / "prep", "--json", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(r.stdout[r.stdout.index("{"):])
    assert {"mae", "ca3", "ca5", "n"} <= set(metrics) and metrics["n"] > 0
    assert "unrounded" in r.stderr


@pytest.mark.parametrize("args, needles", [
    (["prepare", "utkface", "--root", "/nonexistent/x"], ["/nonexistent/x"]),
    (["train", "ssrnet", "--preset", "papr"], ["unknown preset 'papr'"]),
    (["train", "ssrnet", "--preset", "paper", "--set", "optim.lrr=1"], ["optim.lrr", "did you mean"]),
    (["train", "ssrnet", "--preset", "paper", "--data", "nowhere"], ["nowhere", "age prepare"]),
    (["eval", "--model", "missing.pt", "--data", "x"], ["missing.pt"]),
])
def test_cli_bad_input_is_one_line(tmp_path, args, needles):
    assert_one_line_error(age_main(*args, cwd=tmp_path), *needles)


def test_cli_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(age_main("prepare", "utkface", "--root", tmp_path / "empty", cwd=tmp_path), "empty")


def test_utkface_integration(shared_dir, tmp_path):
    """1,000 real faces: the loss falls and MAE beats always predicting the training mean (by 2.2 years)."""
    link_utkface(shared_dir, tmp_path / "utk", 1000)
    prepared = prepare("utkface", tmp_path / "utk", tmp_path / "prep")
    assert prepared.kept == 1000
    # the paper recipe, with smaller batches so that a few epochs make enough steps
    cfg = resolve_config("ssrnet/paper", {"data.manifest": str(tmp_path / "prep"), "train.epochs": 5,
                                          "train.batch_size": 16, "train.device": "cpu", "train.select": "mae"})
    (tmp_path / "run").mkdir()
    result = train(cfg, tmp_path / "run")
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] * 0.8
    df = pd.read_csv(tmp_path / "prep" / "manifest.csv", keep_default_na=False)
    train_mean = df[df.split == "train"].age.mean()
    test = df[df.split == "test"]
    baseline = float(np.abs(test.age - train_mean).mean())
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["test"]["mae"] < baseline, (summary, baseline)


def test_user_commands_as_written_megaage(shared_dir, tmp_path):
    """`age prepare megaage --root DIR` then `age train ssrnet --preset paper`: no --out, no --data."""
    root = tmp_path / "MegaAge-Asian"
    faces = link_utkface(shared_dir, tmp_path / "pool", 60, seed=3)
    for split, chunk in (("train", faces[:45]), ("test", faces[45:])):
        (root / split).mkdir(parents=True)
        names, ages = [], []
        for i, face in enumerate(chunk):
            name = f"{i + 1}.jpg"
            (root / split / name).symlink_to(face.resolve())
            names.append(name)
            ages.append(face.name.split("_")[0])
        (root / "list").mkdir(exist_ok=True)
        (root / "list" / f"{split}_name.txt").write_text("\n".join(names) + "\n")
        (root / "list" / f"{split}_age.txt").write_text("\n".join(ages) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    r = age_main("prepare", "megaage", "--root", root, cwd=work)
    assert r.returncode == 0, r.stderr
    assert (work / "prepared" / "megaage" / "manifest.csv").is_file()
    # the preset names prepared/megaage; only the epoch count is shortened for the test
    r = age_main("train", "ssrnet", "--preset", "paper", "--epochs", "1", cwd=work)
    assert r.returncode == 0, r.stderr
    summary = json.loads((work / "runs" / "train" / "ssrnet-paper" / "results.json").read_text())
    assert summary["test"]["n"] == 15


def test_mvloss_recipe_trains_resnet_with_frozen_backbone_first(synthetic_csv, tmp_path):
    """The mean-variance recipe end to end at toy scale: augmentation, head-only epoch, SGD, spread."""
    import torch

    from agecli.modelio.checkpoint import load_checkpoint

    prepare("csv", synthetic_csv, tmp_path / "prep", sizes=(72,))
    overrides = {"data.manifest": str(tmp_path / "prep"), "model.name": "resnet18", "model.pretrained": "none",
                 "data.cache_size": 72, "data.input_size": 64, "train.epochs": 2, "train.freeze_epochs": 1,
                 "train.batch_size": 16, "train.device": "cpu"}
    cfg = resolve_config("mvloss/paper", overrides)
    assert cfg.data.augment == "mvloss" and cfg.loss.name == "mean_variance"
    from agecli.models import create_model

    torch.manual_seed(cfg.train.seed)  # fit seeds the same way before building the model
    initial = create_model("resnet18", **cfg.model.kwargs).state_dict()
    conv, head, bn = "backbone.conv1.weight", "head.2.weight", "backbone.bn1.running_mean"
    for epochs in (1, 2):
        run = tmp_path / f"run{epochs}"
        run.mkdir()
        result = train(resolve_config("mvloss/paper", {**overrides, "train.epochs": epochs}), run)
        assert len(result.history) == epochs and all(np.isfinite(r["train_loss"]) for r in result.history)
        state = load_checkpoint(run / "last.pt")["state_dict"]
        assert not torch.equal(state[head], initial[head])
        # epoch 1 trains only the head; from epoch 2 the backbone learns too
        assert torch.equal(state[conv], initial[conv]) == (epochs == 1)
        # ...and its BatchNorm statistics stay those it started with (train_one_epoch's model.train() must not undo it)
        assert torch.equal(state[bn], initial[bn]) == (epochs == 1)
    preprocess = load_checkpoint(tmp_path / "run2" / "best.pt")["preprocess"]
    assert preprocess["input_size"] == 64 and preprocess["age_max"] == 69.0


def test_pretrained_imagenet_offline_is_one_line(synthetic_csv, tmp_path):
    prepare("csv", synthetic_csv, tmp_path / "prep", sizes=(64,))
    r = age_main("train", "mvloss", "--preset", "paper", "--data", tmp_path / "prep", "--epochs", "1",
                "--set", "data.cache_size=64", "--set", "data.input_size=64", cwd=tmp_path,
                env={"TORCH_HOME": str(tmp_path / "torch")})
    assert_one_line_error(r, "ImageNet", "--pretrained none")
