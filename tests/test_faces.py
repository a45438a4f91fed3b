"""Crop geometry (hand-computed cases) and the face detectors."""

import numpy as np
import pytest
from PIL import Image

from agecli.data import detectors as faces
from agecli.data import preprocess
from agecli.data.crops import crop_face, square_box
from agecli.data.detectors import Face, create_detector
from agecli.data.imageio import load_image
from agecli.errors import AgeCliError


def _retinaface_or_skip():
    try:
        return create_detector("retinaface")
    except AgeCliError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def astronaut(shared_dir):
    return load_image(shared_dir / "examples" / "astronaut.png")


# ---------------------------------------------------------------- square_box


@pytest.mark.parametrize(
    "box, margin, shift, expected",
    [
        ((0, 0, 100, 100), 0.0, 0.0, (0, 0, 100, 100)),
        # w=20, h=40: side = 40 * 1.5 = 60 around centre (20, 40)
        ((10, 20, 30, 60), 0.25, 0.0, (-10, 10, 50, 70)),
        # side = 100 * 0.8 = 80 around centre (50, 25): a negative margin crops inside the box
        ((0, 0, 100, 50), -0.1, 0.0, (10, -15, 90, 65)),
        # side = 120; centre moved down by 0.1 * 120 = 12 -> (50, 62)
        ((0, 0, 100, 100), 0.1, 0.1, (-10, 2, 110, 122)),
        # float box, half-pixel centre: rounds half up
        ((0.0, 0.0, 3.0, 3.0), 0.0, 0.0, (0, 0, 3, 3)),
        ((1.5, 2.5, 4.5, 5.5), 0.0, 0.0, (2, 3, 5, 6)),
    ],
)
def test_square_box(box, margin, shift, expected):
    result = square_box(box, margin, shift)
    assert result == expected
    assert all(isinstance(v, int) for v in result)


def test_square_box_is_square_for_any_box():
    x0, y0, x1, y1 = square_box((3.2, 7.9, 50.1, 120.4), 0.2)
    assert x1 - x0 == y1 - y0 == round(112.5 * 1.4)


@pytest.mark.parametrize("box, margin", [((5, 5, 5, 20), 0.1), ((10, 10, 0, 20), 0.1), ((0, 0, 10, 10), -0.5)])
def test_square_box_rejects_empty(box, margin):
    with pytest.raises(ValueError):
        square_box(box, margin)


# ---------------------------------------------------------------- crop_face


def _gradient(height, width):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def test_crop_same_size_is_exact_copy():
    image = _gradient(100, 100)
    out = crop_face(image, (0, 0, 100, 100), 100, 0.0)
    assert out.dtype == np.uint8 and out.shape == (100, 100, 3)
    np.testing.assert_array_equal(out, image)
    out[0, 0] = 7  # a new array, never a view of the input
    assert image[0, 0, 0] == 0


def test_crop_cuts_the_square_box():
    image = _gradient(80, 120)
    # w=20, h=40, margin 0.25 -> square (-10, 10)-(50, 70); the left 10 columns are outside.
    out = crop_face(image, (10, 20, 30, 60), 60, 0.25)
    np.testing.assert_array_equal(out[:, 10:], image[10:70, 0:50])
    assert not out[:, :10].any()


def test_crop_pads_outside_black():
    image = np.full((10, 10, 3), 255, np.uint8)
    out = crop_face(image, (0, 0, 10, 10), 20, 0.5)  # square (-5, -5)-(15, 15)
    assert (out[5:15, 5:15] == 255).all()
    mask = np.ones((20, 20), bool)
    mask[5:15, 5:15] = False
    assert not out[mask].any()


def test_crop_box_fully_outside_is_black():
    out = crop_face(np.full((10, 10, 3), 200, np.uint8), (50, 50, 60, 60), 8, 0.0)
    assert out.shape == (8, 8, 3) and not out.any()


def test_crop_resizes_with_pil_bilinear():
    image = _gradient(90, 90)
    out = crop_face(image, (0, 0, 90, 90), 32, 0.0)
    expected = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, crop_face(image, (0, 0, 90, 90), 32, 0.0))  # deterministic


