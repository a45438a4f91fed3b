"""One small reader per dataset layout, each turning names/label files into manifest rows.

Readers look at file names and label files only; images are decoded later, in prepare.
Every label that cannot be used is returned as a (item, problem) pair, never dropped silently.
File names that are not valid UTF-8 are reported as problems (they could not be written to a
UTF-8 manifest), not included.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from agecli.data.image_files import IMAGE_EXTENSIONS
from agecli.data.imageio import safe_name
from agecli.errors import AgeCliError
from agecli.files.outputs import file_problem

ROW_KEYS = ["path", "age", "subject", "split", "source", "gender", "box"]
MAX_AGE = 120
SPLITS = ("train", "val", "test", "")


@dataclass
class SourceScan:
    rows: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def make_row(path, age, source, subject="", split="", gender="", box="") -> dict:
    return {"path": os.path.abspath(path), "age": float(age), "subject": subject, "split": split,
            "source": source, "gender": gender, "box": box}


# ---------------------------------------------------------------- helpers

def _require_dir(root: Path) -> Path:
    if not root.is_dir():
        raise AgeCliError(f"{safe_name(root)}: no such folder")
    return _require_utf8(root)


def _require_utf8(root: Path) -> Path:
    try:
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        # every row path would inherit the bad bytes and break the UTF-8 manifest
        raise AgeCliError(f"{safe_name(root)}: name is not valid UTF-8; rename it") from None
    return root


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


def _age_problem(age: float) -> str | None:
    if age != age:
        return "age is NaN"
    if not 0 <= age <= MAX_AGE:
        return f"age {age:g} out of range 0-{MAX_AGE}"
    return None


def _none_found(root: Path, what: str, scan: SourceScan, hint: str = "") -> AgeCliError:
    msg = f"{safe_name(root)}: no {what} found" + (f" ({hint})" if hint else "")
    if scan.problems:
        item, problem = scan.problems[0]
        msg += f"; {len(scan.problems)} skipped, first: {item}: {problem}"
    return AgeCliError(msg)


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
        bad = _age_problem(fields["age"])
        if bad:
            scan.problems.append((str(path), bad))
            continue
        scan.rows.append(make_row(path, source=source, **fields))
    if not scan.rows:
        raise _none_found(root, f"{label} images", scan, f"expected names like {example}")
    return scan


# ---------------------------------------------------------------- name-labelled sets

_UTK = re.compile(r"^(\d+)_(\d+)(?:_(\d+))?_(\d{8,})\D", re.ASCII)  # race field is missing in a few names
_FGNET = re.compile(r"^(\d{3})A(\d{2})[a-z]?\.[a-z]+$", re.ASCII | re.IGNORECASE)
_MORPH = re.compile(r"^(\d+)_(\d+)([MF])(\d+)\.[a-z]+$", re.ASCII | re.IGNORECASE)


def _parse_utk(m: re.Match) -> dict | None:
    gender = {"0": "m", "1": "f"}.get(m.group(2))
    return None if gender is None else {"age": int(m.group(1)), "gender": gender}


def scan_utkface(root: Path) -> SourceScan:
    _require_dir(root)
    return _scan_names(root, "utkface", _UTK, _parse_utk,
                       "UTKFace", "25_0_1_20170116174525125.jpg.chip.jpg", recursive=True)


def scan_fgnet(root: Path) -> SourceScan:
    folder = root / "images" if (_require_dir(root) / "images").is_dir() else root
    return _scan_names(folder, "fgnet", _FGNET,
                       lambda m: {"age": int(m.group(2)), "subject": m.group(1)},
                       "FG-NET", "001A02.JPG", recursive=False)


def scan_morph(root: Path) -> SourceScan:
    _require_dir(root)
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
    _require_dir(root)
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
            bad = "empty image name" if not name else _age_problem(age)
            if bad:
                scan.problems.append((where, bad))
                continue
            path = root / split / name
            if not path.is_file():
                scan.problems.append((str(path), "file not found"))
                continue
            scan.rows.append(make_row(path, age, "megaage", split=split))
    if not scan.rows:
        raise _none_found(root, "MegaAge-Asian images", scan, "expected list/train_name.txt, list/train_age.txt, train/")
    return scan


# ---------------------------------------------------------------- IMDB-WIKI

_DATENUM_1970 = 719529  # matlab datenum of 1970-01-01


def _mat_field(meta, mat_path: Path, key: str, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(meta[key]).reshape(-1)
    except (ValueError, KeyError, IndexError):
        raise AgeCliError(f"{mat_path}: metadata struct has no field '{key}'") from None
    if n is not None and len(arr) != n:
        raise AgeCliError(f"{mat_path}: metadata field '{key}' has {len(arr)} entries, expected {n}")
    return arr


def _cell_str(x) -> str:
    x = np.asarray(x).reshape(-1)
    return str(x[0]) if len(x) else ""


def _box(loc) -> str:
    # matlab 1-based inclusive [x1 y1 x2 y2] -> 0-based, end-exclusive pixel box
    v = np.asarray(loc, dtype=np.float64).reshape(-1)
    if len(v) != 4 or not np.isfinite(v).all():
        return ""
    x0, y0, x1, y1 = (max(int(round(v[0])) - 1, 0), max(int(round(v[1])) - 1, 0), int(round(v[2])), int(round(v[3])))
    return f"{x0} {y0} {x1} {y1}" if x1 > x0 and y1 > y0 else ""


def _scan_imdb_wiki(root: Path, name: str, min_score: float, max_age: float, boxes: bool | None) -> SourceScan:
    _require_dir(root)
    mat_path = root / f"{name}.mat"
    meta = _load_imdb_wiki_meta(mat_path, name, root)
    full_path = _mat_field(meta, mat_path, "full_path")
    n = len(full_path)
    dob, taken, gender, score, second = (_mat_field(meta, mat_path, key, n).astype(np.float64) for key in
                                         ("dob", "photo_taken", "gender", "face_score", "second_face_score"))
    loc = _mat_field(meta, mat_path, "face_location", n)
    age, ok_dob = _imdb_wiki_age(dob, taken)
    scan = SourceScan()
    keep = _reference_filters(scan, mat_path.name, [
        (~(score >= min_score), f"face_score below {min_score:g} (no face or weak detection)"),
        (~np.isnan(second), "a second face in the photo"),
        (~ok_dob, "unknown date of birth or photo year"),
        (~((age >= 0) & (age <= max_age)), f"age out of range 0-{max_age:g}"),
    ])
    if boxes is None:
        boxes = not root.name.endswith("_crop")  # face_location refers to the full photo, not the crop
    missing, first_missing = 0, ""
    for i in np.flatnonzero(keep):
        path = root / _cell_str(full_path[i])
        if not path.is_file():
            missing, first_missing = missing + 1, first_missing or str(path)
            continue
        g = "m" if gender[i] == 1 else "f" if gender[i] == 0 else ""
        scan.rows.append(make_row(path, age[i], name, gender=g, box=_box(loc[i]) if boxes else ""))
    if missing:
        scan.problems.append((mat_path.name, f"{missing} rows dropped: file not found (first: {first_missing})"))
    if not scan.rows:
        raise _none_found(root, f"usable {name} images", scan)
    return scan


def _load_imdb_wiki_meta(mat_path: Path, name: str, root: Path):
    """The `name` struct of IMDB-WIKI's .mat metadata file."""
    import scipy.io  # here: scipy is needed by this one source only, and takes a while to import

    if not mat_path.is_file():
        raise AgeCliError(f"{safe_name(root)}: no {name}.mat found (expected the {name}_crop folder from IMDB-WIKI)")
    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as e:  # scipy raises assorted types on a bad or truncated .mat
        raise AgeCliError(f"{mat_path}: cannot read metadata ({e})") from None
    if name not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise AgeCliError(f"{mat_path}: no '{name}' struct inside (found: {found or 'nothing'})")
    return mat[name].reshape(-1)[0]


