"""Decode any photo a user may hand us into an RGB uint8 array, or fail with one clear line.

Rules, the same for files and in-memory bytes:
- EXIF orientation is applied, so the array is upright as a viewer shows it.
- Grayscale, palette, CMYK, YCbCr... become RGB. 16-bit images are scaled (65535 -> 255), not clipped.
- Transparency is composited on white: transparent pixels often hold junk colour (commonly black),
  and a face cut-out on white is closer to a real photo than one on black.
- Images over MAX_PIXELS are refused from the header alone, before any pixel is decoded.
- Truncated files are an error, never silently padded with grey.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from agecli.errors import AgeCliError
from agecli.files.outputs import file_problem

MAX_PIXELS = 50_000_000  # a 50-megapixel photo is already far more than a face crop needs
MIN_SIDE = 16  # below this there is no face to see
FAST_JPEG_BYTES = 32 << 20  # load_image reads JPEGs up to this size whole, for simplejpeg
JPEG_START = b"\xff\xd8"

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class ImageError(AgeCliError):
    """An image file that cannot be used: unreadable, corrupt, too large or too small."""


def safe_name(path: str | bytes | os.PathLike) -> str:
    """Printable form of a path: bytes that are not UTF-8 show as \\xff instead of crashing print()."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def load_image(path: str | bytes | os.PathLike) -> np.ndarray:
    """Read an image file into an RGB uint8 HxWx3 C-contiguous array; ImageError if unusable.

    Only regular files are opened; anything else (FIFO, device, socket, folder) is refused unread.
    Always decoded in full: `age prepare` cuts training crops from these pixels, and predict, serve and
    export must give a model the same ones (a reduced-scale JPEG decode moved ages by up to 3.9 years).
    """
    name = safe_name(path)
    problem = file_problem(path)
    if problem:
        raise ImageError(f"{name}: {problem}")
    try:
        # O_NONBLOCK: should the path become a FIFO after the check above, opening it still cannot hang
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ImageError(f"{name}: is not a regular file")
    with os.fdopen(fd, "rb") as f:
        is_jpeg = f.read(2) == JPEG_START
        f.seek(0)
        if is_jpeg and info.st_size <= FAST_JPEG_BYTES:  # a huge file is never read whole: PIL stops at its header
            return _decode_bytes(f.read(), name)
        return _decode(f, name)


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Like load_image, for bytes already in memory; `name` only labels error messages."""
    return _decode_bytes(data, safe_name(name))


def _decode_bytes(data: bytes, name: str) -> np.ndarray:
    # what simplejpeg leaves goes to PIL from the bytes already read, not from the file again
    fast = _decode_jpeg_fast(data)
    return fast if fast is not None else _decode(io.BytesIO(data), name)


def _decode(fp: BinaryIO, name: str) -> np.ndarray:
    """PIL's full decode, upright, as RGB uint8."""
    # someone may have flipped this global; a half-decoded photo must never pass as a good one
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    if _is_empty(fp):
        raise ImageError(f"{name}: empty file (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns (DecompressionBombWarning, corrupt EXIF, palette transparency) on stderr;
        # everything that matters becomes an ImageError below, the rest is noise to a CLI user
        warnings.simplefilter("ignore")
        try:
            im = Image.open(fp)
        except Image.DecompressionBombError as e:
            raise ImageError(f"{name}: {_bomb_message(str(e))}") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{name}: not an image (unknown or unsupported format)") from None
        except Exception as e:  # PIL plugins raise many types on malformed headers
            raise ImageError(f"{name}: corrupt image header ({_short(e)})") from None
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{name}: image is {w}x{h}, over the {MAX_PIXELS // 1_000_000}-megapixel limit")
            if min(w, h) < MIN_SIDE:
                raise ImageError(f"{name}: image too small ({w}x{h}), need at least {MIN_SIDE} px on a side")
            try:
                im.load()  # force the full decode now, so truncation shows up here
            except Image.DecompressionBombError as e:
                raise ImageError(f"{name}: {_bomb_message(str(e))}") from None
            except Exception as e:
                raise ImageError(f"{name}: truncated or corrupt image ({_short(e)})") from None
            return _to_rgb_array(_upright(im), name)


def _decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """A JPEG that libjpeg-turbo decodes without a single warning, through simplejpeg; None for anything
    else, which PIL then decides.

    Exactly PIL's pixels (both are libjpeg-turbo's full-scale decode, islow DCT, fancy upsampling; checked
    bit for bit in tests/test_imageio.py, and against cv2.imread on real chips in tests/test_port.py), but no
    Python parses the header and the GIL is released: about 1.5 times as fast on UTKFace's chips. Left to PIL: an EXIF
    block (orientation follows PIL's rules), colour spaces other than YCbCr and grey, sizes past the limits,
    and any damage, truncation included: strict mode refuses what libjpeg would patch over, so nothing PIL
    rejects gets through here.
    """
    if data[:2] != JPEG_START or b"Exif\x00\x00" in data:
        return None
    import simplejpeg

    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in ("YCbCr", "Gray") or w * h > MAX_PIXELS or min(w, h) < MIN_SIDE:
            return None  # CMYK: simplejpeg's RGB is not quite PIL's
        rgb = simplejpeg.decode_jpeg(data, "RGB", fastdct=False, fastupsample=False)
    except ValueError:  # simplejpeg's only error: corrupt, truncated, or a colour space it cannot turn into RGB
        return None
    return rgb if rgb.shape == (h, w, 3) else None


def _is_empty(fp: BinaryIO) -> bool:
    pos = fp.tell()
    empty = fp.read(1) == b""
    fp.seek(pos)
    return empty


def _upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        # a broken EXIF block says nothing reliable about orientation; the pixels are still fine
        return im


def _to_rgb_array(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = _high_depth_to_uint8(np.asarray(im), name)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode == "RGB":
        rgb = im
    elif mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", im.size, _WHITE), rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    arr = np.array(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"{name}: unexpected pixel layout {arr.shape} after converting mode {mode}")
    return np.ascontiguousarray(arr)


def _high_depth_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Scale 16-bit (and 32-bit int / float) grayscale to 0..255."""
    a = arr.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError(f"{name}: image holds NaN or infinite pixel values")
    lo, hi = float(a.min()), float(a.max())
    if arr.dtype.kind == "f" and lo >= 0 and hi <= 1.0:
        a = a * 255.0  # float images in 0..1
    elif lo >= 0 and hi <= 65535:
        a = a / 257.0  # 16-bit range: 65535 / 257 == 255 exactly
    else:
        # wider than 16 bits (rare 32-bit TIFFs): stretch what is there rather than clip it
        a = (a - lo) / max(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _bomb_message(pil_message: str) -> str:
    # PIL refuses before it tells us the width and height; its message still has the pixel count
    m = re.search(r"\((\d+) pixels\)", pil_message)
    size = f"has {int(m.group(1)):,} pixels" if m else "is too large"
    return f"image {size}, over the {MAX_PIXELS // 1_000_000}-megapixel limit"


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
