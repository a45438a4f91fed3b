"""Safety as a hostile or careless user meets it: model files are data, outputs never replace a user's
file, nothing hangs, every bad input is one line, bad rows cost only their row, resume and no litter.

The findings of issue 15, in its numbering. Most cases run the real entry point in this process
(tests.helpers.age_main); the ones where a hang or a killed process is the point run `age` for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from agecli.errors import AgeCliError
from tests.helpers import (
    age_main,
    assert_one_line_error,
    labelled_faces,
    run_age,
    synthetic_face,
    tiny_checkpoint,
)

N_FACES = 12
QUICK = ["--set", "train.batch_size=8", "--device", "cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A labelled folder of faces, a tiny checkpoint and the folder prepared once for the whole module."""
    from agecli.data.prepare import prepare

    root = tmp_path_factory.mktemp("world")
    faces = labelled_faces(root / "faces", N_FACES)
    prepare("csv", faces, root / "prep")
    return {"root": root, "faces": faces, "prep": root / "prep", "tiny": tiny_checkpoint(root / "tiny.pt"),
            "photo": faces / "f00.png"}


def _digest(path) -> bytes:
    return path.read_bytes()


# ---- 1. model files are data: a TorchScript file is a program and is never loaded by default -------


def _torchscript(path, age: float = 138.0):
    """A TorchScript file laid out like `age export` output (extra/agecli.json), that answers `age`."""
    class Constant(torch.nn.Module):
        def forward(self, x):
            return (x.float().mean(dim=(1, 2, 3)) * 0 + age,)

    meta = {"preprocess": {"size": 64, "margin": 0.0, "shift": 0.0, "mean": [0, 0, 0], "std": [1, 1, 1],
                           "channel_order": "RGB"}, "input": {"size": 64}, "model": "evil"}
    traced = torch.jit.trace(Constant(), (torch.zeros(1, 64, 64, 3, dtype=torch.uint8),))
    torch.jit.save(traced, str(path), _extra_files={"agecli.json": json.dumps(meta)})
    return path


def test_torchscript_named_pt_is_refused_unless_allowed(world, tmp_path, monkeypatch):
    model = _torchscript(tmp_path / "model.pt")
    loads = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    r = age_main("predict", world["photo"], "--model", model, "--detector", "none", "--out", tmp_path / "out")
    assert_one_line_error(r, "model.pt", "TorchScript", "--allow-torchscript")
    assert loads == [] and not (tmp_path / "out").exists()
    # the explicit opt-in runs it (and its code), as its help says
    r = age_main("predict", world["photo"], "--model", model, "--detector", "none", "--out", tmp_path / "out",
                 "--allow-torchscript")
    assert r.returncode == 0, r.stderr
    assert len(loads) == 1 and pd.read_csv(tmp_path / "out" / "predictions.csv")["age"].tolist() == [138.0]


def test_allow_torchscript_help_says_it_runs_code_from_the_file():
    import typer

    from agecli.cli.app import app

    predict = typer.main.get_command(app).commands["predict"]
    option = next(p for p in predict.params if "--allow-torchscript" in p.opts)
    assert "runs code from the file" in " ".join(option.help.split())


def _text_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    return path


def _bytes(data: bytes):
    def make(path):
        path.write_bytes(data)
        return path

    return make


@pytest.mark.parametrize("make, says", [
    (_bytes(b""), "empty file (0 bytes)"),
    (_bytes(np.random.default_rng(0).integers(1, 0x7F, 64, dtype=np.uint8).tobytes()),  # no 0x80: no pickle header
     "neither a PyTorch zip archive nor a pickle"),
    (_text_zip, "a zip archive, but not a PyTorch checkpoint"),
    (_torchscript, "a TorchScript program, not a checkpoint"),
], ids=["empty", "random", "zip", "torchscript"])
def test_not_a_checkpoint_says_what_the_file_is(tmp_path, make, says):
    from agecli.modelio.checkpoint import load_checkpoint

    path = make(tmp_path / "model.pt")
    with pytest.raises(AgeCliError) as err:
        load_checkpoint(path)
    assert says in str(err.value) and str(err.value).startswith(str(path))
    assert "pickled" not in str(err.value)  # a random file is not called a pickle (test_bad_input covers real ones)


