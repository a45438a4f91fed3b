"""`age predict` and agecli.predict.predictor: finding images, every kind of file, faces, drawing, saving, exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agecli.data.image_files import iter_images
from agecli.errors import AgeCliError
from agecli.predict import predictor as predict_mod
from agecli.predict.outputs import ResultWriter, draw
from agecli.predict.predictor import Predictor
from agecli.predict.results import FacePrediction
from tests.helpers import (
    age_main,
    assert_one_line_error,
    noise,
    run_age,
    tiny_checkpoint,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "best.pt")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- finding images -----------------------------------------------------------------------------


def test_iter_images_expands_folders_globs_and_reports_missing(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("a/2.jpg", "a/1.PNG", "a/deep/3.webp", "a/notes.txt", "a/.hidden.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    items = list(iter_images([tmp_path / "a", str(tmp_path / "*.jpg"), tmp_path / "b.jpg", tmp_path / "nope.jpg",
                              tmp_path / "empty", str(tmp_path / "zz*.png")]))
    names = [(i.path.relative_to(tmp_path).as_posix(), i.problem) for i in items]
    assert names[:4] == [("a/1.PNG", None), ("a/2.jpg", None), ("a/deep/3.webp", None), ("b.jpg", None)]
    assert [p for _, p in names[4:]] == ["no such file or folder", "no images in this folder",
                                         "no image files match this pattern"]  # b.jpg listed once


def test_default_model_path_says_how_to_proceed(monkeypatch, tmp_path):
    from agecli.modelio import builtin

    monkeypatch.setattr(builtin, "BUILTIN_MODEL", tmp_path / "absent.pt")
    with pytest.raises(AgeCliError, match="no built-in model is installed yet; pass --model CHECKPOINT"):
        builtin.default_model_path()


def test_a_shipped_model_is_chosen_by_its_bare_name(monkeypatch, tmp_path):
    from agecli.modelio import builtin

    shipped = tmp_path / "weights"
    shipped.mkdir()
    (shipped / "fast.pt").write_bytes(b"x")
    monkeypatch.setattr(builtin, "WEIGHTS_DIR", shipped)
    monkeypatch.chdir(tmp_path)
    assert builtin.resolve_model_path("fast") == shipped / "fast.pt"
    with pytest.raises(AgeCliError, match="other: no such model file or shipped model; shipped: fast"):
        builtin.resolve_model_path("other")  # neither a file nor a shipped name
    assert builtin.resolve_model_path("other.pt") == Path("other.pt")  # a file name: load reports it missing
    assert builtin.resolve_model_path("sub/fast") == Path("sub/fast")  # a path is never a name
    (tmp_path / "fast").write_bytes(b"y")
    assert builtin.resolve_model_path("fast") == Path("fast")  # a file of that name wins


# ---- every kind of file -------------------------------------------------------------------------


def test_odd_files_are_processed_or_reported_without_stopping(tiny, tmp_path):
    Image.fromarray(noise(50, 70)[:, :, 0]).save(tmp_path / "gray.png")
    rgba = np.dstack([noise(64, 64), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(noise(64, 64)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view": stored 80 wide, 40 high
    Image.fromarray(noise(40, 80)).save(tmp_path / "rotated.jpg", exif=exif)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    results = {r.path.name: r for r in Predictor(tiny, detector="none").predict([tmp_path, tmp_path / "gone.png"])}
    assert {n: r.status for n, r in results.items()} == {
        "cmyk.jpg": "ok", "corrupt.jpg": "error", "gray.png": "ok", "rgba.png": "ok", "rotated.jpg": "ok",
        "gone.png": "error"}
    assert results["rotated.jpg"].size == (40, 80)  # upright, as a viewer shows it
    assert results["rotated.jpg"].faces[0].box == (0.0, 0.0, 40.0, 80.0)
    assert "corrupt.jpg" in results["corrupt.jpg"].error
    assert all(len(r.faces) == 1 and np.isfinite(r.faces[0].age) for r in results.values() if r.ok)


def test_photo_without_a_face_is_reported_and_the_run_goes_on(tiny, tmp_path):
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "wall.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    Image.fromarray(noise(64, 64)).save(tmp_path / "z_crop.png")
    results = list(Predictor(tiny).predict([tmp_path / "wall.png", tmp_path / "broken.png"]))
    assert [(r.status, r.error) for r in results][0] == ("no face", "no face found")
    assert results[1].status == "error"
    assert Predictor(tiny, detector="none").predict_image(noise(64, 64)).ok


def test_torch_backend_matches_training_evaluation(tmp_path):
    """Predict's PyTorch path gives scoring.predict_crops' ages and spreads on the same crops."""
    from agecli.training.scoring import predict_crops

    ckpt = tiny_checkpoint(tmp_path / "dist.pt", "ssrnet_dist", seed=3, channel_order="BGR")
    predictor = Predictor(ckpt, detector="none", device="cpu")
    crops = np.stack([predictor.crops(noise(90, 70, s), None)[0] for s in range(5)])
    ages, stds = predictor.backend.run(crops)
    ref = predict_crops(predictor.backend.model, crops, np.arange(5), predictor.preprocess)
    np.testing.assert_allclose(ages, ref["age"], atol=1e-5)
    np.testing.assert_allclose(stds, ref["spread"], atol=1e-5)
    assert (stds > 0).all()


def test_every_face_of_a_photo_is_estimated(tiny, monkeypatch):
    predictor = Predictor(tiny, detector="haar")
    boxes = [(10.0, 10.0, 60.0, 60.0), (70.0, 20.0, 110.0, 60.0), (5.0, 70.0, 45.0, 115.0)]
    monkeypatch.setattr(predictor.detector, "detect", lambda img: [predict_mod.face_lib.Face(b, 0.9) for b in boxes])
    predictor.batch_size = 2  # three faces: two batches
    result = predictor.predict_image(noise(120, 120))
    assert [f.box for f in result.faces] == boxes
    singles = [predictor.backend.run(predictor.crops(result.image, [b]))[0][0] for b in boxes]
    np.testing.assert_allclose([f.age for f in result.faces], singles, atol=1e-4)


# ---- drawing and saving -------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(64, 64), (448, 448), (3000, 4000)])
def test_draw_scales_with_the_photo(h, w):
    image = np.full((h, w, 3), 30, np.uint8)
    face = FacePrediction((w * 0.3, h * 0.3, w * 0.6, h * 0.7), 0.9, 42.3, 3.1)
    out = draw(image, [face])
    assert out.shape == image.shape and out.dtype == np.uint8
    changed = (out != image).any(2)
    assert changed.any() and (image == 30).all()  # a copy; the input is untouched
    # the box's left edge is about short/250 px wide; the label band grows with the photo
    row = changed[int(h * 0.5)]
    edge = np.flatnonzero(row)[0]
    assert np.flatnonzero(~row[edge:])[0] == max(1, round(min(h, w) / 250))
    band = len(np.flatnonzero(changed[:, int(w * 0.3) + 2][: int(h * 0.3)]))  # the label above the box
    assert min(h, w) * 0.025 <= band <= max(16, min(h, w) * 0.06)


def test_writer_keeps_names_unique_and_never_touches_inputs(tiny, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(noise(64, 64)).save(tmp_path / sub / "face.jpg")
    inputs = [tmp_path / "a" / "face.jpg", tmp_path / "b" / "face.jpg"]
    before = [digest(p) for p in inputs]
    writer = ResultWriter(tmp_path / "a", draw=True, inputs=inputs)  # the output folder holds an input
    records = [writer.record(result) for result in Predictor(tiny, detector="none").predict(inputs)]
    assert [digest(p) for p in inputs] == before
    assert [Path(r["drawn"]).name for r in records] == ["face_2.jpg", "face_3.jpg"]
    assert all(Path(r["drawn"]).is_file() and len(r["faces"]) == 1 for r in records)


# ---- a real model on real photos ----------------------------------------------------------------


def test_astronaut_and_fairface_with_the_port_model(port_checkpoint, shared_dir):
    photos = [shared_dir / "examples" / "astronaut.png"] + sorted((shared_dir / "data" / "fairface").glob("*.jpg"))[:4]
    results = list(Predictor(port_checkpoint, device="cpu").predict(photos))
    assert all(r.ok and r.faces for r in results), [(r.path.name, r.error) for r in results]
    astronaut = results[0].faces
    assert len(astronaut) == 1 and 20 <= astronaut[0].age <= 70  # Eileen Collins, about 42
    x0, y0, x1, y1 = astronaut[0].box
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512


def test_cli_predict_draw_json_csv_and_exit_codes(port_checkpoint, shared_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    astronaut = photos / "astronaut.png"
    astronaut.write_bytes((shared_dir / "examples" / "astronaut.png").read_bytes())
    fair = sorted((shared_dir / "data" / "fairface").glob("*.jpg"))[0]
    (photos / fair.name).symlink_to(fair)
    before = digest(astronaut)
    result = age_main("predict", photos, "--model", port_checkpoint, "--draw", "--json", tmp_path / "p.json",
                      "--csv", tmp_path / "p.csv", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Results saved to" in result.stderr and "astronaut.png" in result.stdout
    run_dir = tmp_path / "runs" / "predict" / "predict"
    drawn = run_dir / "astronaut.png"
    assert digest(astronaut) == before
    with Image.open(drawn) as im, Image.open(astronaut) as orig:
        assert im.size == orig.size
        assert np.abs(np.asarray(im.convert("RGB"), np.int16) - np.asarray(orig.convert("RGB"), np.int16)).max() > 50
    data = json.loads((run_dir / "predictions.json").read_text())
    assert data == json.loads((tmp_path / "p.json").read_text())
    assert data["summary"]["errors"] == 0 and data["photos"][0]["faces"][0]["age"] > 0
    assert (tmp_path / "p.csv").read_text() == (run_dir / "predictions.csv").read_text()

    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(tmp_path / "blank.png")
    failed = age_main("predict", astronaut, tmp_path / "blank.png", tmp_path / "missing.jpg", "--model",
                      port_checkpoint, "--out", tmp_path / "second", cwd=tmp_path)
    assert failed.returncode == 1
    assert "3 photos: 1 with faces (1 face), 1 without a face, 1 failed" in " ".join(failed.stderr.split())
    assert (tmp_path / "second" / "predictions.csv").is_file()


def test_cli_predict_unknown_model_is_one_line(tmp_path):
    Image.fromarray(noise(64, 64)).save(tmp_path / "x.png")
    assert_one_line_error(run_age("predict", tmp_path / "x.png", "--model", tmp_path / "nope.pt"), "no such model file")
    # a bare name that is neither a file nor a shipped model: most likely a misspelt shipped name
    misspelt = run_age("predict", tmp_path / "x.png", "--model", "ensembel", cwd=tmp_path)
    assert_one_line_error(misspelt, "ensembel: no such model file or shipped model (did you mean 'ensemble'?)")


def test_builtin_model_is_listed_and_predicts_the_example_without_a_checkpoint(tmp_path):
    """The README's main job: `age predict examples/astronaut.png --draw` straight after install."""
    from agecli.modelio.builtin import builtin_models

    entries = {e["name"]: e for e in builtin_models()}
    assert "default" in entries and entries["default"]["bytes"] < 5e6  # "under 5 MB as stored"
    assert {"mae", "ca3", "ca5"} <= set(entries["default"]["metrics"])
    example = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
    result = age_main("predict", example, "--draw", "--json", tmp_path / "p.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    faces = json.loads((tmp_path / "p.json").read_text())["photos"][0]["faces"]
    assert len(faces) == 1 and 25 <= faces[0]["age"] <= 60  # Eileen Collins was about 42
    assert (tmp_path / "runs" / "predict" / "predict" / "astronaut.png").is_file()
    listing = age_main("models", cwd=tmp_path)
    assert listing.returncode == 0 and "default" in listing.stdout and "non-commercial" in listing.stdout
    # sizes are in MiB, as the README gives them, and say so
    assert "MiB" in listing.stdout and f"{entries['default']['bytes'] / 2**20:.2f}" in listing.stdout


def test_age_models_lists_each_test_source_apart_so_that_rows_compare():
    """A model tested on UTKFace and MORPH together has a row per source: its pooled MAE would be set beside
    other models' UTKFace-only figures."""
    from agecli.modelio.builtin import WEIGHTS_DIR
    from agecli.modelio.checkpoint import load_checkpoint

    info = load_checkpoint(WEIGHTS_DIR / "default.pt")["info"]
    listing = age_main("models", env={"COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    for source, m in info["test_metrics_by_source"].items():
        assert any(source in line and f"{m['mae']:.2f}" in line and f"{m['n']:,}" in line for line in lines), source
    start = next(i for i, line in enumerate(lines) if "default" in line)
    end = next(i for i, line in enumerate(lines) if "ensemble" in line)
    assert not any(f"{info['test_metrics']['mae']:.2f}" in line for line in lines[start:end])  # the pooled figure
