"""Face thumbnails for the report, cut from the prepared dataset's crop cache (never the dataset's images).

A predictions file names each face by its image path; the manifest says which row of crops_<S>.npy holds
it. Both list a run's faces in manifest order (eval: the rows of one split; lopo: each subject's rows), so
the k-th prediction of a path (per subject, for LOPO) is the k-th manifest row of that path.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image

from agecli.data.manifest import read_manifest
from agecli.errors import AgeCliError

PER_GRID = 24  # thumbnails in each grid: worst predictions, random sample
SAMPLE_SEED = 0  # the same random faces every time the report is rebuilt


def cache_rows(predictions: pd.DataFrame, manifest: pd.DataFrame, split: str = "") -> np.ndarray:
    """Crop-cache row of every prediction (-1 where the manifest has no such face)."""
    if "cache_row" in predictions.columns:
        return predictions["cache_row"].to_numpy(int)
    rows = manifest if split in ("", "all") else manifest[manifest["split"] == split]
    keys = ["path"] + (["subject"] if "subject" in predictions.columns else [])
    left = predictions[keys + ["age"]].assign(_k=predictions.groupby(keys).cumcount().to_numpy())
    right = rows[keys + ["age", "cache_row"]].assign(_k=rows.groupby(keys).cumcount().to_numpy())
    merged = left.merge(right, on=keys + ["_k"], how="left", suffixes=("", "_manifest"))
    same_age = np.isclose(merged["age"].to_numpy(float), merged["age_manifest"].to_numpy(float))
    return np.where(same_age, merged["cache_row"].fillna(-1).to_numpy(float), -1).astype(int)


def open_cache(data_dir: Path, size: int | None) -> np.ndarray:
    """The run's crop size when cached, else the largest cached size (thumbnails only need to look right)."""
    sizes = {}
    for path in data_dir.glob("crops_*.npy"):
        suffix = path.stem.split("_")[-1]
        if suffix.isdigit():
            sizes[int(suffix)] = path
    if not sizes:
        raise AgeCliError(f"{data_dir}: no crop cache (crops_<size>.npy)")
    return np.load(sizes[size] if size in sizes else sizes[max(sizes)], mmap_mode="r")


def png_data_uri(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tile(row: pd.Series, crops: np.ndarray, cache_row: int) -> dict:
    spread = row.get("spread")
    return {"src": png_data_uri(crops[cache_row]), "age": float(row["age"]), "pred": float(row["pred"]),
            "spread": None if spread is None or pd.isna(spread) else float(spread),
            "error": float(row["pred"] - row["age"]),
            "name": Path(str(row["path"])).name, "subject": str(row.get("subject", "") or "")}


def face_grids(predictions: pd.DataFrame, data_dirs: Sequence[Path], size: int | None, split: str = "") -> dict:
    """{'worst': tiles, 'sample': tiles}: the largest errors first, and a seeded random sample. Each face is
    cut from the crop cache of the first prepared dataset (of several, for a run over several sources) whose
    manifest holds it; 'missing' counts the faces none of them holds."""
    present = [Path(d) for d in data_dirs if (Path(d) / "manifest.csv").is_file()]
    if not present:
        raise AgeCliError(f"the prepared dataset {', '.join(map(str, data_dirs))} is not here")
    rows, owner, caches = np.full(len(predictions), -1), np.full(len(predictions), -1), []
    for k, prepared in enumerate(present):
        crops = open_cache(prepared, size)
        found = cache_rows(predictions, read_manifest(prepared / "manifest.csv"), split)
        take = (owner < 0) & (found >= 0) & (found < len(crops))
        rows[take], owner[take] = found[take], k
        caches.append(crops)
    usable = np.flatnonzero((owner >= 0) & predictions["pred"].notna().to_numpy())
    if usable.size == 0:
        raise AgeCliError(f"{', '.join(str(p / 'manifest.csv') for p in present)}: none of the predicted faces is in it")
    error = np.abs(predictions["pred"].to_numpy(float) - predictions["age"].to_numpy(float))
    worst = usable[np.argsort(-error[usable], kind="stable")[:PER_GRID]]
    sample = np.random.default_rng(SAMPLE_SEED).choice(usable, size=min(PER_GRID, usable.size), replace=False)
    return {"worst": [_tile(predictions.iloc[i], caches[owner[i]], rows[i]) for i in worst],
            "sample": [_tile(predictions.iloc[i], caches[owner[i]], rows[i]) for i in sample],
            "missing": int(len(predictions) - usable.size)}
