"""Leave-one-person-out (LOPO) evaluation: one training per subject, tested on that subject's images.

The FG-NET protocol (82 subjects, 82 trainings), for any prepared dataset with a subject column. A run
directory holds everything:
  lopo.json             resolved config, its fingerprint, the manifest's subjects
  config.yaml           the same config, readable
  folds/<subject>.json  one finished fold: metrics, training history, per-image predictions
  report.json, subjects.csv, predictions.csv, error_by_age.png, report.html   written by report()

A fold file is written atomically the moment its fold ends, so a rerun (or another shard) skips the folds
already done and an interruption costs only the fold that was running. A fold's seed depends on its
subject, not on when or where it runs, so a single run, a resumed run and a sharded run agree exactly.

Presets: ssrnet/paper (the default) trains SSR-Net from scratch, offline and fast enough for a CPU.
mvloss/paper is the mean-variance paper's FG-NET protocol (ResNet34, 100 epochs); it starts from ImageNet
weights, so offline it needs model.pretrained=PATH to torchvision's resnet34 weights (or `none`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from agecli.config import Config, dump_yaml, resolve_config
from agecli.errors import AgeCliError
from agecli.files.atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from agecli.files.shards import take_shard
from agecli.metrics import age_metrics, mae_by_age_group
from agecli.report import build_report_or_warn
from agecli.report.plots import plot_error_by_age
from agecli.report.progress import Reporter
from agecli.system.device import select_device
from agecli.system.ranks import world_size
from agecli.system.reproducibility import library_versions
from agecli.training.datasets import checked_crops, crop_geometry, load_data, split_rows
from agecli.training.engine import fit, preprocess_for
from agecli.training.scoring import predict_crops

DEFAULT_PRESET = "ssrnet/paper"  # trains from scratch: works offline, ~minutes per fold on a CPU
FOLD_DIR = "folds"
FORMAT = 1
# The held-out subject is predicted with the weights of the best validation epoch (fit keeps them in memory).
TEST_WEIGHTS = "best"
# Keys that do not change results, or that differ between machines running shards of one run.
UNFINGERPRINTED = ("preset", "data.manifest", "train.device", "train.workers")


class FoldReporter(Reporter):
    """A Reporter (epoch events of each fold's training) plus fold events. Silent by default."""

    def start_run(self, folds: int, done: int) -> None: ...  # folds of this run, of which `done` exist
    def start_fold(self, subject: str, index: int, total: int) -> None: ...  # index among folds to train
    def end_fold(self, fold: dict) -> None: ...


# ---------------------------------------------------------------------------- selection

def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def subject_key(subject: str) -> tuple:
    """Numeric ids sort as numbers ('2' before '10'), other ids after them, alphabetically."""
    return (0, int(subject), subject) if _is_number(subject) else (1, 0, subject)


def _span(subjects: list[str]) -> str:
    shown = ", ".join(subjects) if len(subjects) <= 6 else f"{subjects[0]} ... {subjects[-1]}"
    return f"{len(subjects)} subjects: {shown}"


def parse_subjects(spec: str | Iterable[str], available: Iterable[str]) -> list[str]:
    """'all', '1,5,9', '1-10' (or a mix, or a list of ids) -> matching subjects, sorted.

    Numbers match numeric ids by value ('1' selects '001'); anything else must match an id exactly.
    """
    subjects = sorted(set(available), key=subject_key)
    tokens = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return subjects
    by_number: dict[int, list[str]] = {}
    for s in subjects:
        if _is_number(s):
            by_number.setdefault(int(s), []).append(s)
    chosen: set[str] = set()
    for raw in tokens:
        token = raw.strip()
        if not token:
            raise AgeCliError(f"subjects '{spec}': empty entry (examples: all, 1,5,9, 1-10)")
        if token in subjects:
            chosen.add(token)
            continue
        span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", token)
        if span:
            lo, hi = int(span[1]), int(span[2])
            if lo > hi:
                raise AgeCliError(f"subjects: range '{token}' runs backwards (write {hi}-{lo})")
            found = [s for n, ids in by_number.items() if lo <= n <= hi for s in ids]
            if not found:
                raise AgeCliError(f"subjects: no subject in range '{token}' ({_span(subjects)})")
            chosen.update(found)
        elif _is_number(token) and int(token) in by_number:
            chosen.update(by_number[int(token)])
        else:
            raise AgeCliError(f"subjects: no subject '{token}' in this dataset ({_span(subjects)})")
    return [s for s in subjects if s in chosen]


def shard_subjects(subjects: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Fold k of the sorted selection goes to shard k % N + 1: disjoint, together complete, balanced."""
    return take_shard(subjects, shard)


def fold_seed(seed: int, subject: str) -> int:
    """train.seed for one fold: a function of the subject only, so scheduling never changes results."""
    return (seed * 1_000_003 + zlib.crc32(subject.encode("utf-8", "surrogateescape"))) % 2**31


def fold_path(run_dir: Path, subject: str) -> Path:
    """folds/<subject>.json; ids unsafe as file names get a hash so two ids never share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", subject)
    if safe != subject or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha1(subject.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    return Path(run_dir) / FOLD_DIR / f"{safe}.json"


# ---------------------------------------------------------------------------- data and config

def lopo_config(preset: str | None = None, overrides: dict | None = None) -> Config:
    """The preset (default ssrnet/paper) plus overrides; every non-held-out subject trains."""
    cfg = resolve_config(preset or DEFAULT_PRESET, overrides)
    cfg.data.train_split = ""  # LOPO ignores the manifest's split column
    return cfg


def load_subject_data(data: str | Path) -> tuple[Path, pd.DataFrame]:
    """A prepared dataset whose every row has a subject id, with at least two subjects."""
    prepared, df = load_data(data)
    where = prepared / "manifest.csv"
    missing = df["subject"] == ""
    if missing.all():
        raise AgeCliError(f"{where}: no subject ids; LOPO needs one per image "
                          f"(fgnet and morph have them; a csv dataset needs a subject column)")
    if missing.any():
        raise AgeCliError(f"{where}: {int(missing.sum())} of {len(df)} images have no subject id "
                          f"(first: {df['path'][missing.idxmax()]}); LOPO needs one per image")
    if df["subject"].nunique() < 2:
        raise AgeCliError(f"{where}: only one subject ({df['subject'].iloc[0]}); LOPO needs at least two")
    return prepared, df


def ensure_prepared(dataset: str, root: str | Path, cache_size: int,
                    on_progress: Callable[[int, int], None] | None = None) -> Path:
    """`age prepare DATASET --root ROOT` into prepared/DATASET (a no-op when already done).

    Sizes already cached there are kept, so a prepared dataset is never redone for another size;
    a missing size is cut from the stored boxes when the crops are opened.
    """
    from agecli.data.manifest import PREPARED_ROOT, prepare_meta
    from agecli.data.prepare import prepare

    out = PREPARED_ROOT / dataset
    meta = prepare_meta(out)
    same = meta.get("dataset") == dataset and meta.get("root") == str(Path(root).expanduser().resolve())
    sizes = tuple(meta["sizes"]) if same and meta.get("sizes") else (cache_size,)
    return prepare(dataset, root, out, sizes=sizes, on_progress=on_progress).out


def load_crops(prepared: Path, df: pd.DataFrame, size: int) -> np.ndarray:
    """The crop cache of the manifest's rows, read into RAM once for all folds (kept as a memory map if it would
    not fit)."""
    crops = checked_crops(prepared, df, size)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 0
    return np.array(crops) if crops.nbytes < ram // 2 else crops


def manifest_hash(df: pd.DataFrame) -> str:
    """Content of the rows LOPO uses; file names only, as cluster nodes may mount the images elsewhere."""
    digest = hashlib.sha1()
    for path, age, subject, box, row in zip(df["path"], df["age"], df["subject"], df["box"], df["cache_row"]):
        digest.update(f"{os.path.basename(path)}|{age!r}|{subject}|{box}|{row}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _settings(cfg: Config | dict) -> dict:
    """Flat config minus the keys that do not affect results."""
    data = cfg.to_dict() if isinstance(cfg, Config) else cfg
    flat = {"preset": data.get("preset", "")}
    for section, values in data.items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
    return {k: v for k, v in flat.items() if k not in UNFINGERPRINTED}


def fingerprint(cfg: Config, data_hash: str) -> str:
    payload = {"format": FORMAT, "config": _settings(cfg), "manifest": data_hash, "test_weights": TEST_WEIGHTS}
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def open_run(run_dir: Path, cfg: Config, prepared: Path, df: pd.DataFrame) -> dict:
    """Create the run directory, or check it belongs to this config and data: two runs never mix."""
    meta_file = Path(run_dir) / "lopo.json"
    data_hash = manifest_hash(df)
    fp = fingerprint(cfg, data_hash)
    if meta_file.is_file():
        meta = _read_json(meta_file)
        if meta.get("fingerprint") == fp:
            return meta
        old, new = _settings(meta.get("config", {})), _settings(cfg)
        changes = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        if meta.get("manifest_hash") != data_hash:
            changes.append("the dataset's manifest")
        what = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise AgeCliError(f"{run_dir} holds a LOPO run with other settings ({what or 'another version'}); "
                          f"pass --out NEW_DIR for a separate run, or delete that folder")
    subjects = sorted(set(df["subject"]), key=subject_key)
    meta = {"format": FORMAT, "fingerprint": fp, "manifest_hash": data_hash, "data": str(Path(prepared).resolve()),
            "test_weights": TEST_WEIGHTS, "val_mode": cfg.data.val_mode, "val_fraction": cfg.data.val_fraction,
            "subjects": subjects, "images": len(df), "config": cfg.to_dict(), "versions": library_versions()}
    write_text_atomic(Path(run_dir) / "config.yaml", dump_yaml(cfg))
    write_json_atomic(meta_file, meta)
    return meta


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise AgeCliError(f"{path}: unreadable ({err}); delete it to redo that part") from None


# ---------------------------------------------------------------------------- folds

def train_fold(cfg: Config, crops: np.ndarray, df: pd.DataFrame, subject: str, reporter: Reporter | None = None,
               checkpoint_dir: Path | None = None, crop: dict | None = None) -> dict:
    """Train on every subject but `subject`, then predict its images. The fold's result as plain data."""
    t0 = time.time()
    fold_cfg = copy.deepcopy(cfg)
    fold_cfg.train.seed = fold_seed(cfg.train.seed, subject)
    held_out = (df["subject"] == subject).to_numpy()
    test_df = df[held_out]
    # split '' on every training row: the manifest's own train/test columns play no part in LOPO
    train_df, val_df = split_rows(df[~held_out].assign(split=""), fold_cfg)
    result = fit(fold_cfg, crops, train_df, val_df, run_dir=checkpoint_dir, reporter=reporter,
                 save_checkpoints=checkpoint_dir is not None, crop=crop)
    model = result.model  # the best validation epoch's weights
    pred = predict_crops(model, crops, test_df["cache_row"].to_numpy(), preprocess_for(fold_cfg, model),
                         device=select_device(cfg.train.device))
    ages = test_df["age"].to_numpy()
    predictions = {"path": test_df["path"].tolist(), "age": [float(a) for a in ages],
                   "pred": [float(p) for p in pred["age"]]}
    if "spread" in pred:
        predictions["spread"] = [float(s) for s in pred["spread"]]
    return {"subject": subject, "seed": fold_cfg.train.seed, "test_weights": TEST_WEIGHTS,
            "metrics": age_metrics(pred["age"], ages), "train_images": len(train_df), "val_images": len(val_df),
            "best_epoch": result.best_epoch, "val_best": result.best, "seconds": round(time.time() - t0, 2),
            "history": result.history, "predictions": predictions}


def run_lopo(cfg: Config, run_dir: str | Path, subjects: str | Iterable[str] = "all",
             shard: tuple[int, int] | None = None, reporter: FoldReporter | None = None,
             keep_checkpoints: bool = False) -> dict:
    """Train the folds of `subjects` (this shard's share) not done yet in run_dir; then report() on it."""
    if world_size() > 1:
        raise AgeCliError("LOPO runs one process per list of folds; split the work with --shard I/N, not torchrun")
    run_dir = Path(run_dir)
    reporter = reporter or FoldReporter()
    prepared, df = load_subject_data(cfg.data.manifest)
    selected = parse_subjects(subjects, df["subject"])
    mine = shard_subjects(selected, shard)
    meta = open_run(run_dir, cfg, prepared, df)
    todo = [s for s in mine if not fold_path(run_dir, s).is_file()]
    reporter.start_run(len(mine), len(mine) - len(todo))
    crops = load_crops(prepared, df, cfg.data.cache_size) if todo else None  # once, for every fold
    crop = crop_geometry(prepared)  # recorded in kept checkpoints, so predict frames faces the same way
    for index, subject in enumerate(todo):
        reporter.start_fold(subject, index, len(todo))
        path = fold_path(run_dir, subject)
        checkpoint_dir = path.with_suffix("") if keep_checkpoints else None
        fold = train_fold(cfg, crops, df, subject, reporter, checkpoint_dir, crop)
        write_json_atomic(path, {"fingerprint": meta["fingerprint"], **fold})
        reporter.end_fold(fold)
    return report(run_dir)


# ---------------------------------------------------------------------------- report

SUBJECT_COLUMNS = ["subject", "n", "mae", "ca3", "ca5", "val_mae", "best_epoch", "train_images", "val_images"]


def read_folds(run_dir: Path) -> tuple[dict, dict[str, dict]]:
    """(lopo.json, {subject: fold}) of a run directory, folds in subject order."""
    run_dir = Path(run_dir)
    if not (run_dir / "lopo.json").is_file():
        raise AgeCliError(f"{run_dir}: not a LOPO run directory (no lopo.json); runs live in runs/lopo/NAME")
    meta = _read_json(run_dir / "lopo.json")
    folds = {}
    for path in sorted((run_dir / FOLD_DIR).glob("*.json")):
        fold = _read_json(path)
        if fold.get("fingerprint") != meta["fingerprint"]:  # e.g. fold files copied in from another run
            raise AgeCliError(f"{path}: made with other settings than {run_dir / 'lopo.json'}; remove it or "
                              f"merge it into its own run's folder")
        folds[fold["subject"]] = fold
    return meta, {s: folds[s] for s in sorted(folds, key=subject_key)}


def report(run_dir: str | Path, write: bool = True) -> dict:
    """Merge every finished fold (from any run or shard) into one result; missing folds are listed, not hidden.

    Writes report.json, subjects.csv, predictions.csv, error_by_age.png and report.html into run_dir.
    """
    run_dir = Path(run_dir)
    meta, folds = read_folds(run_dir)
    if not folds:
        raise AgeCliError(f"{run_dir}: no finished folds yet (run `age lopo DATASET` first)")
    missing = [s for s in meta["subjects"] if s not in folds]
    rows, predictions = [], []
    for subject, fold in folds.items():
        rows.append({"subject": subject, **fold["metrics"], "val_mae": fold["val_best"]["mae"],
                     "best_epoch": fold["best_epoch"], "train_images": fold["train_images"],
                     "val_images": fold["val_images"]})
        p = fold["predictions"]
        predictions += [{"subject": subject, "path": p["path"][i], "age": p["age"][i], "pred": p["pred"][i],
                         **({"spread": p.get("spread", p.get("std"))[i]} if "spread" in p or "std" in p else {})} for i in range(len(p["path"]))]
    pred = np.array([r["pred"] for r in predictions])
    ages = np.array([r["age"] for r in predictions])
    summary = {
        "run_dir": str(run_dir), "data": meta["data"], "preset": meta["config"].get("preset", ""),
        "model": meta["config"]["model"]["name"], "fingerprint": meta["fingerprint"],
        "complete": not missing, "folds_done": len(folds), "folds_total": len(meta["subjects"]), "missing": missing,
        "overall": age_metrics(pred, ages),  # every test image counts once
        "mean_subject_mae": float(np.mean([r["mae"] for r in rows])),  # every subject counts once
        "by_age": mae_by_age_group(pred, ages), "test_weights": meta.get("test_weights", TEST_WEIGHTS),
        "val_mode": meta["val_mode"], "val_fraction": meta["val_fraction"],
        "fold_seconds": round(sum(f["seconds"] for f in folds.values()), 1), "subjects": rows,
    }
    if write:
        write_csv_atomic(run_dir / "subjects.csv", rows, SUBJECT_COLUMNS)
        columns = ["subject", "path", "age", "pred"] + (["spread"] if any("spread" in r for r in predictions) else [])
        write_csv_atomic(run_dir / "predictions.csv", predictions, columns)
        title = f"LOPO {summary['preset']}: {len(folds)}/{summary['folds_total']} folds"
        plot_error_by_age(pred, ages, run_dir / "error_by_age.png", title=title)
        write_json_atomic(run_dir / "report.json", summary)
        build_report_or_warn(run_dir)
    return summary