def test_crop_none_box_resizes_whole_image():
    image = _gradient(30, 60)
    out = crop_face(image, None, 16, 0.4)  # margin is ignored without a box
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3))])
def test_crop_rejects_non_rgb_uint8(bad):
    with pytest.raises(ValueError):
        crop_face(bad, None, 8, 0.0)


# ---------------------------------------------------------------- create_detector


def test_unknown_detector_lists_names():
    with pytest.raises(AgeCliError) as err:
        create_detector("nope")
    message = str(err.value)
    assert "nope" in message and "\n" not in message
    for name in ("default", "haar", "yunet", "retinaface"):
        assert name in message


def test_unknown_option_is_an_error():
    with pytest.raises(AgeCliError, match="min_neighbors"):
        create_detector("haar", colour="blue")


def test_yunet_without_model_says_how_to_pass_one(monkeypatch):
    monkeypatch.delenv("AGECLI_YUNET_MODEL", raising=False)
    with pytest.raises(AgeCliError) as err:
        create_detector("yunet")
    message = str(err.value)
    assert "model=" in message and "AGECLI_YUNET_MODEL" in message and "\n" not in message


def test_yunet_missing_or_bad_model_file(monkeypatch, tmp_path):
    monkeypatch.setenv("AGECLI_YUNET_MODEL", str(tmp_path / "missing.onnx"))
    with pytest.raises(AgeCliError, match="not found"):
        create_detector("yunet")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(AgeCliError, match="cannot load YuNet model"):
        create_detector("yunet", model=junk)


def test_default_falls_back_to_haar(monkeypatch):
    class Missing:
        def __init__(self, **options):
            raise AgeCliError("not installed")

    monkeypatch.setitem(faces.DETECTORS, "retinaface", Missing)
    monkeypatch.delenv("AGECLI_YUNET_MODEL", raising=False)
    assert create_detector().name == "haar"


def test_default_prefers_retinaface():
    _retinaface_or_skip()
    assert create_detector().name == "retinaface"


def test_every_detector_has_crop_geometry():
    for name, cls in faces.DETECTORS.items():
        assert cls.name == name
        assert preprocess.MARGINS[name] == cls.margin and preprocess.SHIFTS[name] == cls.shift
    assert preprocess.DEFAULT_MARGIN == preprocess.MARGINS["retinaface"]


# ---------------------------------------------------------------- detectors on images


def _check_astronaut_face(found):
    assert found and all(isinstance(f, Face) for f in found)
    x0, y0, x1, y1 = found[0].box
    # Her face sits around x 177-272, y 56-176 in the 512x512 photo.
    assert 170 < (x0 + x1) / 2 < 280 and 60 < (y0 + y1) / 2 < 180
    assert 60 < x1 - x0 < 160
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


def test_haar_finds_the_astronaut(astronaut):
    _check_astronaut_face(create_detector("haar").detect(astronaut))


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_haar_finds_nothing_on_synthetic_images(kind):
    rng = np.random.default_rng(0)
    image = np.full((240, 320, 3), 128, np.uint8) if kind == "blank" else rng.integers(0, 256, (240, 320, 3), np.uint8)
    assert create_detector("haar").detect(image) == []


def test_boxes_are_in_original_pixels_for_large_photos(astronaut):
    """Large photos are shrunk before detection; boxes must come back in full-size pixels."""
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.BILINEAR))
    detector = create_detector("haar")  # max_side 1024 -> shrinks by 2/3
    small_box = detector.detect(astronaut)[0].box
    big_box = detector.detect(big)[0].box
    for small, large in zip(small_box, big_box):
        assert abs(large - 3 * small) < 30


def test_retinaface_finds_the_astronaut(astronaut):
    detector = _retinaface_or_skip()
    _check_astronaut_face(detector.detect(astronaut))
    assert 0.9 <= detector.detect(astronaut)[0].score <= 1.0
    assert detector.detect(np.zeros((200, 200, 3), np.uint8)) == []


def test_retinaface_recall_on_morph(shared_dir):
    detector = _retinaface_or_skip()
    photos = sorted((shared_dir / "data" / "morph").glob("*.JPG"))[::50][:20]
    assert len(photos) == 20
    found = sum(bool(detector.detect(load_image(p))) for p in photos)
    assert found >= 17  # >= 85 %
