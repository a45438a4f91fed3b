"""`age predict` at scale: the pipeline, streamed files, resume, shards and merge, videos and tracking."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import agecli.predict.pipeline as pipeline
from agecli.data import detectors as face_lib
from agecli.data.crops import iou
from agecli.data.image_files import iter_images
from agecli.data.imageio import load_image
from agecli.data.synthetic import synthetic_faces, write_moving_faces_video
from agecli.predict.job import PredictOptions, run_predict
from agecli.predict.predictor import Predictor
from agecli.predict.tracking import IoUTracker
from tests.helpers import age_main, assert_one_line_error, noise, run_age, tiny_checkpoint, write_photos

N_PHOTOS = 23  # with --batch 4: several batches and a part-filled last one
OUTPUTS = ("predictions.csv", "predictions.jsonl", "predictions.json", "predictions.meta.json")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    photos = write_photos(root / "photos", N_PHOTOS,
                          lambda path, i: Image.fromarray(noise(48 + i % 5, 40 + i % 7, seed=i)).save(path))
    (photos / "p05.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # an unreadable one among them
    return {"root": root, "photos": photos, "tiny": tiny_checkpoint(root / "tiny.pt"),
            "dist": tiny_checkpoint(root / "dist.pt", "ssrnet_dist", seed=1)}


def files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def predict_args(world, out, *extra):
    return ["predict", world["photos"], "--model", world["tiny"], "--detector", "none", "--batch", "4", "--out", out,
            *extra]


# ---- the pipeline -----------------------------------------------------------------------------------


class ThreeFaces:
    """A detector that finds the same three faces in every photo, so faces of one photo span batches."""

    name = "haar"
    margin, shift = 0.0, 0.0
    boxes = [(2.0, 2.0, 20.0, 20.0), (20.0, 5.0, 38.0, 23.0), (5.0, 25.0, 30.0, 45.0)]

    def detect(self, image):
        return [face_lib.Face(b, 0.9 - 0.1 * i) for i, b in enumerate(self.boxes)]


@pytest.mark.parametrize("batch", [1, 4, 64])
def test_pipeline_gives_one_photo_at_a_time_results_in_input_order(world, batch):
    predictor = Predictor(world["tiny"], detector="haar", device="cpu")
    predictor.detector = ThreeFaces()
    items = list(iter_images([world["photos"], world["photos"] / "gone.png"]))
    alone = list(predictor.predict_items(items))
    piped = list(pipeline.predict_photos(predictor, items, batch=batch, workers=3))
    assert [r.path for r in piped] == [r.path for r in alone]
    assert [r.status for r in piped] == [r.status for r in alone] == ["ok"] * 5 + ["error"] + ["ok"] * 17 + ["error"]
    for a, b in zip(alone, piped):
        assert [f.box for f in a.faces] == [f.box for f in b.faces]
        np.testing.assert_allclose([f.age for f in a.faces], [f.age for f in b.faces], atol=1e-4)


def test_whole_image_faces_decode_jpegs_in_full_and_report_full_boxes(world, tmp_path):
    chips = tmp_path / "chips"
    chips.mkdir()
    for i in range(3):
        Image.fromarray(np.kron(noise(25, 20, seed=i), np.ones((8, 8, 1), dtype=np.uint8))).save(chips / f"c{i}.jpg")
    predictor = Predictor(world["tiny"], detector="none", device="cpu")
    assert predictor.predict_image(load_image(chips / "c0.jpg")).faces[0].box == (0, 0, 160, 200)  # in full
    items = list(iter_images([chips]))
    for keep in (False, True):
        piped = list(pipeline.predict_photos(predictor, items, batch=2, keep_images=keep))
        alone = list(predictor.predict_items(items))
        for a, b in zip(alone, piped):
            assert a.size == b.size == (160, 200) and a.faces[0].box == b.faces[0].box == (0.0, 0.0, 160.0, 200.0)
            assert a.faces[0].age == pytest.approx(b.faces[0].age, abs=1e-4)  # drawing or not, the same age
            assert a.image.shape == (200, 160, 3) and (b.image is None) != keep


def test_model_batches_gather_faces_across_photos(world, monkeypatch):
    predictor = Predictor(world["tiny"], detector="none", device="cpu")
    sizes, blank = [], []
    real_run = predictor.backend.run
    monkeypatch.setattr(predictor.backend, "run", lambda crops: sizes.append(len(crops))
                        or blank.append(int((crops.reshape(len(crops), -1).max(1) == 0).sum())) or real_run(crops))
    piped = pipeline.run_batched(predictor, iter_images([world["photos"]]),
                                 lambda item: pipeline.prepare_photo(predictor, item), batch=8)
    assert len(list(piped)) == N_PHOTOS
    assert sizes == [8, 8, 8] and blank == [0, 0, 2]  # 22 readable photos, one face each; the last batch padded


def test_a_live_stream_runs_part_filled_batches_unpadded(world, monkeypatch):
    import time

    predictor = Predictor(world["tiny"], detector="none", device="cpu")
    sizes = []
    real_run = predictor.backend.run
    monkeypatch.setattr(predictor.backend, "run", lambda crops: sizes.append(len(crops)) or real_run(crops))

    def prepare(item):
        if item.path.name == "p03.png":
            time.sleep(1.0)  # the stream stalls
        return pipeline.prepare_photo(predictor, item)

    items = list(iter_images([world["photos"]]))[:6]
    assert len(list(pipeline.run_batched(predictor, items, prepare, batch=8, workers=1, max_wait=0.1))) == 6
    assert len(sizes) >= 2 and sum(sizes) == 5  # answers before the stall, no padding (p05 is unreadable)


# ---- streamed files and resume ----------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for a kill: nothing in agecli catches it."""


