"""Which faces a run sees: the prepared datasets of a config (data.manifest or data.sources), stacked into
one table with their crop caches, and split into training, validation and test rows, each source by its own
split column and, where it has them, by subject."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from agecli.config import Config
from agecli.data.cache import StackedCrops, open_crops
from agecli.data.manifest import prepare_meta, read_manifest, resolve_prepared, source_label
from agecli.errors import AgeCliError

if TYPE_CHECKING:
    from agecli.report.progress import Reporter


def crop_geometry(prepared: Path) -> dict:
    """How a prepared dataset's faces were cut: margin/shift/detector when they were detected, and the alignment.
    Aligned faces are cut on their landmarks, the same for chips and photos: only the detector that found them
    counts."""
    meta = prepare_meta(prepared)
    align = meta.get("align", "none")
    if align != "none":
        return {"align": align, "detector": meta.get("detector")}
    geometry = {k: meta[k] for k in ("margin", "shift", "detector")} if meta.get("detect") else {}
    return {**geometry, "align": align}


def split_rows(df: pd.DataFrame, cfg: Config, val_mode: str | None = None,
               val_fraction: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation rows: the train split (or all non-test rows), minus a seeded validation share
    (`val_fraction`, default data.val_fraction, of subjects or images: `val_mode`, default data.val_mode)."""
    val_fraction = cfg.data.val_fraction if val_fraction is None else val_fraction
    pool = df[df["split"] == cfg.data.train_split] if cfg.data.train_split else df[df["split"] != cfg.data.test_split]
    if pool.empty:
        raise AgeCliError(f"no training rows: the manifest has no split '{cfg.data.train_split}' "
                          f"(splits present: {sorted(set(df['split']))}); set data.train_split")
    if val_fraction <= 0:
        return pool, pool.iloc[:0]
    rng = np.random.default_rng(cfg.train.seed if cfg.data.split_seed < 0 else cfg.data.split_seed)
    if (val_mode or cfg.data.val_mode) == "subject":
        subjects = sorted(set(pool["subject"]))
        if len(subjects) < 2 or "" in subjects:
            raise AgeCliError("data.val_mode=subject needs a subject id on every row (this manifest has none)")
        chosen = rng.permutation(len(subjects))[: max(1, round(len(subjects) * val_fraction))]
        is_val = pool["subject"].isin({subjects[i] for i in chosen}).to_numpy()
    else:
        is_val = np.zeros(len(pool), dtype=bool)
        is_val[rng.permutation(len(pool))[: max(1, round(len(pool) * val_fraction))]] = True
    return pool[~is_val], pool[is_val]


def load_data(data: str | Path) -> tuple[Path, pd.DataFrame]:
    prepared = resolve_prepared(data)
    return prepared, read_manifest(prepared / "manifest.csv")


@dataclass
class Source:
    """One prepared dataset of a run: the name its metrics go by, its folder, its manifest and its sampling weight."""
    name: str
    prepared: Path
    rows: pd.DataFrame
    weight: float = 1.0


def source_specs(data: dict) -> list[tuple[str, float]]:
    """(prepared dataset, sampling weight) of each training source of a config (a Config's data section, or a
    checkpoint's stored config["data"]): data.sources, or data.manifest alone."""
    entries = data.get("sources") or ([data["manifest"]] if data.get("manifest") else [])
    return [(entry, 1.0) if isinstance(entry, str) else (str(entry["name"]), float(entry.get("weight", 1.0)))
            for entry in entries]


def load_sources(specs: list[tuple[str, float]]) -> list[Source]:
    """Each source's manifest, its rows labelled with the source's name (two sources may not share one)."""
    sources = []
    for data, weight in specs:
        prepared, df = load_data(data)
        name = source_label(prepared)
        same = [s for s in sources if s.name == name]
        if same:
            raise AgeCliError(f"data.sources: {same[0].prepared} and {prepared} are both named '{name}'; "
                              "rename one of the prepared folders")
        sources.append(Source(name, prepared, df.assign(source=name), weight))
    return sources


def checked_crops(prepared: Path, rows: pd.DataFrame, size: int) -> np.ndarray:
    """A prepared dataset's crop cache, once every one of its manifest `rows` is known to lie inside it."""
    crops = open_crops(prepared, size)
    outside = rows.index[rows["cache_row"] >= len(crops)]
    if len(outside):  # read_manifest keeps the file's row order: index i is line i + 2
        first = outside[0]
        raise AgeCliError(f"{prepared / 'manifest.csv'}: row {first + 2}: cache_row {rows['cache_row'][first]} is out "
                          f"of range: the crop cache holds {len(crops)} rows (0-{len(crops) - 1}); the manifest and "
                          f"crops_*.npy do not belong together")
    return crops


