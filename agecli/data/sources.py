"""One small reader per dataset layout, each turning names/label files into manifest rows, and the table that
`age prepare DATASET` looks them up in. Layouts labelled by file name (UTKFace, FG-NET, MORPH) and
MegaAge-Asian's lists are here; IMDB-WIKI (imdb_wiki.py) and any CSV (csv_labels.py) have their own modules,
and what all readers share is in scan.py.

Readers look at file names and label files only; images are decoded later, in prepare.
Every label that cannot be used is returned as a (item, problem) pair, never dropped silently.
File names that are not valid UTF-8 are reported as problems (they could not be written to a
UTF-8 manifest), not included.
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Callable

from agecli.data.csv_labels import scan_csv
from agecli.data.image_files import IMAGE_EXTENSIONS
from agecli.data.imageio import safe_name
from agecli.data.imdb_wiki import scan_imdb, scan_wiki
from agecli.data.scan import SourceScan, age_problem, make_row, none_found, require_dir
from agecli.errors import AgeCliError
from agecli.files.outputs import file_problem

# ---------------------------------------------------------------- helpers


def _list_images(folder: Path, scan: SourceScan, recursive: bool) -> list[Path]:
    """Image files under folder, sorted; non-UTF-8 names and anything named like an image that is not a
    regular file (a folder, FIFO, device, socket, broken link or link loop) go to scan.problems."""
    found = []
    walker = os.walk(folder) if recursive else [_top_level(folder)]
    for dirpath, dirnames, filenames in walker:
        dirnames.sort()
        for fname in filenames + [d for d in dirnames if _image_name(d)]:
            if not _image_name(fname):
                continue  # hidden files, label files, READMEs are not items
            full = os.path.join(dirpath, fname)
            problem = file_problem(full)
            if problem:
                scan.problems.append((safe_name(full), f"{problem}; skipped"))
                continue
            try:
                full.encode("utf-8")
            except UnicodeEncodeError:
                scan.problems.append((safe_name(full), "file name is not valid UTF-8; rename it"))
                continue
            found.append(Path(full))
    return sorted(found)


def _image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _top_level(folder: Path) -> tuple[str, list[str], list[str]]:
    """os.walk's first entry: (folder, sub-folders, other entries), without walking further."""
    names = sorted(os.listdir(folder))
    dirs = [n for n in names if os.path.isdir(os.path.join(folder, n)) and not os.path.islink(os.path.join(folder, n))]
    return str(folder), dirs, [n for n in names if n not in dirs]


def _scan_names(root: Path, source: str, pattern: re.Pattern, parse: Callable, label: str, example: str,
                recursive: bool) -> SourceScan:
    """Shared body of readers whose labels live in the file name."""
    scan = SourceScan()
    for path in _list_images(root, scan, recursive):
        m = pattern.match(path.name)
        fields = parse(m) if m else None
        if fields is None:
            scan.problems.append((str(path), f"name does not match the {label} pattern, like {example}"))
            continue
        bad = age_problem(fields["age"])
        if bad:
            scan.problems.append((str(path), bad))
            continue
        scan.rows.append(make_row(path, source=source, **fields))
    if not scan.rows:
        raise none_found(root, f"{label} images", scan, f"expected names like {example}")
    return scan


# ---------------------------------------------------------------- name-labelled sets

_UTK = re.compile(r"^(\d+)_(\d+)(?:_(\d+))?_(\d{8,})\D", re.ASCII)  # race field is missing in a few names
_FGNET = re.compile(r"^(\d{3})A(\d{2})[a-z]?\.[a-z]+$", re.ASCII | re.IGNORECASE)
_MORPH = re.compile(r"^(\d+)_(\d+)([MF])(\d+)\.[a-z]+$", re.ASCII | re.IGNORECASE)


def _parse_utk(m: re.Match) -> dict | None:
    gender = {"0": "m", "1": "f"}.get(m.group(2))
    return None if gender is None else {"age": int(m.group(1)), "gender": gender}


def scan_utkface(root: Path) -> SourceScan:
    require_dir(root)
    return _scan_names(root, "utkface", _UTK, _parse_utk,
                       "UTKFace", "25_0_1_20170116174525125.jpg.chip.jpg", recursive=True)


def scan_fgnet(root: Path) -> SourceScan:
    folder = root / "images" if (require_dir(root) / "images").is_dir() else root
    return _scan_names(folder, "fgnet", _FGNET,
                       lambda m: {"age": int(m.group(2)), "subject": m.group(1)},
                       "FG-NET", "001A02.JPG", recursive=False)


def scan_morph(root: Path) -> SourceScan:
    require_dir(root)
    return _scan_names(root, "morph", _MORPH,
                       lambda m: {"age": int(m.group(4)), "subject": m.group(1), "gender": m.group(3).lower()},
                       "MORPH", "009055_0M54.JPG", recursive=True)


# ---------------------------------------------------------------- MegaAge-Asian

def _read_list(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()  # trailing blank lines are formatting, not entries
    return lines


def scan_megaage(root: Path) -> SourceScan:
    require_dir(root)
    scan = SourceScan()
    for split in ("train", "test"):
        names_file, ages_file = root / "list" / f"{split}_name.txt", root / "list" / f"{split}_age.txt"
        if not names_file.exists() and not ages_file.exists():
            continue
        for f in (names_file, ages_file):
            if not f.is_file():
                raise AgeCliError(f"{f}: missing (MegaAge-Asian lists come in name/age pairs)")
        names, ages = _read_list(names_file), _read_list(ages_file)
        if len(names) != len(ages):
            raise AgeCliError(f"{names_file} has {len(names)} lines but {ages_file} has {len(ages)}; "
                              "they must be aligned line by line")
        for i, (name, age_text) in enumerate(zip(names, ages), start=1):
            where = f"{ages_file.name}:{i}"
            try:
                age = float(age_text)
            except ValueError:
                scan.problems.append((where, f"age {age_text!r} is not a number"))
                continue
            bad = "empty image name" if not name else age_problem(age)
            if bad:
                scan.problems.append((where, bad))
                continue
            path = root / split / name
            if not path.is_file():
                scan.problems.append((str(path), "file not found"))
                continue
            scan.rows.append(make_row(path, age, "megaage", split=split))
    if not scan.rows:
        raise none_found(root, "MegaAge-Asian images", scan, "expected list/train_name.txt, list/train_age.txt, train/")
    return scan


# ---------------------------------------------------------------- dispatch

SOURCES: dict[str, Callable[..., SourceScan]] = {
    "utkface": scan_utkface,
    "fgnet": scan_fgnet,
    "megaage": scan_megaage,
    "morph": scan_morph,
    "imdb": scan_imdb,
    "wiki": scan_wiki,
    "csv": scan_csv,
}

# uncropped photos need a face detector before training; the others ship as face crops
DETECT_BY_DEFAULT: dict[str, bool] = {
    "utkface": False, "fgnet": False, "megaage": False, "morph": True, "imdb": True, "wiki": True, "csv": False,
}


def scan_source(name: str, root: str | os.PathLike, **options) -> SourceScan:
    """Read one dataset's labels into manifest rows; AgeCliError for problems that stop the scan."""
    reader = SOURCES.get(name)
    if reader is None:
        raise AgeCliError(f"unknown source '{name}' (valid: {', '.join(sorted(SOURCES))})")
    allowed = [p for p in inspect.signature(reader).parameters if p != "root"]
    for key in options:
        if key not in allowed:
            raise AgeCliError(f"source '{name}' has no option '{key}' (valid: {', '.join(allowed) or 'none'})")
    return reader(Path(os.fsdecode(root)), **options)