def _imdb_wiki_age(dob: np.ndarray, taken: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(age, whether it is known): the age on July 1 of the year the photo was taken (IMDB-WIKI's own
    convention), from MATLAB datenums of birth and the photo's year."""
    ok_dob = np.isfinite(dob) & np.isfinite(taken) & (dob > 366)
    days = np.where(ok_dob, np.floor(np.where(ok_dob, dob, 0)) - _DATENUM_1970, 0).astype("datetime64[D]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month = days.astype("datetime64[M]").astype(np.int64) % 12 + 1
    day = (days - days.astype("datetime64[M]")).astype(np.int64) + 1
    after_july1 = (month > 7) | ((month == 7) & (day > 1))
    return np.where(ok_dob, taken - year - after_july1, np.nan), ok_dob


def _reference_filters(scan: SourceScan, where: str, filters: list[tuple[np.ndarray, str]]) -> np.ndarray:
    """Rows that pass every (dropped mask, reason) filter; each dropped row is counted in scan.problems
    under the first filter it fails."""
    keep = np.ones(len(filters[0][0]), dtype=bool)
    for dropped, reason in filters:
        count = int((keep & dropped).sum())
        if count:
            scan.problems.append((where, f"{count} rows dropped: {reason}"))
        keep &= ~dropped
    return keep


def scan_imdb(root: Path, min_score: float = 1.0, max_age: float = 100, boxes: bool | None = None) -> SourceScan:
    return _scan_imdb_wiki(root, "imdb", min_score, max_age, boxes)


def scan_wiki(root: Path, min_score: float = 1.0, max_age: float = 100, boxes: bool | None = None) -> SourceScan:
    return _scan_imdb_wiki(root, "wiki", min_score, max_age, boxes)


# ---------------------------------------------------------------- generic CSV

_CSV_SYNONYMS = {"path": "filename", "file": "filename", "image": "filename"}
_GENDERS = {"": "", "m": "m", "male": "m", "f": "f", "female": "f"}


def _find_csv(root: Path) -> Path:
    """root may be the CSV itself, or a folder with labels.csv, or a folder with exactly one .csv."""
    if not root.is_dir() and os.path.lexists(root):
        problem = file_problem(root)
        if problem:  # a FIFO or device given as the labels file is refused unread
            raise AgeCliError(f"{safe_name(root)}: {problem}")
        return _require_utf8(root)
    _require_dir(root)
    if (root / "labels.csv").is_file():
        return root / "labels.csv"
    found = sorted(p for p in root.glob("*.csv") if p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise AgeCliError(f"{safe_name(root)}: need labels.csv or exactly one .csv file (found: {names})")
    return found[0]


def scan_csv(root: Path) -> SourceScan:
    """Rows of a filename,age CSV. A row whose bytes are not UTF-8, or whose path leaves the CSV's folder,
    is reported in scan.problems; the other rows are kept."""
    csv_path = _find_csv(root)
    # bytes that are not UTF-8 survive decoding as lone surrogates, so they cost their row, not the file
    text = csv_path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise AgeCliError(f"{csv_path}: empty file (expected a header like filename,age)")
    columns = [_CSV_SYNONYMS.get(c.strip().lower(), c.strip().lower()) for c in header]
    for required in ("filename", "age"):
        if required not in columns:
            found = ", ".join(safe_name(c.strip().encode("utf-8", "surrogateescape")) for c in header)
            raise AgeCliError(f"{csv_path}: missing column '{required}' (found: {found})")

    scan, seen = SourceScan(), {}
    for values in reader:
        where = f"{csv_path.name}:{reader.line_num}"  # line number in the file, header is line 1
        if not any(v.strip() for v in values):
            continue
        rec = {c: (values[i].strip() if i < len(values) else "") for i, c in enumerate(columns)}
        problem, row = _csv_row(rec, csv_path.parent, seen, reader.line_num)
        if problem:
            scan.problems.append((where, problem))
        else:
            scan.rows.append(row)
    if not scan.rows:
        raise _none_found(csv_path, "usable rows", scan)
    return scan


def _not_utf8(rec: dict) -> str | None:
    """The first byte that is not UTF-8 in a decoded row, as 0xNN, or None."""
    for value in rec.values():
        for ch in value:
            if "\udc80" <= ch <= "\udcff":
                return f"0x{ord(ch) - 0xDC00:02x}"
    return None


def _inside(path: str, folder: Path) -> bool:
    """Whether `path` lies under `folder`, after '..' is resolved (symbolic links inside are not followed)."""
    base = os.path.abspath(folder)
    return os.path.commonpath([base, path]) == base


def _csv_row(rec: dict, base: Path, seen: dict, line: int) -> tuple[str | None, dict | None]:
    bad_byte = _not_utf8(rec)
    if bad_byte:
        return f"holds a byte that is not UTF-8 ({bad_byte}); fix the file's encoding", None
    if not rec["filename"]:
        return "missing filename", None
    path = os.path.abspath(base / rec["filename"])
    if not _inside(path, base):
        return f"path {rec['filename']} leaves the dataset folder {base}; only files under it are read", None
    if path in seen:
        return f"duplicate of line {seen[path]} ({rec['filename']}); keeping the first", None
    seen[path] = line
    try:
        age = float(rec["age"])
    except ValueError:
        return f"age {rec['age']!r} is not a number", None
    bad = _age_problem(age)
    if bad:
        return bad, None
    split = rec.get("split", "").lower()
    if split not in SPLITS:
        return f"unknown split {rec['split']!r} (expected train, val, test or empty)", None
    gender = _GENDERS.get(rec.get("gender", "").lower())
    if gender is None:
        return f"unknown gender {rec['gender']!r} (expected m, f or empty)", None
    problem = file_problem(path)
    if problem:
        return (f"file not found: {rec['filename']}" if problem == "no such file" else
                f"{rec['filename']}: {problem}"), None
    return None, make_row(path, age, "csv", subject=rec.get("subject", ""), split=split, gender=gender)


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