def test_killed_run_keeps_its_batches_and_resume_ends_with_one_runs_bytes(world, tmp_path, monkeypatch):
    assert age_main(*predict_args(world, tmp_path / "whole")).returncode == 1  # p05.png is unreadable
    whole = files(tmp_path / "whole")

    decoded = []
    real_load = pipeline.load_image

    def load(path):
        decoded.append(Path(path).name)
        if len(decoded) > 13:
            raise Crash()
        return real_load(path)

    monkeypatch.setattr(pipeline, "load_image", load)
    options = PredictOptions(model=world["tiny"], no_detect=True, batch=4, workers=1, out=tmp_path / "cut")
    with pytest.raises(Crash):
        run_predict([str(world["photos"])], options)
    kept = (tmp_path / "cut" / "predictions.jsonl").read_text().splitlines()
    assert 4 <= len(kept) < N_PHOTOS  # what was done before the crash is on disk, in input order
    assert [json.loads(line)["path"] for line in kept] == [str(p) for p in sorted(world["photos"].iterdir())][:len(kept)]
    assert not (tmp_path / "cut" / "predictions.json").exists()
    with open(tmp_path / "cut" / "predictions.jsonl", "a") as f:  # the kill tore the line being written
        f.write(kept[-1][:25])
    with open(tmp_path / "cut" / "predictions.csv", "a") as f:
        f.write("/half/a/row,1,")

    decoded.clear()
    monkeypatch.setattr(pipeline, "load_image", lambda path: decoded.append(Path(path).name) or real_load(path))
    r = age_main(*predict_args(world, tmp_path / "cut", "--resume"))
    assert r.returncode == 1, r.stderr
    done_before = {Path(json.loads(line)["path"]).name for line in kept}
    errors_before = {Path(json.loads(line)["path"]).name for line in kept if json.loads(line)["status"] == "error"}
    assert not (set(decoded) & (done_before - errors_before))  # nothing done twice, except the unreadable file
    assert sorted(set(decoded) | done_before) == sorted(p.name for p in world["photos"].iterdir())  # none dropped
    assert files(tmp_path / "cut") == whole


