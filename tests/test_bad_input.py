"""A corpus of bad input: messy images, names, labels, references and presets; kill -9 and resume.

Every case must give a clear message naming the item, keep the good items, exit non-zero only when the
command could not do its job, print no traceback and leave no half-written output.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.helpers import (
    age_main,
    assert_one_line_error,
    synthetic_face,
    tiny_checkpoint,
)

GOOD = 12


def _png_claiming(path, width, height):
    """A tiny PNG whose header claims width x height (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def build_corpus(folder):
    """UTKFace-named files: GOOD plain faces, awkward-but-valid images, and broken ones."""
    folder.mkdir()
    stamp = "20170116174525125.jpg.chip.jpg"
    for i in range(GOOD):
        synthetic_face(folder / f"{20 + i}_0_0_{stamp.replace('5125', f'{5100 + i}')}", 20 + i, seed=i)
    rgb = np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(folder / f"31_1_0_{stamp}".replace("5125", "0001"), "JPEG")
    Image.fromarray((np.arange(80 * 80).reshape(80, 80) * 9).astype(np.uint16)).save(
        folder / f"32_1_0_{stamp}".replace("5125", "0002").replace(".jpg.chip.jpg", ".png"))
    Image.fromarray(rgb[:, :, 0]).save(folder / f"33_1_0_{stamp}".replace("5125", "0003"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.fromarray(rgb).save(folder / f"34_1_0_{stamp}".replace("5125", "0004"), exif=exif)
    broken = {}
    jpeg = folder / f"40_0_0_{stamp}".replace("5125", "0005")
    Image.fromarray(rgb).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    broken["truncated"] = jpeg.name
    (folder / f"41_0_0_{stamp}".replace("5125", "0006")).write_bytes(b"")
    broken["empty"] = f"41_0_0_{stamp}".replace("5125", "0006")
    (folder / f"42_0_0_{stamp}".replace("5125", "0007")).write_text("hello, I am not a picture\n")
    broken["text"] = f"42_0_0_{stamp}".replace("5125", "0007")
    Image.new("RGB", (1, 1)).save(folder / f"43_0_0_{stamp}".replace("5125", "0008"))
    broken["1x1"] = f"43_0_0_{stamp}".replace("5125", "0008")
    bomb = folder / f"44_0_0_{stamp}".replace("5125", "0009").replace(".jpg.chip.jpg", ".png")
    _png_claiming(bomb, 30000, 30000)
    broken["bomb"] = bomb.name
    bad_name = os.path.join(os.fsencode(folder), b"45_0_0_2017011617452\xff.jpg.chip.jpg")
    with open(bad_name, "wb") as f:
        f.write((folder / f"20_0_0_{stamp.replace('5125', '5100')}").read_bytes())
    return broken


def test_prepare_over_bad_corpus_keeps_good_and_reports_bad(tmp_path):
    broken = build_corpus(tmp_path / "corpus")
    r = age_main("prepare", "utkface", "--root", tmp_path / "corpus", "--out", tmp_path / "prep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    df = pd.read_csv(tmp_path / "prep" / "manifest.csv", keep_default_na=False)
    assert len(df) == GOOD + 4  # good faces + CMYK, 16-bit, grayscale, EXIF-rotated
    report = pd.read_csv(tmp_path / "prep" / "report.csv", keep_default_na=False)
    listed = " | ".join(report["item"] + ": " + report["problem"])
    for name in broken.values():
        assert name in listed, (name, listed)
    assert "\\xff" in listed  # the non-UTF-8 name is reported readably
    assert "30000" in listed or "megapixel" in listed
    assert f"{len(report)} left out" in r.stderr
    crops = np.load(tmp_path / "prep" / "crops_64.npy", mmap_mode="r")
    assert crops[df["cache_row"].to_numpy()].std() > 0


def test_predict_over_bad_corpus_processes_good_items(tmp_path):
    broken = build_corpus(tmp_path / "corpus")
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    r = age_main("predict", tmp_path / "corpus", "--model", ckpt, "--detector", "none", "--out", tmp_path / "out",
                "--json", tmp_path / "out.json", cwd=tmp_path)
    assert r.returncode == 1  # some files could not be read: reported, and the exit code says so
    assert "Traceback" not in r.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    text = json.dumps(data)
    for name in broken.values():
        assert name in text, name
    ok = [p for p in data["photos"] if p.get("status") == "ok"]
    assert len(ok) >= GOOD + 4


@pytest.mark.parametrize("content, needles", [
    ("file,years\nx.png,3\n", ["labels.csv", "missing column 'age'"]),
])
def test_csv_missing_column_is_one_line(tmp_path, content, needles):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_text(content)
    r = age_main("prepare", "csv", "--root", tmp_path / "data", "--out", tmp_path / "prep", cwd=tmp_path)
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "prep" / "manifest.csv").exists()


def test_csv_bad_labels_are_reported_and_good_rows_kept(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(6):
        synthetic_face(folder / f"f{i}.png", 20 + i, seed=i)
    (folder / "labels.csv").write_text("filename,age\nf0.png,20\nf1.png,nan\nf2.png,-3\nf3.png,500\n"
                                       "f4.png,24\nf4.png,24\nf5.png,25\nmissing.png,30\n")
    r = age_main("prepare", "csv", "--root", folder, "--out", tmp_path / "prep", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "prep" / "manifest.csv", keep_default_na=False)
    assert sorted(os.path.basename(p) for p in df["path"]) == ["f0.png", "f4.png", "f5.png"]
    report = pd.read_csv(tmp_path / "prep" / "report.csv", keep_default_na=False)
    listed = " | ".join(report["item"] + ": " + report["problem"])
    for line in (3, 4, 5, 7, 9):  # nan, negative, 500, duplicate, missing file (header is line 1)
        assert f"labels.csv:{line}" in listed, (line, listed)


def test_preset_with_unknown_key_and_wrong_type(tmp_path):
    (tmp_path / "mine.yaml").write_text("train:\n  epochz: 3\n")
    assert_one_line_error(age_main("train", "ssrnet", "--preset", tmp_path / "mine.yaml", cwd=tmp_path),
                          "mine.yaml", "train.epochz", "did you mean 'train.epochs'")
    (tmp_path / "mine.yaml").write_text("optim:\n  lr: fast\n")
    assert_one_line_error(age_main("train", "ssrnet", "--preset", tmp_path / "mine.yaml", cwd=tmp_path),
                          "optim.lr must be float")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:  # pickled as a call to os.system, which an unsafe load would run
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"format": "agecli-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    r = age_main("eval", "--model", tmp_path / "evil.pt", "--data", "x", cwd=tmp_path)
    assert_one_line_error(r, "evil.pt", "refused")
    assert not marker.exists()


def test_kill_9_during_training_then_resume_matches_uninterrupted(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    rows = []
    for i in range(40):
        synthetic_face(folder / f"img{i:03d}.png", 5 + (i * 7) % 70, seed=i)
        rows.append(f"img{i:03d}.png,{5 + (i * 7) % 70}")
    (folder / "labels.csv").write_text("filename,age\n" + "\n".join(rows) + "\n")
    assert age_main("prepare", "csv", "--root", folder, "--out", tmp_path / "prep", cwd=tmp_path).returncode == 0
    args = ["train", "ssrnet", "--preset", "paper", "--data", tmp_path / "prep", "--epochs", "5",
            "--set", "train.batch_size=8", "--device", "cpu"]  # killed after epoch 2: three epochs of margin
    full = age_main(*args, "--out", "runs/train/full", cwd=tmp_path)  # only the killed run needs a process of its own
    assert full.returncode == 0, full.stderr
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "agecli", *map(str, args), "--out", "runs/train/killed"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "runs" / "train" / "killed" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # header + 2 epochs
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = age_main("train", "--resume", "--out", tmp_path / "runs" / "train" / "killed", "ssrnet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    drop = ["seconds"]
    a = pd.read_csv(tmp_path / "runs" / "train" / "full" / "metrics.csv").drop(columns=drop)
    b = pd.read_csv(metrics).drop(columns=drop)
    pd.testing.assert_frame_equal(a, b)


def test_age_train_on_a_dataset_not_yet_prepared_says_only_how_to_prepare_it(tmp_path):
    done = age_main("train", "ssrnet", "--preset", "paper", cwd=tmp_path)  # the README's command, before prepare
    assert_one_line_error(done, "no prepared dataset 'megaage'", "age prepare megaage --root DIR")
    assert "training ssrnet" not in done.stderr  # no start line for a run that cannot start
    assert not (tmp_path / "runs").exists()


def test_a_missing_prepared_folder_is_named_and_how_to_make_it_said(tmp_path, monkeypatch):
    from agecli.data.manifest import resolve_prepared
    from agecli.errors import AgeCliError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(AgeCliError) as folder:
        resolve_prepared("prepared/utkface-aligned")  # a folder, as a preset's data.sources names one
    assert str(folder.value).startswith("prepared/utkface-aligned: no prepared dataset here")
    assert "--out prepared/utkface-aligned" in str(folder.value) and "prepared/prepared" not in str(folder.value)
    with pytest.raises(AgeCliError, match=r"run `age prepare morph --root DIR` first"):
        resolve_prepared("morph")  # a dataset's name: prepare it by that name