def stack_sources(sources: list[Source], size: int) -> tuple[np.ndarray | StackedCrops, pd.DataFrame]:
    """(crops, rows) of all sources as one table: each source keeps its own crop cache, and its cache_row is
    shifted past the caches before it. Unequal weights add a sample_weight column (see set_up_training)."""
    if len(sources) == 1:
        return checked_crops(sources[0].prepared, sources[0].rows, size), sources[0].rows
    parts, frames, offset = [], [], 0
    for source in sources:
        crops = checked_crops(source.prepared, source.rows, size)  # past its own cache a row would read another source's faces
        rows = source.rows["cache_row"]
        parts.append(crops)
        frames.append(source.rows.assign(cache_row=rows + offset, sample_weight=source.weight))
        offset += len(crops)
    df = pd.concat(frames, ignore_index=True)
    if df["sample_weight"].nunique() == 1:  # equal weights: the plain shuffle, as with one source
        df = df.drop(columns="sample_weight")
    return StackedCrops(parts), df


def split_sources(df: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """split_rows per source, so each dataset's own split column decides its test rows. With several sources,
    a source whose rows all name a subject has its validation share drawn by subject, so no person is in two
    splits; one source alone follows data.val_mode, as before. A source's own val_fraction in data.sources
    (a small dataset needs a larger share to be measured) replaces data.val_fraction for it."""
    names = list(dict.fromkeys(df["source"]))
    shares = {source_label(entry["name"]): float(entry["val_fraction"]) for entry in cfg.data.sources
              if isinstance(entry, dict) and "val_fraction" in entry}
    if len(names) <= 1:
        return split_rows(df, cfg, val_fraction=shares.get(names[0]) if names else None)
    train_parts, val_parts = [], []
    for name in names:
        rows = df[df["source"] == name]
        has_subjects = bool((rows["subject"] != "").all()) and rows["subject"].nunique() >= 2
        try:
            train_rows, val_rows = split_rows(rows, cfg, "subject" if has_subjects else cfg.data.val_mode,
                                              shares.get(name))
        except AgeCliError as err:
            raise AgeCliError(f"data.sources {name}: {err}") from None
        train_parts.append(train_rows)
        val_parts.append(val_rows)
    return pd.concat(train_parts), pd.concat(val_parts)


def subjects_in_two_splits(df: pd.DataFrame, test_split: str) -> dict[str, int]:
    """Per source, how many subjects have faces both in the test split and outside it (a manifest's own split
    that mixes people flatters the test metrics)."""
    crossing = {}
    for name, rows in df[df["subject"] != ""].groupby("source", sort=False):
        is_test = rows["split"] == test_split
        both = set(rows.loc[is_test, "subject"]) & set(rows.loc[~is_test, "subject"])
        if both:
            crossing[name] = len(both)
    return crossing


def source_counts(sources: list[Source], train_df: pd.DataFrame, val_df: pd.DataFrame, cfg: Config) -> dict:
    """For env.json: each source's folder, weight and number of training, validation and test faces."""
    def count(rows: pd.DataFrame, name: str) -> int:
        return int((rows["source"] == name).sum())

    return {s.name: {"data": str(s.prepared.resolve()), "weight": s.weight, "train_rows": count(train_df, s.name),
                     "val_rows": count(val_df, s.name), "test_rows": int((s.rows["split"] == cfg.data.test_split).sum())
                     if cfg.data.test_split else 0} for s in sources}


def warn_about_sources(sources: list[Source], df: pd.DataFrame, cfg: Config, reporter: Reporter) -> None:
    """Say when a manifest's own test split shares people with its training rows, and when sources were cropped
    differently (the checkpoint records the first source's crop geometry, which predict then uses)."""
    if cfg.data.test_split:
        for name, count in subjects_in_two_splits(df, cfg.data.test_split).items():
            reporter.message(f"warning: {name}: {count} subject(s) have faces both in split '{cfg.data.test_split}' "
                             "and outside it; its test metrics are not person-disjoint")
    first = crop_geometry(sources[0].prepared)
    for source in sources[1:]:
        if crop_geometry(source.prepared) != first:
            reporter.message(f"note: {source.name} was cropped differently from {sources[0].name}; the model records "
                             f"{sources[0].name}'s crop geometry for predict")