# ---- 2. outputs never replace an input or a file the command did not write -------------------------


@pytest.mark.parametrize("option", ["--csv", "--json"])
def test_predict_refuses_an_input_photo_as_its_csv_or_json(world, tmp_path, option):
    photo = tmp_path / "photo.png"
    photo.write_bytes(world["photo"].read_bytes())
    r = age_main("predict", photo, option, photo, "--detector", "none", "--model", world["tiny"],
                 "--out", tmp_path / "o")
    assert_one_line_error(r, option, "photo.png", "one of the inputs")
    assert photo.read_bytes() == world["photo"].read_bytes()


def test_predict_csv_replaces_only_its_own_earlier_output(world, tmp_path):
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n")
    args = ["predict", world["photo"], "--detector", "none", "--model", world["tiny"]]
    assert_one_line_error(age_main(*args, "--csv", notes, cwd=tmp_path), "--csv", "notes.csv", "not an earlier output")
    assert notes.read_text() == "my,own\nnotes,here\n"
    for _ in range(2):  # a rerun may replace what the first run wrote
        r = age_main(*args, "--csv", tmp_path / "ages.csv", "--json", tmp_path / "ages.json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path / "ages.csv")) == 1


def test_drawn_copies_never_replace_an_unrelated_file(world, tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "photo.png").write_bytes(world["photo"].read_bytes())
    synthetic_face(folder / "photo_2.png", 70, seed=9)  # the user's own file, not an output
    theirs = _digest(folder / "photo_2.png")
    args = ["predict", folder / "photo.png", "--draw", "--out", folder, "--detector", "none", "--model", world["tiny"]]
    for _ in range(2):
        r = age_main(*args)
        assert r.returncode == 0, r.stderr
    assert _digest(folder / "photo_2.png") == theirs
    assert (folder / "photo_3.png").is_file() and not (folder / "photo_4.png").exists()  # the rerun redrew its own


def _port_pth(path):
    """A .pth laid out like the SSR-Net PyTorch port's, from agecli's SSR-Net renamed back."""
    from agecli.modelio.ssrnet_port import PORT_MODEL_KWARGS, PORT_TO_AGECLI
    from agecli.models.ssrnet import SSRNet

    ours = SSRNet(**PORT_MODEL_KWARGS).state_dict()
    torch.save({"state_dict": {port: ours[name] for port, name in PORT_TO_AGECLI.items()}}, path)
    return path


def test_import_refuses_to_write_over_its_source_or_a_foreign_file(tmp_path):
    src = _port_pth(tmp_path / "p.pth")
    before = _digest(src)
    assert_one_line_error(age_main("import", "ssrnet-port", src, "--output", src), "--out", "one of the inputs")
    assert _digest(src) == before
    other = tmp_path / "other.pt"
    other.write_text("not mine")
    assert_one_line_error(age_main("import", "ssrnet-port", src, "--output", other), "--out", "other.pt")
    assert other.read_text() == "not mine"
    for _ in range(2):  # an earlier import at the same place may be replaced
        assert age_main("import", "ssrnet-port", src, "--output", tmp_path / "port.pt").returncode == 0


def test_prepare_refuses_an_out_folder_holding_the_users_manifest(tmp_path):
    data = labelled_faces(tmp_path / "D", 4)
    (data / "labels.csv").rename(data / "manifest.csv")  # the user's labels, under the name prepare writes
    labels = (data / "manifest.csv").read_text()
    r = age_main("prepare", "csv", "--root", data, "--out", data)
    assert_one_line_error(r, "--out", "manifest.csv", "not written by age prepare")
    assert (data / "manifest.csv").read_text() == labels


# ---- 3. only regular files are read: a FIFO does not hang predict ----------------------------------


def test_fifo_among_photos_is_reported_and_the_others_processed(world, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "good.png").write_bytes(world["photo"].read_bytes())
    os.mkfifo(folder / "pipe.jpg")
    (folder / "album.jpg").mkdir()  # a folder named like a photo
    r = run_age("predict", folder, folder / "pipe.jpg", "--detector", "none", "--model", world["tiny"],
                "--out", tmp_path / "out", timeout=120)  # before the fix: blocked forever on open()
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("path")
    assert rows.loc[str(folder / "good.png"), "status"] == "ok"
    assert "FIFO" in rows.loc[str(folder / "pipe.jpg"), "error"]
    assert "folder" in rows.loc[str(folder / "album.jpg"), "error"]


def test_dataset_entries_that_are_not_files_are_in_report_csv(world, tmp_path):
    from agecli.data.prepare import prepare

    folder = tmp_path / "utk"
    folder.mkdir()
    for i in range(3):
        synthetic_face(folder / f"{20 + i}_0_0_2017011617452{i}.jpg.chip.jpg", 20 + i, seed=i)
    os.mkfifo(folder / "30_0_0_20170116174530.jpg.chip.jpg")
    (folder / "31_0_0_20170116174531.jpg.chip.jpg").mkdir()
    os.symlink("32_0_0_20170116174532.jpg.chip.jpg", folder / "32_0_0_20170116174532.jpg.chip.jpg")  # a loop
    result = prepare("utkface", folder, tmp_path / "prep")
    report = pd.read_csv(tmp_path / "prep" / "report.csv")
    problems = {os.path.basename(item): p for item, p in zip(report["item"], report["problem"])}
    assert result.kept == 3
    assert "FIFO" in problems["30_0_0_20170116174530.jpg.chip.jpg"]
    assert "folder" in problems["31_0_0_20170116174531.jpg.chip.jpg"]
    assert "link loop" in problems["32_0_0_20170116174532.jpg.chip.jpg"]


# ---- 4. tracebacks become one line; the error handler survives any message ------------------------


@pytest.fixture(scope="module")
def broken(world, tmp_path_factory):
    """Prepared folders with a truncated crop cache and with a cache_row past its end; an empty .pt."""
    import shutil

    root = tmp_path_factory.mktemp("broken")
    for name in ("truncated", "badrow"):
        shutil.copytree(world["prep"], root / name)
    cache = root / "truncated" / "crops_64.npy"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    manifest = pd.read_csv(root / "badrow" / "manifest.csv", keep_default_na=False)
    manifest.loc[0, "cache_row"] = 999
    manifest.to_csv(root / "badrow" / "manifest.csv", index=False)
    (root / "empty.pt").write_bytes(b"")
    (root / "a_file").write_text("x")
    return root


CASES = {
    "empty .pt to predict": (["predict", "{photo}", "--model", "{broken}/empty.pt"], ["empty.pt", "empty file"]),
    "empty .pt to eval": (["eval", "--model", "{broken}/empty.pt", "--data", "{prep}"], ["empty.pt", "empty file"]),
    "prepare --seed=-1": (["prepare", "csv", "--root", "{faces}", "--out", "{tmp}/p", "--seed=-1"], ["--seed"]),
    "train --seed=-1": (["train", "ssrnet", "--data", "{prep}", "--seed=-1"], ["--seed"]),
    "--sizes 0": (["prepare", "csv", "--root", "{faces}", "--out", "{tmp}/p", "--sizes", "0"], ["--sizes 0"]),
    "--sizes=-64": (["prepare", "csv", "--root", "{faces}", "--out", "{tmp}/p", "--sizes=-64"], ["--sizes -64"]),
    "--margin=-0.6": (["prepare", "csv", "--root", "{faces}", "--out", "{tmp}/p", "--detector", "default",
                       "--margin=-0.6"], ["--margin -0.6"]),
    "train.seed=10**23": (["train", "ssrnet", "--data", "{prep}", "--set", "train.seed=" + str(10**23)],
                          ["train.seed"]),
    "sched.step_size=0": (["train", "ssrnet", "--data", "{prep}", "--set", "sched.step_size=0"], ["sched.step_size"]),
    "data.input_size=0": (["train", "ssrnet", "--data", "{prep}", "--set", "data.input_size=0"], ["data.input_size"]),
    "prepare --out file": (["prepare", "csv", "--root", "{faces}", "--out", "{broken}/a_file"], ["--out", "a_file"]),
    "predict --out file": (["predict", "{photo}", "--detector", "none", "--model", "{tiny}",
                            "--out", "{broken}/a_file"], ["--out", "a_file"]),
    "truncated crops (eval)": (["eval", "--model", "{tiny}", "--data", "{broken}/truncated"],
                               ["crops_64.npy", "truncated"]),
    "truncated crops (train)": (["train", "ssrnet", "--data", "{broken}/truncated", "--epochs", "1"],
                                ["crops_64.npy", "truncated"]),
    "cache_row out of range": (["eval", "--model", "{tiny}", "--data", "{broken}/badrow", "--split", "all"],
                               ["badrow/manifest.csv: row 2: cache_row 999", "out of range"]),
    "cache_row out of range (train)": (["train", "ssrnet", "--data", "{broken}/badrow", "--epochs", "1"],
                                       ["badrow/manifest.csv: row 2: cache_row 999", "out of range"]),
    "--test-fraction 2": (["prepare", "csv", "--root", "{faces}", "--out", "{tmp}/p", "--test-fraction", "2"],
                          ["--test-fraction 2"]),
    "--test-fraction -1": (["prepare", "csv", "--root", "{faces}", "--out", "{tmp}/p", "--test-fraction=-1"],
                           ["--test-fraction -1"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_option_or_file(world, broken, tmp_path, case):
    args, needles = CASES[case]
    values = {"photo": world["photo"], "broken": broken, "prep": world["prep"], "faces": world["faces"],
              "tiny": world["tiny"], "tmp": tmp_path}
    r = age_main(*[a.format(**values) for a in args], cwd=tmp_path)
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "runs" / "train").exists() or not any((tmp_path / "runs" / "train").iterdir()), \
        "a run that failed before its first epoch left a folder"  # finding 7


def test_error_handler_survives_an_exception_without_a_message(monkeypatch):
    def fail():
        raise AgeCliError("")

    monkeypatch.setattr("agecli.cli.app.app", fail)
    r = age_main("models")
    assert r.returncode == 1 and r.stderr.strip() == "error: AgeCliError"


# ---- 5. bad rows, not bad files; prepare notices changed images ------------------------------------


def test_undecodable_bytes_in_labels_csv_cost_only_their_row(tmp_path):
    data = labelled_faces(tmp_path / "D", 6)
    lines = (data / "labels.csv").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"f01", b"f\xff1")  # line 3 of the file
    (data / "labels.csv").write_bytes(b"".join(lines))
    r = age_main("prepare", "csv", "--root", data, "--out", tmp_path / "prep")
    assert r.returncode == 0, r.stderr
    report = pd.read_csv(tmp_path / "prep" / "report.csv")
    assert report["item"].tolist() == ["labels.csv:3"] and "0xff" in report["problem"][0]
    assert len(pd.read_csv(tmp_path / "prep" / "manifest.csv")) == 5


def test_prepare_rerun_redoes_just_the_images_that_changed(tmp_path):
    from agecli.data.crops import crop_face
    from agecli.data.imageio import load_image
    from agecli.data.prepare import prepare

    data = labelled_faces(tmp_path / "D", 8)
    good = (data / "f05.png").read_bytes()
    (data / "f05.png").write_bytes(good[: len(good) // 2])  # truncated at first
    first = prepare("csv", data, tmp_path / "prep")
    assert first.kept == 7 and "f05.png" in str(first.problems)
    before = np.load(tmp_path / "prep" / "crops_64.npy").copy()
    (data / "f05.png").write_bytes(good)  # fixed
    synthetic_face(data / "f03.png", 90, seed=99)  # replaced by another picture
    stat = (data / "f03.png").stat()
    os.utime(data / "f03.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = prepare("csv", data, tmp_path / "prep")
    assert again.kept == 8 and again.resumed_from == 6  # two images read again, six kept as they were
    after = np.load(tmp_path / "prep" / "crops_64.npy")
    np.testing.assert_array_equal(after[3], crop_face(load_image(data / "f03.png"), None, 64, 0.0))
    assert not np.array_equal(after[3], before[3])
    unchanged = [i for i in range(8) if i not in (3, 5)]
    np.testing.assert_array_equal(after[unchanged], before[unchanged])


# ---- 6. resume as the README writes it -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A finished one-epoch run under runs/train/r of a fresh working folder."""
    cwd = tmp_path_factory.mktemp("train")
    r = age_main("train", "ssrnet", "--data", world["prep"], "--epochs", "1", "--out", "runs/train/r", *QUICK, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd, cwd / "runs" / "train" / "r"


def test_train_resume_run_works_without_model(trained):
    cwd, run = trained
    r = age_main("train", "--resume", "--out", run, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(run / "metrics.csv")) == 1


@pytest.mark.parametrize("extra, needle", [
    (["ssrnet", "--epochs", "5"], "--epochs"),
    (["ssrnet", "--set", "optim.lr=0.1"], "--set"),
    (["mvloss"], "not 'mvloss'"),
])
def test_resume_refuses_options_that_would_change_the_run(trained, extra, needle):
    cwd, run = trained
    before = _digest(run / "last.pt")
    assert_one_line_error(age_main("train", "--resume", "--out", run, *extra, cwd=cwd), needle)
    assert _digest(run / "last.pt") == before


def test_run_killed_in_its_first_epoch_restarts_cleanly(world, tmp_path):
    from agecli.config import dump_yaml, resolve_config

    run = tmp_path / "runs" / "train" / "killed"  # what a kill -9 in epoch 1 leaves: config, no checkpoint
    run.mkdir(parents=True)
    cfg = resolve_config("ssrnet/paper", {"data.manifest": str(world["prep"]), "train.epochs": 2,
                                          "train.batch_size": 8, "train.device": "cpu"})
    (run / "config.yaml").write_text(dump_yaml(cfg))
    r = age_main("train", "--resume", "--out", run, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2] and (run / "last.pt").is_file()


# ---- 7. no litter ----------------------------------------------------------------------------------


def test_temporary_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    from agecli.files.atomic import write_text_atomic

    target = tmp_path / "curves.png"
    code = ("import os, signal, sys; from agecli.files.atomic import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'half of a file')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    import agecli

    package_root = str(Path(agecli.__file__).resolve().parents[1])  # this checkout, as run_age uses it
    done = subprocess.run([sys.executable, "-c", code, str(target)], env={**os.environ, "PYTHONPATH": package_root})
    assert done.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".curves.png.*.tmp"))) == 1 and not target.exists()
    write_text_atomic(target, "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]


# ---- 8. smaller ones -------------------------------------------------------------------------------


def test_predict_empty_path_does_not_scan_the_working_directory(world, tmp_path):
    (tmp_path / "someone_else.png").write_bytes(world["photo"].read_bytes())
    r = age_main("predict", "", "--detector", "none", "--model", world["tiny"], "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 1
    rows = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert rows["error"].tolist() == ["empty path"]


def test_csv_rows_outside_the_dataset_folder_are_reported_not_read(world, tmp_path, monkeypatch):
    import agecli.data.prepare as prep

    data = labelled_faces(tmp_path / "D", 4)
    (tmp_path / "outside.png").write_bytes(world["photo"].read_bytes())
    with open(data / "labels.csv", "a") as f:
        f.write("../outside.png,30\n" + f"{tmp_path / 'outside.png'},31\n")
    opened = []
    real = prep.load_image
    monkeypatch.setattr(prep, "load_image", lambda p: opened.append(str(p)) or real(p))
    result = prep.prepare("csv", data, tmp_path / "prep")
    assert result.kept == 4 and not any(p.endswith("outside.png") for p in opened)
    problems = dict(result.problems)
    assert "leaves the dataset folder" in problems["labels.csv:6"]
    assert "leaves the dataset folder" in problems["labels.csv:7"]


def test_export_replaces_only_an_earlier_export(world, tmp_path):
    from agecli.modelio.export import export

    mine = tmp_path / "model.onnx"
    mine.write_text("my notes")
    with pytest.raises(AgeCliError, match="--output .*model.onnx: already exists"):
        export(world["tiny"], "onnx", out=mine)
    assert mine.read_text() == "my notes"
    for _ in range(2):  # a rerun replaces its own earlier export
        assert export(world["tiny"], "onnx", out=tmp_path / "tiny.onnx").max_abs_diff <= 0.01
