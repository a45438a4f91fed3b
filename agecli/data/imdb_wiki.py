"""IMDB-WIKI (Rothe et al.): imdb.mat / wiki.mat hold each photo's path, date of birth, year taken, gender,
face box and detector scores. The age is the one on July 1 of the year the photo was taken, and the usual
filters drop photos with a weak face score, a second face, an unknown date or an implausible age, each
counted in the scan's problems."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agecli.data.imageio import safe_name
from agecli.data.scan import SourceScan, make_row, none_found, require_dir
from agecli.errors import AgeCliError

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
    require_dir(root)
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
        raise none_found(root, f"usable {name} images", scan)
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