def test_resume_refuses_a_run_made_with_another_model(world, tmp_path):
    assert age_main(*predict_args(world, tmp_path / "o")).returncode == 1
    r = age_main("predict", world["photos"], "--model", world["dist"], "--detector", "none", "--out", tmp_path / "o",
                 "--resume")
    assert_one_line_error(r, "--resume", "model")
    assert age_main(*predict_args(world, tmp_path / "new", "--resume")).returncode == 1  # nothing yet: a fresh run
    assert files(tmp_path / "new") == files(tmp_path / "o")
    r = age_main("predict", world["photos"], "--model", world["tiny"], "--detector", "none", "--resume", cwd=tmp_path)
    assert_one_line_error(r, "--resume", "no unfinished run")


# ---- shards and merge -------------------------------------------------------------------------------


def test_three_shards_merged_equal_one_run_byte_for_byte(world, tmp_path):
    age_main(*predict_args(world, tmp_path / "whole"))
    shards = [tmp_path / f"shard{i}" for i in (1, 2, 3)]
    for i, folder in enumerate(shards, 1):
        age_main(*predict_args(world, folder, "--shard", f"{i}/3"))
        assert len((folder / "predictions.jsonl").read_text().splitlines()) == len(range(i - 1, N_PHOTOS, 3))
    r = age_main("predict", "--merge", *shards[::-1], "--out", tmp_path / "merged")
    assert r.returncode == 1 and "23 photos: 22 with faces" in " ".join(r.stderr.split()), r.stderr
    assert files(tmp_path / "merged") == files(tmp_path / "whole")

    assert_one_line_error(age_main("predict", "--merge", *shards[:2], "--out", tmp_path / "m2"), "shard 3/3 is missing")
    assert_one_line_error(age_main("predict", "--merge", world["photos"], "--out", tmp_path / "m3"),
                          "not an age predict run folder")


@pytest.mark.parametrize("shard", ["0/3", "4/3", "a/b", "1/0"])
def test_bad_shard_is_one_line(world, tmp_path, shard):
    assert_one_line_error(age_main(*predict_args(world, tmp_path / "o", "--shard", shard)), "shard", shard)


# ---- tracking ---------------------------------------------------------------------------------------


def test_tracker_keeps_ids_through_motion_and_a_missed_frame():
    tracker = IoUTracker(iou_threshold=0.3, max_missed=2)
    ids = []
    for t in range(8):
        boxes = [(10 + 3 * t, 10, 50 + 3 * t, 50), (100, 10 + 2 * t, 140, 50 + 2 * t)]
        if t == 4:
            boxes = boxes[1:]  # the first face is missed once
        ids.append([track.id for track in tracker.update(t, boxes)])
    assert ids[4] == [2] and all(row == [1, 2] for i, row in enumerate(ids) if i != 4)
    assert tracker.update(8, [(300, 300, 340, 340)])[0].id == 3  # a new face, a new id
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


# ---- videos -----------------------------------------------------------------------------------------

VIDEO_SIZE, SIDE, FRAMES = (240, 160), 96, 24


def check_tracks(out: Path, truth: list[list[tuple]], frames: int):
    """One track per moving face, on that face all along; the track's age steadier than the frame ages."""
    rows = pd.read_csv(out / "predictions.csv")

    def nearest_face(row) -> int:  # the true face whose centre is nearest the detected box's centre
        cx, cy = (row["x0"] + row["x1"]) / 2, (row["y0"] + row["y1"]) / 2
        boxes = truth[int(row["frame"])]
        return min(range(len(boxes)), key=lambda k: (boxes[k][0] + boxes[k][2] - 2 * cx) ** 2
                   + (boxes[k][1] + boxes[k][3] - 2 * cy) ** 2)

    rows["face"] = rows.apply(nearest_face, axis=1)
    assert rows["track"].nunique() == len(truth[0]), rows.groupby("track").size()
    assert sorted(rows.groupby("track")["face"].unique().map(tuple)) == [(k,) for k in range(len(truth[0]))]
    for _, group in rows.groupby("track"):
        assert len(group) >= frames - 2  # found in (almost) every frame
        assert group["track_age"].std() < group["age"].std()
    return rows


