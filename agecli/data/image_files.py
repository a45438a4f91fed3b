"""The images a user names: files, folders searched recursively and glob patterns, in a stable order.

One set of image extensions serves `age prepare` and `age predict` alike."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from agecli.files.outputs import file_problem

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})



class ImageItem(NamedTuple):
    path: Path
    problem: str | None  # why this item cannot be processed (missing path, empty folder...), else None



def iter_images(paths: Iterable[str | Path]) -> Iterator[ImageItem]:
    """Expand files, folders (recursively, image extensions only, sorted) and glob patterns.

    A path that does not exist, a glob without matches or a folder without images is yielded with a
    problem, so the caller reports it and goes on. Each file is yielded once.
    """
    seen: set[Path] = set()

    def once(path: Path) -> Iterator[ImageItem]:
        try:
            key = path.resolve()
        except (OSError, RuntimeError):  # a symbolic link loop cannot be resolved
            key = path.absolute()
        if key not in seen:
            seen.add(key)
            # a FIFO, device, socket, folder or broken link named like a photo is reported, never opened
            yield ImageItem(path, file_problem(path))

    for raw in paths:
        path = Path(raw)
        if not str(raw).strip():  # Path("") is the working directory: never scan it by accident
            yield ImageItem(path, "empty path")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_image_name(p))
            if not found:
                yield ImageItem(path, "no images in this folder")
            for p in found:
                yield from once(p)
        elif os.path.lexists(path):
            yield from once(path)  # named explicitly: let the decoder judge whatever it is
        elif glob.has_magic(str(raw)):
            files = sorted(Path(m) for m in glob.glob(str(raw), recursive=True) if _is_image_name(Path(m)))
            if not files:
                yield ImageItem(path, "no image files match this pattern")
            for p in files:
                yield from once(p)
        else:
            yield ImageItem(path, "no such file or folder")



def _is_image_name(path: Path) -> bool:
    # dot-files are editor/OS litter (._IMG_1.jpg from macOS), not photos
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")

