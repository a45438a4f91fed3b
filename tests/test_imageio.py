import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from agecli.data.imageio import MAX_PIXELS, ImageError, decode_image_bytes, load_image


def _noise(h=64, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(arr=None, **save):
    buf = io.BytesIO()
    Image.fromarray(_noise() if arr is None else arr).save(buf, format="JPEG", **save)
    return buf.getvalue()


def _png_header_only(w, h):
    """A valid-looking PNG whose IHDR claims w x h but carries almost no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_rgb_jpeg_loads_as_contiguous_uint8(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg_bytes())
    arr = load_image(path)
    assert arr.shape == (64, 48, 3) and arr.dtype == np.uint8 and arr.flags.c_contiguous
    assert np.array_equal(arr, decode_image_bytes(path.read_bytes(), "a.jpg"))


def test_png_is_lossless(tmp_path):
    arr = _noise(20, 30)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert np.array_equal(load_image(str(tmp_path / "a.png")), arr)


def test_truncated_jpeg_is_refused(tmp_path, monkeypatch):
    # even if some other code turned truncated loading on, a half image must not pass
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as e:
        load_image(path)
    assert str(e.value).startswith(str(path))
    with pytest.raises(ImageError, match=r"^mem\.jpg: truncated"):
        decode_image_bytes(data[: len(data) // 2], "mem.jpg")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty file") as e:
        load_image(path)
    assert str(e.value).startswith(str(path))


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n")
    with pytest.raises(ImageError, match="not an image") as e:
        load_image(path)
    assert str(e.value).startswith(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_tiny_image_is_refused(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ImageError, match=r"too small \(1x1\)"):
        load_image(tmp_path / "dot.png")


def test_huge_header_refused_before_decoding(tmp_path, monkeypatch, capfd, recwarn):
    def no_decode(self, *a, **k):
        raise AssertionError("pixels were decoded for an oversized image")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)

    # 80 MP: over our limit but under PIL's own bomb checks -> exact size in the message
    (tmp_path / "big.png").write_bytes(_png_header_only(10000, 8000))
    with pytest.raises(ImageError, match=r"big\.png: image is 10000x8000, over the 50-megapixel limit"):
        load_image(tmp_path / "big.png")
    # 100 MP: PIL would print a DecompressionBombWarning; 900 MP: PIL raises its own error
    (tmp_path / "warn.png").write_bytes(_png_header_only(10000, 10000))
    with pytest.raises(ImageError, match=r"image is 10000x10000, over"):
        load_image(tmp_path / "warn.png")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ImageError, match=r"bomb\.png: image has 900,000,000 pixels, over the 50-megapixel"):
        load_image(tmp_path / "bomb.png")
    assert MAX_PIXELS == 50_000_000
    assert len(recwarn) == 0
    assert capfd.readouterr().err == ""


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    arr = load_image(tmp_path / "c.jpg")
    assert arr.shape == (32, 32, 3)
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15  # pure red


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 65535, 257 * 100, 300]], dtype=np.uint16).repeat(16, 0).repeat(4, 1)
    Image.fromarray(a).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    arr = load_image(tmp_path / "deep.png")
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8
    assert list(arr[0, ::4, 0]) == [0, 255, 100, 1]
    assert (arr[..., 0] == arr[..., 2]).all()


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    arr = load_image(tmp_path / "g.png")
    assert arr.shape == (16, 20, 3)
    assert all(np.array_equal(arr[..., c], g) for c in range(3))


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # fully transparent black
    rgba[:8] = (255, 0, 0, 255)  # opaque red top half
    rgba[8:, :8] = (0, 0, 0, 128)  # half-transparent black
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    arr = load_image(tmp_path / "a.png")
    assert tuple(arr[0, 0]) == (255, 0, 0)
    assert tuple(arr[15, 15]) == (255, 255, 255)
    assert all(120 <= v <= 135 for v in arr[15, 0])
    la = Image.fromarray(rgba[..., [0, 3]].copy(), mode="LA")
    la.save(tmp_path / "la.png")
    assert tuple(load_image(tmp_path / "la.png")[15, 15]) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 16))
    im.save(tmp_path / "p.png", transparency=0)
    arr = load_image(tmp_path / "p.png")
    assert tuple(arr[0, 0]) == (0, 255, 0) and tuple(arr[0, 15]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), dtype=np.uint8)  # landscape 40 wide, 20 high
    a[:10, :20] = 255  # white top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=95)
    arr = load_image(tmp_path / "r.jpg")
    assert arr.shape == (40, 20, 3)
    assert arr[:20, 10:].mean() > 200 and arr[:20, :10].mean() < 50  # top-left went to top-right


def test_non_utf8_file_name(tmp_path):
    good = os.path.join(os.fsencode(tmp_path), b"bad\xff.jpg")
    with open(good, "wb") as f:
        f.write(_jpeg_bytes())
    assert load_image(good).shape == (64, 48, 3)
    assert load_image(os.fsdecode(good)).shape == (64, 48, 3)  # surrogateescape str

    broken = os.path.join(os.fsencode(tmp_path), b"worse\xfe.jpg")
    with open(broken, "wb") as f:
        f.write(b"junk")
    for path in (broken, os.fsdecode(broken)):
        with pytest.raises(ImageError) as e:
            load_image(path)
        msg = str(e.value)
        msg.encode("utf-8")  # printable: no lone surrogates
        assert "worse\\xfe.jpg: not an image" in msg


def _smooth(h, w, seed=0):
    """A photo-like image (blocks of 8 px with noise), as a JPEG keeps it."""
    blocks = np.kron(_noise(-(-h // 8), -(-w // 8), seed), np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    return np.clip(blocks.astype(int) + _noise(h, w, seed + 1) // 8, 0, 255).astype(np.uint8)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _pil_pixels(data: bytes) -> np.ndarray:
    from agecli.data.imageio import _decode

    return _decode(io.BytesIO(data), "pil.jpg")


@pytest.mark.parametrize("h,w,save", [
    (200, 200, {}),  # UTKFace's chips
    (203, 157, {"quality": 70}),  # odd sizes
    (640, 480, {"progressive": True}),
    (300, 260, {"subsampling": 0}),  # 4:4:4
    (120, 100, {"subsampling": 1}),  # 4:2:2
])
def test_jpegs_decode_fast_to_exactly_pils_full_pixels(tmp_path, h, w, save):
    # predict must see the pixels `age prepare` trained on: full scale, bit for bit PIL's, never a reduced decode
    from agecli.data.imageio import _decode_jpeg_fast

    path = tmp_path / "chip.jpg"
    for image in (_smooth(h, w), _smooth(h, w)[:, :, 0]):  # colour, and greyscale (RGB as PIL converts it)
        Image.fromarray(image).save(path, **save)
        data = path.read_bytes()
        assert _decode_jpeg_fast(data) is not None  # simplejpeg decodes it
        fast, in_memory, slow = load_image(path), decode_image_bytes(data, "chip.jpg"), _pil_pixels(data)
        assert fast.shape == slow.shape == (h, w, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
        assert np.array_equal(fast, slow) and np.array_equal(in_memory, slow)


def test_jpegs_the_fast_decoder_leaves_to_pil(tmp_path):
    from agecli.data.imageio import _decode_jpeg_fast

    rgb = _smooth(200, 160)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 200 wide, 160 high
    cases = {"exif": _jpeg_bytes(rgb, exif=exif), "cmyk": _encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
             "png": _encoded(Image.fromarray(rgb), "PNG")}
    for what, data in cases.items():
        assert _decode_jpeg_fast(data) is None, what
        (tmp_path / "x.jpg").write_bytes(data)
        image = load_image(tmp_path / "x.jpg")  # still decoded, by PIL
        assert image.shape == ((160, 200, 3) if what == "exif" else (200, 160, 3)), what
    whole = _jpeg_bytes(rgb)
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    assert _decode_jpeg_fast(whole[: len(whole) * 2 // 3]) is None
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated"):
        load_image(tmp_path / "cut.jpg")


def test_damaged_jpegs_fail_or_decode_exactly_as_through_pil(tmp_path):
    # bytes changed at random in a JPEG: libjpeg patches some damage over where PIL reports it, and the
    # fast path must never accept what PIL refuses (OpenCV, tried first, let 1 in 60 through, and printed
    # libjpeg's warnings on stderr)
    whole = _jpeg_bytes(_smooth(200, 200), quality=90)
    rng = np.random.default_rng(0)
    refused = 0
    for k in range(300):
        data = bytearray(whole)
        for i in rng.integers(2, len(data) - 2, int(rng.integers(1, 6))):
            data[i] = int(rng.integers(0, 256))
        (tmp_path / "d.jpg").write_bytes(bytes(data))
        try:
            slow = _pil_pixels(bytes(data))
        except ImageError:
            refused += 1
            with pytest.raises(ImageError):
                load_image(tmp_path / "d.jpg")
            continue
        fast = load_image(tmp_path / "d.jpg")
        assert fast.shape == slow.shape and np.array_equal(fast, slow), k
    assert refused > 0  # the check above ran