def test_synthetic_video_tracks_draw_and_every(world, tmp_path):
    video = tmp_path / "party.mp4"
    truth = write_moving_faces_video(video, list(synthetic_faces(2, SIDE, seed=1)), FRAMES, VIDEO_SIZE)
    r = age_main("predict", video, "--model", world["dist"], "--draw", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    rows = check_tracks(tmp_path / "o", truth, FRAMES)
    assert list(rows.columns)[:-1] == ["path", "frame", "time", "track", "x0", "y0", "x1", "y1", "score", "age",
                                       "spread", "track_age", "track_spread"]  # then check_tracks' own "face"
    assert rows["time"].max() == pytest.approx((FRAMES - 1) / 10.0)
    data = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert data["summary"]["tracks"] == 2 and data["videos"][0]["frames"] == FRAMES
    assert Path(data["videos"][0]["drawn"]) == tmp_path / "o" / "party.mp4"  # a copy beside the results
    drawn = cv2.VideoCapture(data["videos"][0]["drawn"])
    assert (drawn.get(cv2.CAP_PROP_FRAME_COUNT), drawn.get(cv2.CAP_PROP_FPS)) == (FRAMES, 10.0)
    ok, frame = drawn.read()
    assert ok and frame.shape == (VIDEO_SIZE[1], VIDEO_SIZE[0], 3)

    r = age_main("predict", video, "--model", world["dist"], "--every", "3", "--draw", "--out", tmp_path / "e")
    assert r.returncode == 0, r.stderr
    rows = pd.read_csv(tmp_path / "e" / "predictions.csv")
    assert sorted(rows["frame"].unique()) == list(range(0, FRAMES, 3)) and rows["track"].nunique() == 2
    assert cv2.VideoCapture(str(tmp_path / "e" / "party.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == FRAMES


def test_real_faces_video_one_track_per_face(world, tmp_path, shared_dir):
    names = sorted(os.listdir(shared_dir / "data" / "utkface"))
    picks = [names[i] for i in np.random.default_rng(0).choice(len(names), 2, replace=False)]
    faces = [np.asarray(Image.open(shared_dir / "data" / "utkface" / n).convert("RGB").resize((SIDE, SIDE)))
             for n in picks]
    truth = write_moving_faces_video(tmp_path / "real.avi", faces, FRAMES, VIDEO_SIZE)
    r = age_main("predict", tmp_path / "real.avi", "--model", world["dist"], "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    check_tracks(tmp_path / "o", truth, FRAMES)


def test_video_problems_are_reported(world, tmp_path):
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all")
    for args, says in ((["fake.mp4"], "fake.mp4: cannot open this file as a video"),
                       (["--source", "97"], "97: cannot open this camera 97 as a video")):
        r = age_main("predict", *args, "--model", world["tiny"], "--out", tmp_path / "o", cwd=tmp_path)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert json.loads((tmp_path / "o" / "predictions.json").read_text())["videos"][0]["error"].startswith(says)
    # OpenCV's backends write to the process's own stderr: only a real process shows what a user would see
    r = run_age("predict", "--source", "97", "--model", world["tiny"], "--out", tmp_path / "o2", cwd=tmp_path)
    assert r.returncode == 1 and "WARN" not in r.stderr and "OpenCV(" not in r.stderr, r.stderr
    assert_one_line_error(age_main("predict", tmp_path / "fake.mp4", world["photos"], "--model", world["tiny"]),
                          "photos and videos")
    assert_one_line_error(age_main("predict", world["photos"], "--every", "2", "--model", world["tiny"]), "--every")


def test_progress_shows_rate_faces_and_eta():
    import io

    from rich.console import Console

    from agecli.report.progress import RichWorkProgress

    progress = RichWorkProgress(Console(file=io.StringIO(), force_terminal=True, width=160))
    progress.start(10, "photos")
    for faces in (1, 2, 0):
        progress.advance(faces=faces)
    info = progress.bar.tasks[0].fields["info"]
    columns = " ".join(type(c).__name__ for c in progress.bar.columns)
    progress.stop()
    assert "photos/s" in info and info.endswith("3 faces") and "TimeRemainingColumn" in columns
