"""Five-point alignment (Preprocess.align="five_point"): the face turned upright on its landmarks, the same
crop from `age prepare` and from prediction, and align="none" cutting exactly what it always cut.

The faces are painted: five coloured discs (eyes, nose, mouth corners) on noise, at known points. A stand-in
detector finds the discs, so prepare and predict get the same landmarks without a real face.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agecli.data import detectors
from agecli.data.cache import open_crops
from agecli.data.crops import FIVE_POINT_TEMPLATE, align_face, crop_batch, crop_face, five_point_transform
from agecli.data.imageio import load_image
from agecli.data.prepare import _fingerprint, prepare
from agecli.data.preprocess import Preprocess
from agecli.data.sources import scan_source
from agecli.errors import AgeCliError
from tests.helpers import noise, tiny_checkpoint

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
ASTRONAUT = SHARED / "examples" / "astronaut.png"
# the eyes, the nose, the mouth corners, in the detectors' order (image-left first)
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)])


def rotate(points: np.ndarray, degrees: float, centre) -> np.ndarray:
    """Points turned clockwise on screen (y points down) by `degrees` about `centre`."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - centre) @ rotation.T + centre


def paint_face(size: int, landmarks: np.ndarray, radius: float, seed: int = 0) -> np.ndarray:
    """A size x size photo: mid-grey noise (no channel above 190 or below 60) and a coloured disc per landmark,
    whose centre is the landmark (continuous pixel coordinates: pixel i spans [i, i + 1))."""
    image = np.random.default_rng(seed).integers(60, 191, (size, size, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    for (x, y), colour in zip(landmarks, COLOURS):
        image[(xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2] = colour
    return image


def disc_centres(image: np.ndarray) -> np.ndarray:
    """Where each coloured disc lies in an image (continuous coordinates); NaN for a disc not there."""
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]] + 0.5
    centres = []
    for colour in COLOURS:
        near = np.abs(image.astype(int) - colour).max(axis=2) < 50  # the noise is >= 65 away in some channel
        centres.append((xs[near].mean(), ys[near].mean()) if near.any() else (np.nan, np.nan))
    return np.array(centres)


class DiscDetector:
    """A stand-in for RetinaFace on painted faces: one face, its landmarks where the five discs are."""

    name = "discs"
    margin, shift = -0.03, 0.08
    has_landmarks = True

    def detect(self, image_rgb: np.ndarray) -> list[detectors.Face]:
        points = disc_centres(image_rgb)
        if np.isnan(points).any():
            return []
        (x0, y0), (x1, y1) = points.min(0), points.max(0)
        pad = (x1 - x0) * 0.6
        return [detectors.Face((x0 - pad, y0 - pad, x1 + pad, y1 + pad), 1.0, points)]


@pytest.fixture
def disc_detector(monkeypatch):
    monkeypatch.setitem(detectors.DETECTORS, "discs", DiscDetector)
    return "discs"


def tilted_face(size: int = 200, degrees: float = 20.0, scale: float = 100.0, seed: int = 0):
    """(photo, landmarks): a painted face `scale` px wide, turned by `degrees`, in the middle of the photo."""
    centre = np.array([size / 2, size / 2])
    landmarks = rotate(FIVE_POINT_TEMPLATE * scale + centre - scale / 2, degrees, centre)
    return paint_face(size, landmarks, radius=scale / 20, seed=seed), landmarks


@pytest.mark.parametrize("scale", [128.0, 384.0])  # the face as large as the crop, and three times larger
def test_a_face_turned_20_degrees_comes_out_upright_with_its_landmarks_on_the_template(scale):
    photo, landmarks = tilted_face(size=int(scale * 2), degrees=20, scale=scale)
    matrix = five_point_transform(landmarks, 128)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - FIVE_POINT_TEMPLATE * 128).max() < 1e-6  # an exact similarity is fitted exactly
    assert np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])) == pytest.approx(-20)

    crop = align_face(photo, landmarks, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    found = disc_centres(crop)
    assert np.abs(found - FIVE_POINT_TEMPLATE * 128).max() < 1.0  # the painted features, where the template says
    (left_x, left_y), (right_x, right_y) = found[:2]
    assert left_x < right_x and abs(left_y - right_y) < 0.5  # the eye line is level, not mirrored


def test_landmarks_outside_the_image_still_give_a_crop():
    photo = noise(60, 80, seed=1)
    partly_out = FIVE_POINT_TEMPLATE * 50 + (-30, 30)  # face over the bottom-left corner
    crop = align_face(photo, partly_out, 64)
    assert crop.shape == (64, 64, 3) and crop.any() and not crop[:, :16].any()  # left of the photo: black
    far_out = FIVE_POINT_TEMPLATE * 40 + (500, -900)
    assert not align_face(photo, far_out, 64).any()  # all black, no error
    tiny = FIVE_POINT_TEMPLATE * 2 + 10  # a face of 2 px: drawn at the photo's scale, no error
    assert align_face(photo, tiny, 64).shape == (64, 64, 3)
    with pytest.raises(ValueError, match="landmarks"):
        align_face(photo, np.ones((5, 2)), 64)


def test_the_same_photo_gives_the_same_aligned_crop_through_prepare_and_predict(tmp_path, disc_detector):
    from agecli.predict.predictor import Predictor

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, degrees in enumerate([-25, 0, 15]):
        Image.fromarray(tilted_face(size=240, degrees=degrees, scale=90, seed=i)[0]).save(photos / f"p{i}.png")
    (photos / "labels.csv").write_text("filename,age\n" + "".join(f"p{i}.png,{30 + i}\n" for i in range(3)))
    result = prepare("csv", photos, tmp_path / "prep", sizes=(64,), detect=True, detector=disc_detector,
                     align="five_point")
    assert result.kept == 3 and result.align_fallbacks == 0
    assert not (tmp_path / "prep" / "crops_64.npy").exists()  # never mixed up with box crops
    cached = open_crops(tmp_path / "prep", 64)

    model = tiny_checkpoint(tmp_path / "aligned.pt", crop_size=64, align="five_point", detector=disc_detector)
    predictor = Predictor(model, detector=disc_detector, device="cpu")
    assert predictor.preprocess.align == "five_point"  # the checkpoint keeps it
    for i in range(3):
        photo = load_image(photos / f"p{i}.png")
        _, _, crops = predictor.find_faces(photo)
        assert crops.shape == (1, 64, 64, 3) and crops[0].tobytes() == cached[i].tobytes()
        found = disc_centres(cached[i])
        assert abs(found[0, 1] - found[1, 1]) < 1.0  # every one upright, whatever its tilt
    unaligned = Predictor(tiny_checkpoint(tmp_path / "boxes.pt", crop_size=64), detector=disc_detector, device="cpu")
    assert unaligned.find_faces(load_image(photos / "p0.png"))[2][0].tobytes() != cached[0].tobytes()


def write_chips(folder: Path, faces: int, blanks: int) -> None:
    """UTKFace-named 100-px chips: `faces` painted faces (slightly tilted) and `blanks` without any."""
    folder.mkdir(parents=True)
    for i in range(faces + blanks):
        chip = tilted_face(size=100, degrees=8, scale=60, seed=i)[0] if i < faces else paint_face(100, [], 1, seed=i)
        Image.fromarray(chip).save(folder / f"{20 + i}_0_0_2017010{i}000000000.jpg.chip.png")


def test_prepare_aligns_chips_on_their_own_landmarks_and_counts_those_cut_whole(tmp_path, disc_detector):
    write_chips(tmp_path / "utk", faces=3, blanks=2)
    out = tmp_path / "prep"
    result = prepare("utkface", tmp_path / "utk", out, sizes=(32,), detector=disc_detector, align="five_point",
                     test_fraction=0)
    meta = json.loads((out / "prepare.json").read_text())
    assert result.kept == 5 and result.align_fallbacks == 2 and meta["align_fallbacks"] == 2
    assert meta["align"] == "five_point" and not meta["detect"] and meta["detector"] == "discs"
    cached = np.load(out / "crops_five_point_32.npy")
    rows = {Path(p).name: i for i, p in enumerate(_manifest_paths(out))}
    for path in sorted((tmp_path / "utk").iterdir()):
        chip = load_image(path)
        found = DiscDetector().detect(chip)
        expected = align_face(chip, found[0].landmarks, 32) if found else crop_face(chip, None, 32, 0, 0)
        assert cached[rows[path.name]].tobytes() == expected.tobytes()
    # another size later comes from the landmarks prepare kept, cut the same way
    bigger = open_crops(out, 48)
    assert (out / "crops_five_point_48.npy").is_file() and not (out / "crops_48.npy").exists()
    first = min((tmp_path / "utk").iterdir())
    chip = load_image(first)
    expected = align_face(chip, DiscDetector().detect(chip)[0].landmarks, 48)
    assert bigger[rows[first.name]].tobytes() == expected.tobytes()
    # the same folder prepared without alignment: box crops again, under the old name, the aligned ones gone
    plain = prepare("utkface", tmp_path / "utk", out, sizes=(32,), test_fraction=0)
    assert plain.meta["align"] == "none" and plain.align_fallbacks == 0
    assert (out / "crops_32.npy").is_file() and not list(out.glob("crops_five_point_*.npy"))
    assert open_crops(out, 32)[rows[first.name]].tobytes() == crop_face(chip, None, 32, 0, 0).tobytes()


def test_an_aligned_model_without_a_face_detector_gets_the_chip_crops_prepare_made(tmp_path, disc_detector):
    from agecli.predict.predictor import Predictor

    write_chips(tmp_path / "utk", faces=2, blanks=1)
    out = tmp_path / "prep"
    prepare("utkface", tmp_path / "utk", out, sizes=(64,), detector=disc_detector, align="five_point", test_fraction=0)
    cached = open_crops(out, 64)
    model = tiny_checkpoint(tmp_path / "aligned.pt", crop_size=64, align="five_point", detector=disc_detector)
    predictor = Predictor(model, detector="none", device="cpu")
    for row, path in enumerate(_manifest_paths(out)):
        crops = predictor.find_faces(load_image(path))[2]
        assert crops.shape == (1, 64, 64, 3) and crops[0].tobytes() == cached[row].tobytes(), path


def _manifest_paths(out: Path) -> list[str]:
    import csv

    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        return [row["path"] for row in sorted(csv.DictReader(f), key=lambda r: int(r["cache_row"]))]


def test_align_needs_a_detector_with_landmarks(tmp_path):
    write_chips(tmp_path / "utk", faces=1, blanks=0)
    with pytest.raises(AgeCliError, match="--align five_point: the haar detector gives no landmarks"):
        prepare("utkface", tmp_path / "utk", tmp_path / "prep", detector="haar", align="five_point")
    with pytest.raises(AgeCliError, match="--align tilted: choose one of none, five_point"):
        prepare("utkface", tmp_path / "utk", tmp_path / "prep", align="tilted")
    assert detectors.Face((0, 0, 1, 1), 1.0).landmarks is None


def test_align_is_kept_with_the_weights_and_old_files_read_as_none():
    aligned = Preprocess(align="five_point")
    assert Preprocess.from_dict(aligned.to_dict()) == aligned
    assert Preprocess.from_dict({"size": 64, "margin": -0.03}).align == "none"  # written before the field
    assert "align" not in Preprocess().public_dict()  # export metadata of box-crop models: unchanged
    assert Preprocess.from_dict(aligned.public_dict()).align == "five_point"  # an exported aligned model says so
    with pytest.raises(AgeCliError, match="preprocess align 'five-point'"):
        Preprocess(align="five-point")


# sha1 of the crops below as agecli cut them before alignment existed (commit a6c073c)
BOX_CROPS_SHA1 = "5caef616379dea64bdd459e9cf99dcad12f84b5d"


def patterned_photo() -> np.ndarray:
    """A 90 x 120 photo with no randomness in it, so its crops hash the same on every machine."""
    ys, xs = np.mgrid[0:90, 0:120]
    return np.stack([(xs * 7 + ys * 3) % 256, (xs * ys) % 251, (xs + ys * 11) % 256], axis=2).astype(np.uint8)


def test_align_none_cuts_the_box_crops_it_always_cut():
    photo = patterned_photo()
    boxes = [(20.0, 10.0, 70.0, 66.0), (80.5, 40.2, 119.0, 89.0), (-10.0, -5.0, 30.0, 40.0)]
    landmarks = [FIVE_POINT_TEMPLATE * 40 + (25, 15)] * 3
    plain = crop_batch(photo, boxes, Preprocess(crop_size=72))
    assert crop_batch(photo, boxes, Preprocess(crop_size=72), landmarks).tobytes() == plain.tobytes()
    assert hashlib.sha1(plain.tobytes()).hexdigest() == BOX_CROPS_SHA1
    # a face without landmarks (Haar) under an aligned model gets its box crop, as prepare gives it
    aligned = crop_batch(photo, boxes, Preprocess(crop_size=72, align="five_point"), [landmarks[0], None, None])
    assert aligned[1:].tobytes() == plain[1:].tobytes() and aligned[0].tobytes() != plain[0].tobytes()


def test_prepare_without_alignment_keeps_its_fingerprint_and_cache_name(tmp_path):
    write_chips(tmp_path / "utk", faces=2, blanks=0)
    result = prepare("utkface", tmp_path / "utk", tmp_path / "prep", sizes=(32,), test_fraction=0)
    meta = result.meta
    settings = {k: meta[k] for k in ("dataset", "root", "detect", "detector", "margin", "shift", "sizes")}
    rows = scan_source("utkface", tmp_path / "utk").rows
    assert meta["fingerprint"] == _fingerprint(settings, rows)  # folders prepared before are not redone
    assert (tmp_path / "prep" / "crops_32.npy").is_file() and meta["align"] == "none"


@pytest.mark.skipif(not ASTRONAUT.is_file(), reason="shared example photo not present")
def test_retinaface_landmarks_align_a_real_photo(tmp_path):
    photo = load_image(ASTRONAUT)
    face = detectors.create_detector("retinaface").detect(photo)[0]
    assert face.landmarks.shape == (5, 2)
    x0, y0, x1, y1 = face.box
    assert ((face.landmarks >= (x0, y0)) & (face.landmarks <= (x1, y1))).all()
    (lx, ly), (rx, ry), (nx, ny) = face.landmarks[:3]
    assert lx < nx < rx and max(ly, ry) < ny  # image-left eye first, the nose between and below
    crop = crop_batch(photo, [face.box], Preprocess(crop_size=64, align="five_point"), [face.landmarks])[0]
    assert crop.shape == (64, 64, 3) and crop.any()


def test_eval_says_when_the_data_was_cut_otherwise_than_the_model(tmp_path):
    from agecli.training.evaluation import run_eval
    from tests.helpers import labelled_faces

    boxed = prepare("csv", labelled_faces(tmp_path / "faces", 6), tmp_path / "boxed", sizes=(64,)).out
    notes: list[str] = []
    for align, out in (("none", "same"), ("five_point", "other")):
        model = tiny_checkpoint(tmp_path / f"{align}.pt", crop_size=64, align=align)
        run_eval(model, boxed, split="all", device="cpu", out=tmp_path / out, warn=notes.append)
        if align == "none":
            assert not any("--align" in n for n in notes)  # box crops for a box-crop model: nothing to say
    said = [n for n in notes if "--align five_point" in n]
    assert len(said) == 1 and "boxed's faces are cut from their boxes" in said[0], notes
