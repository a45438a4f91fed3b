"""Any dataset as a CSV of filename (or path, file, image) and age, optionally with subject, split and gender
columns; the paths are relative to the CSV's folder. A row that cannot be used (bad bytes, a path leaving the
folder, a bad age) is reported and the others are kept."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from agecli.data.imageio import safe_name
from agecli.data.scan import SPLITS, SourceScan, age_problem, make_row, none_found, require_dir, require_utf8
from agecli.errors import AgeCliError
from agecli.files.outputs import file_problem

_CSV_SYNONYMS = {"path": "filename", "file": "filename", "image": "filename"}
_GENDERS = {"": "", "m": "m", "male": "m", "f": "f", "female": "f"}


def _find_csv(root: Path) -> Path:
    """root may be the CSV itself, or a folder with labels.csv, or a folder with exactly one .csv."""
    if not root.is_dir() and os.path.lexists(root):
        problem = file_problem(root)
        if problem:  # a FIFO or device given as the labels file is refused unread
            raise AgeCliError(f"{safe_name(root)}: {problem}")
        return require_utf8(root)
    require_dir(root)
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
        raise none_found(csv_path, "usable rows", scan)
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
    bad = age_problem(age)
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
