"""The manifest: one table format for every dataset, written by `age prepare` and read by everything else.

A prepared dataset is a folder:
  manifest.csv     one row per usable face (columns below)
  crops_<S>.npy    uint8 array (N, S, S, 3), RGB face crops; row `cache_row` belongs to a manifest row
  report.csv       every item that was left out, and why
  prepare.json     how it was made: source, root, detector, margin, sizes, counts, library versions

Columns of manifest.csv:
  path       absolute path of the original image
  age        age in years (float)
  subject    person id where the dataset has one ('' otherwise); LOPO and person-disjoint splits use it
  split      train | val | test | '' (no split)
  source     dataset name (utkface, fgnet, megaage, morph, imdb, wiki, csv)
  gender     m | f | ''
  box        face box 'x0 y0 x1 y1' in the original image, '' when the whole image is the face
  cache_row  row of this face in crops_<S>.npy
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from agecli.errors import AgeCliError

COLUMNS = ["path", "age", "subject", "split", "source", "gender", "box", "cache_row"]
PREPARED_ROOT = Path("prepared")  # default home of `age prepare` output, relative to the working directory
PREPARE_META = "prepare.json"


def prepare_meta(prepared: str | Path) -> dict:
    """How a prepared dataset was made (its prepare.json); {} for a folder without one. The one reader of it."""
    path = Path(prepared) / PREPARE_META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise AgeCliError(f"{path}: not a readable prepare.json ({type(err).__name__}); run age prepare again") from None
    if not isinstance(meta, dict):
        raise AgeCliError(f"{path}: expected a JSON object; run age prepare again")
    return meta


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise AgeCliError(f"{path}: no such manifest")
    try:
        df = pd.read_csv(path, encoding_errors="surrogateescape", dtype={"subject": str, "split": str, "gender": str, "box": str, "path": str},
                         keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise AgeCliError(f"{path}: not a readable CSV ({str(err).splitlines()[0][:120]})") from None
    missing = [c for c in ("path", "age", "cache_row") if c not in df.columns]
    if missing:
        raise AgeCliError(f"{path}: manifest lacks column(s) {', '.join(missing)} "
                          f"(found {', '.join(map(str, df.columns))}); make one with `age prepare`")
    ages = pd.to_numeric(df["age"], errors="coerce")
    bad = ages.isna() | (ages < 0)
    if bad.any():
        row = int(bad.idxmax())
        raise AgeCliError(f"{path}: row {row + 2}: age {df['age'][row]!r} is not a non-negative number")
    df["age"] = ages.astype(float)
    rows = pd.to_numeric(df["cache_row"], errors="coerce")
    bad = rows.isna() | (rows < 0) | (rows % 1 != 0)
    if bad.any():
        row = int(bad.idxmax())
        raise AgeCliError(f"{path}: row {row + 2}: cache_row {df['cache_row'][row]!r} is not a row number (0 or more)")
    df["cache_row"] = rows.astype(np.int64)
    for column in COLUMNS:
        if column not in df.columns:
            df[column] = ""
    return df


def resolve_prepared(data: str | Path) -> Path:
    """A prepared dataset folder from a name (prepared/<name>), a folder, or its manifest.csv."""
    path = Path(data).expanduser()
    if path.is_file() and path.suffix == ".csv":
        return path.parent
    if (path / "manifest.csv").is_file():
        return path
    named = PREPARED_ROOT / str(data)
    if (named / "manifest.csv").is_file():
        return named
    if path.exists():
        raise AgeCliError(f"{path}: no manifest.csv here; make one with `age prepare DATASET --root DIR --out {path}`")
    if len(path.parts) > 1:  # a folder that is not there: the name is not a dataset's, so do not offer it as one
        raise AgeCliError(f"{path}: no prepared dataset here; make it with `age prepare DATASET --root DIR --out "
                          f"{path}` first, or pass --data PATH")
    raise AgeCliError(f"no prepared dataset '{data}' (looked for {named}/manifest.csv); "
                      f"run `age prepare {data} --root DIR` first, or pass --data PATH")


def sources_text(sources: Iterable[tuple[str, float]]) -> str:
    """(dataset, sampling weight) pairs as a run names them: "utkface, morph (weight 4)"."""
    return ", ".join(name if weight == 1 else f"{name} (weight {weight:g})" for name, weight in sources)


def source_label(data: str | Path) -> str:
    """The name a prepared dataset goes by in a run's per-source metrics: its folder's name
    (utkface for `utkface`, prepared/utkface or prepared/utkface/manifest.csv). Needs no files, so a
    checkpoint's recorded training data can be named where that data is absent."""
    path = Path(str(data)).expanduser()
    if path.suffix == ".csv":
        path = path.parent
    return path.name or path.resolve().name
