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
from agecli.paths import file_problem

MAX_PIXELS = 50_000_000  # a 50-megapixel photo is already far more than a face crop needs
MIN_SIDE = 16  # below this there is no face to see
FAST_JPEG_BYTES = 32 << 20  # load_image_reduced reads JPEGs up to this size whole, for OpenCV's decoder

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
    """
    return _load(path, None)[0]


def load_image_reduced(path: str | bytes | os.PathLike, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Like load_image, but a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT, several times
    faster) as long as both sides stay at least `side`. Returns (array, (width, height) at full scale)."""
    return _load(path, side)


def _load(path: str | bytes | os.PathLike, reduce_to: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    name = safe_name(path)
    problem = file_problem(path)
    if problem:
        raise ImageError(f"{name}: {problem}")
    try:
        # O_NONBLOCK: should the path become a FIFO after the check above, opening it still cannot hang
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{name}: is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if reduce_to:
            data = f.read(FAST_JPEG_BYTES + 1)  # a huge file is never read whole: PIL stops at its header
            fast = _decode_plain_jpeg(data, reduce_to) if len(data) <= FAST_JPEG_BYTES else None
            if fast is not None:
                return fast
            f.seek(0)
        return _decode(f, name, reduce_to)


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Like load_image, for bytes already in memory; `name` only labels error messages."""
    return _decode(io.BytesIO(data), safe_name(name))[0]


def _decode(fp: BinaryIO, name: str, reduce_to: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
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
            if reduce_to and im.format == "JPEG":
                im.draft(im.mode, (reduce_to, reduce_to))
            reduced = im.size
            try:
                im.load()  # force the full decode now, so truncation shows up here
            except Image.DecompressionBombError as e:
                raise ImageError(f"{name}: {_bomb_message(str(e))}") from None
            except Exception as e:
                raise ImageError(f"{name}: truncated or corrupt image ({_short(e)})") from None
            arr = _to_rgb_array(_upright(im), name)
            if (arr.shape[1], arr.shape[0]) != reduced:  # EXIF turned it a quarter
                w, h = h, w
            return arr, (w, h)


_SOF_PLAIN = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman frames


def plain_jpeg_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG that OpenCV decodes with exactly PIL's pixels, else None.

    Plain means: a baseline or progressive frame of 1 or 3 components, no EXIF block (orientation stays
    with PIL, whose rules the rest of this module follows) and the end-of-image marker as the last two
    bytes, so the file is whole (inside compressed data 0xFF is always followed by 0x00 or a restart code).
    """
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return None
    i, size = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is over
            return size
        segment = data[i + 4: i + 2 + int.from_bytes(data[i + 2: i + 4], "big")]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            if marker not in _SOF_PLAIN or len(segment) < 6 or segment[5] not in (1, 3) or size:
                return None
            size = int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big")
        i += 2 + int.from_bytes(data[i + 2: i + 4], "big")
    return None


def _decode_plain_jpeg(data: bytes, reduce_to: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """load_image_reduced for a plain JPEG (see plain_jpeg_header) through OpenCV, else None (PIL decides).

    The same pixels as PIL's draft decode (both are libjpeg-turbo scaling in the DCT), but OpenCV parses
    no header in Python and releases the GIL: on UTKFace's chips 1.3x as fast on one thread and 2x on two
    (benchmarks/reduced_decode.py)."""
    size = plain_jpeg_header(data)
    if size is None or size[0] * size[1] > MAX_PIXELS or min(size) < MIN_SIDE:
        return None  # PIL's path says what is wrong, or decodes what is not plain
    import cv2

    w, h = size
    scale = next(s for s in (8, 4, 2, 1) if min(w // reduce_to, h // reduce_to) >= s)  # PIL's draft rule
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[scale] | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if bgr is None or bgr.shape != (-(-h // scale), -(-w // scale), 3):
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size  # not bgr[..., ::-1]: numpy's copy holds the GIL


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
