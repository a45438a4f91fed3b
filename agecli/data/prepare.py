"""`age prepare`: dataset on disk -> manifest + memory-mapped crop cache, decoded once.

Work is saved every few hundred images (the crops are flushed, then a small state file is replaced
atomically), so an interrupted run picks up where it stopped when rerun with the same arguments. The
state file stays beside the finished dataset: it records each image's size and modification time when
it was cropped, so a rerun reads again only the images that changed since.

With align="five_point" each face is cut on its five landmarks (agecli.data.crops.align_face): a detected
face on the detector's, a ready-made chip on those the detector finds on the chip, a photo with a box from
its dataset on those of the detected face that box marks. A face without landmarks (the detector found none
on the chip, or none at the box) is cut as without alignment; prepare.json counts those ("align_fallbacks").
Aligned crops are cached under their own name (crop_path), so they never mix with box crops.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from agecli.data import detectors
from agecli.data.crops import crop_face, iou
from agecli.data.imageio import ImageError, load_image
from agecli.data.manifest import COLUMNS, PREPARED_ROOT, prepare_meta, read_manifest
from agecli.data.preprocess import ALIGNS, DEFAULT_MARGIN, DEFAULT_SHIFT, MAX_SIDE, MIN_SIDE
from agecli.data.sources import DETECT_BY_DEFAULT, scan_source
from agecli.errors import AgeCliError
from agecli.files.atomic import atomic_path, write_csv_atomic, write_json_atomic
from agecli.files.outputs import check_output_dir
from agecli.system.reproducibility import SEED_MAX, library_versions

CHUNK = 256  # images between saves of the resume state
STATE = "progress.json"  # per image: size and mtime when cropped, box, verdict; lets a rerun redo only what changed
NO_SPLIT_TEST_FRACTION = {"fgnet": 0.0}  # FG-NET is evaluated by leaving one person out, not by a fixed split
MIN_BOX_OVERLAP = 0.3  # intersection over union for a detected face to be the one a dataset's box marks


@dataclass
class PrepareResult:
    out: Path
    kept: int
    problems: list[tuple[str, str]] = field(default_factory=list)
    resumed_from: int = 0
    meta: dict = field(default_factory=dict)
    align_fallbacks: int = 0  # align five_point: faces kept without landmarks, cut as without alignment


def crop_path(out: Path, size: int, align: str = "none") -> Path:
    """The crop cache of one size; aligned crops have their own name, so the two kinds never mix."""
    return out / (f"crops_{size}.npy" if align == "none" else f"crops_{align}_{size}.npy")


def prepared_align(prepared: Path) -> str:
    """How a prepared dataset's faces were cut (prepare.json's "align"; "none" before alignment existed)."""
    return prepare_meta(prepared).get("align", "none")


def assign_splits(rows: list[dict], test_fraction: float, seed: int) -> None:
    """Give rows without a split a fixed, seeded train/test split; by subject when subjects are known."""
    if test_fraction <= 0 or any(r["split"] for r in rows):
        return
    rng = np.random.default_rng(seed)
    use_subjects = all(r["subject"] for r in rows)
    keys = sorted({r["subject"] for r in rows}) if use_subjects else list(range(len(rows)))
    order = rng.permutation(len(keys))
    test = {keys[i] for i in order[: int(round(len(keys) * test_fraction))]}
    for i, row in enumerate(rows):
        row["split"] = "test" if (row["subject"] if use_subjects else i) in test else "train"


def _process(row: dict, detector, margin: float, shift: float, sizes: list[int], detect: bool = True,
             align: str = "none") -> tuple[str, list[np.ndarray], str, list | None]:
    """One image -> (box, crops per size, problem, landmarks). Problem '' means success.

    detect: find the face in the photo (else the image is a chip, cut whole). align five_point: the
    detector is asked for the face's landmarks even on a chip or a photo with a known box."""
    try:
        image = load_image(row["path"])
    except ImageError as err:
        return "", [], str(err).removeprefix(f"{row['path']}: "), None
    box, landmarks = None, None
    needs_box = detect and not row["box"]
    found = detector.detect(image) if detector is not None and (needs_box or align != "none") else []
    if row["box"]:
        box = tuple(float(v) for v in row["box"].split())
        landmarks = _landmarks_of_box(found, box)
    elif detect and detector is not None:
        if not found:
            return "", [], "no face detected", None
        box, landmarks = found[0].box, found[0].landmarks
    elif found:  # a chip: its own face's landmarks
        landmarks = found[0].landmarks
    landmarks = None if align == "none" else landmarks
    crops = [crop_face(image, box, size, margin, shift, landmarks) for size in sizes]
    box_text = " ".join(str(int(round(v))) for v in box) if box is not None else ""
    return box_text, crops, "", None if landmarks is None else landmarks.ravel().tolist()


def _landmarks_of_box(found: list, box) -> np.ndarray | None:
    """The landmarks of the detected face that a dataset's box marks, if one overlaps it enough."""
    overlaps = [(iou(face.box, box), i) for i, face in enumerate(found) if face.landmarks is not None]
    best = max(overlaps, default=(0.0, -1))
    return found[best[1]].landmarks if best[0] >= MIN_BOX_OVERLAP else None


def _fingerprint(settings: dict, rows: list[dict]) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for row in rows:
        digest.update(f"{row['path']}|{row['age']}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _stamp(path: str) -> list[int]:
    """[size, mtime in ns] of an image: when either changes, the image is read again on the next run."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def check_options(sizes, margin: float | None, test_fraction: float | None, seed: int) -> None:
    """One line naming the option for a value out of range, before anything is read or written."""
    for size in sizes:
        if not MIN_SIDE <= size <= MAX_SIDE:
            raise AgeCliError(f"--sizes {size}: a crop size must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    if margin is not None and not -0.5 < margin <= 5:  # side = face * (1 + 2 margin) must stay positive
        raise AgeCliError(f"--margin {margin:g}: must be above -0.5 and at most 5 (a share of the face size)")
    if test_fraction is not None and not 0 <= test_fraction < 1:
        raise AgeCliError(f"--test-fraction {test_fraction:g}: must be in [0, 1)")
    if not 0 <= seed <= SEED_MAX:
        raise AgeCliError(f"--seed {seed}: must be between 0 and {SEED_MAX}")


def check_out(out: Path) -> None:
    """--out may be new, empty or an earlier prepare's folder; it never replaces a file prepare did not write."""
    check_output_dir(out, "--out")
    if not out.is_dir() or any(_read_json(out / name).get("fingerprint") for name in (STATE, "prepare.json")):
        return
    for name in ("manifest.csv", "report.csv", "prepare.json", STATE, *(p.name for p in out.glob("crops_*.npy"))):
        if os.path.lexists(out / name):
            raise AgeCliError(f"--out {out}: {name} there was not written by age prepare; choose another folder")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path | None = None,
    sizes: tuple[int, ...] = (64,),
    detect: bool | None = None,
    detector: str = "default",
    margin: float | None = None,
    shift: float | None = None,
    test_fraction: float | None = None,
    seed: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int = 2,
    align: str = "none",
) -> PrepareResult:
    """Read `dataset` from `root`; write its manifest and crop caches into `out` (resumable, see the module).

    align: "none" (a square around the face box) or "five_point" (on the face's landmarks, see the module)."""
    root = Path(root).expanduser()
    out = Path(out) if out else PREPARED_ROOT / dataset
    check_options(sizes, margin, test_fraction, seed)
    if align not in ALIGNS:
        raise AgeCliError(f"--align {align}: choose one of {', '.join(ALIGNS)}")
    check_out(out)
    scan = _scan(dataset, root)
    rows = scan.rows
    detect = DETECT_BY_DEFAULT.get(dataset, False) if detect is None else detect
    det = _landmark_detector(detector, align) if align != "none" else (
        detectors.create_detector(detector) if detect else None)
    # the detector's own calibration makes its crops match UTKFace-style chips (see agecli.data.preprocess.MARGINS)
    margin = (det.margin if detect else DEFAULT_MARGIN) if margin is None else margin
    shift = (det.shift if detect else DEFAULT_SHIFT) if shift is None else shift
    test_fraction = NO_SPLIT_TEST_FRACTION.get(dataset, 0.2) if test_fraction is None else test_fraction
    assign_splits(rows, test_fraction, seed)
    sizes = sorted(set(int(s) for s in sizes))
    settings = {"dataset": dataset, "root": str(root.resolve()), "detect": detect,
                "detector": det.name if det else "", "margin": margin, "shift": shift, "sizes": sizes}
    if align != "none":  # only then: the folders prepared before alignment existed keep their fingerprint
        settings["align"] = align

    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(settings, rows)
    stamps = [_stamp(row["path"]) for row in rows]
    opened = _open_cache(out, rows, sizes, fingerprint, stamps, align)
    if opened is None:
        return _already_done(out, _read_json(out / "prepare.json"))
    state, arrays = opened
    todo = [i for i, stamp in enumerate(stamps) if state["stamps"][i] != stamp]  # new, or changed since cropped
    resumed_from = len(rows) - len(todo)
    _crop_rows(rows, todo, state, stamps, arrays, lambda r: _process(r, det, margin, shift, sizes, detect, align),
               out, threads, lambda done: on_progress(resumed_from + done, len(rows)) if on_progress else None)
    return _finish(out, scan, rows, state, settings, fingerprint, seed, test_fraction, resumed_from, root)


def _landmark_detector(name: str, align: str):
    """The detector that gives the landmarks to align on; an error for one that has none (Haar)."""
    det = detectors.create_detector(name)
    if not det.has_landmarks:
        raise AgeCliError(f"--align {align}: the {det.name} detector gives no landmarks; "
                          f"use --detector {' or '.join(n for n, c in detectors.DETECTORS.items() if c.has_landmarks)}")
    return det


def _scan(dataset: str, root: Path):
    """The dataset's items and problems; an error when not one item is usable."""
    scan = scan_source(dataset, root)
    if not scan.rows:
        raise AgeCliError(f"{root}: no usable {dataset} items ({len(scan.problems)} problems, first: "
                          f"{scan.problems[0][0]}: {scan.problems[0][1]})" if scan.problems else f"{root}: nothing found")
    return scan


def _open_cache(out: Path, rows: list, sizes: list[int], fingerprint: str, stamps: list, align: str = "none"):
    """(state, crop arrays) to crop into: the earlier run's when it had the same settings and data, so
    only changed images are cropped again, else new ones. None when `out` is already complete."""
    previous, state = _read_json(out / "prepare.json"), _read_json(out / STATE)
    resumable = (state.get("fingerprint") == fingerprint and len(state.get("stamps", [])) == len(rows)
                 and all(crop_path(out, s, align).is_file() for s in sizes))
    if previous.get("fingerprint") == fingerprint and (out / "manifest.csv").is_file() and (
            not resumable or state["stamps"] == stamps):  # no state: made by an agecli that kept none
        return None
    (out / "manifest.csv").unlink(missing_ok=True)  # until rewritten below, the folder is not complete
    if resumable:
        state.setdefault("landmarks", [None] * len(rows))  # a state from before alignment
        return state, [np.load(crop_path(out, s, align), mmap_mode="r+") for s in sizes]
    for other in _other_align_caches(out, align):  # crops of the other kind, with rows that no longer match
        other.unlink()
    state = {"fingerprint": fingerprint, "stamps": [None] * len(rows), "boxes": [""] * len(rows),
             "problems": [""] * len(rows), "landmarks": [None] * len(rows)}
    write_json_atomic(out / STATE, state)  # first, so a rerun knows the crop files below are prepare's
    return state, [np.lib.format.open_memmap(crop_path(out, s, align), mode="w+", dtype=np.uint8,
                                             shape=(len(rows), s, s, 3)) for s in sizes]


def _other_align_caches(out: Path, align: str) -> list[Path]:
    """The crop caches in `out` cut with another alignment than `align` (check_out vouched they are prepare's)."""
    return [path for path in out.glob("crops_*.npy") if _cache_align(path.name) in set(ALIGNS) - {align}]


def _cache_align(name: str) -> str | None:
    """The alignment a crop cache's file name tells (see crop_path); None for another name."""
    match = re.fullmatch(r"crops_(?:(\w+)_)?(\d+)\.npy", name)
    return (match.group(1) or "none") if match else None


def _crop_rows(rows, todo: list[int], state: dict, stamps: list, arrays, process, out: Path, threads: int,
               on_progress: Callable[[int], None]) -> None:
    """Crop the rows in `todo` into the cache; the state is saved after every CHUNK, so a rerun resumes."""
    boxes, problems, landmarks = state["boxes"], state["problems"], state["landmarks"]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start: start + CHUNK]
            for i, (box, crops, problem, points) in zip(chunk, pool.map(process, [rows[i] for i in chunk])):
                boxes[i], problems[i], landmarks[i] = box, problem, points
                for array, crop in zip(arrays, crops):
                    array[i] = crop
            for array in arrays:
                array.flush()
            for i in chunk:
                state["stamps"][i] = stamps[i]
            write_json_atomic(out / STATE, state)
            on_progress(start + len(chunk))


def _finish(out: Path, scan, rows, state, settings, fingerprint, seed, test_fraction, resumed_from,
            root: Path) -> PrepareResult:
    """Write report.csv, prepare.json and, last, manifest.csv (its presence means complete)."""
    boxes, problems = state["boxes"], state["problems"]
    manifest = []
    for i, row in enumerate(rows):
        if problems[i]:
            continue
        manifest.append({**row, "box": boxes[i] or row["box"], "cache_row": i})
    all_problems = list(scan.problems) + [(rows[i]["path"], p) for i, p in enumerate(problems) if p]
    write_csv_atomic(out / "report.csv", [{"item": item, "problem": p} for item, p in all_problems],
                     ["item", "problem"])
    align = settings.get("align", "none")
    # aligned, a kept face without landmarks (the detector found none on a chip) was cut as without alignment
    fallbacks = 0 if align == "none" else sum(not problem and points is None
                                              for problem, points in zip(problems, state["landmarks"]))
    meta = {**settings, "align": align, "align_fallbacks": fallbacks,
            "fingerprint": fingerprint, "rows_scanned": len(rows), "kept": len(manifest), "problems": len(all_problems),
            "split_seed": seed, "test_fraction": test_fraction, "versions": library_versions(),
            "splits": {s: sum(r["split"] == s for r in manifest) for s in sorted({r["split"] for r in manifest})}}
    write_json_atomic(out / "prepare.json", meta)
    write_csv_atomic(out / "manifest.csv", manifest, COLUMNS)  # written last: its presence means "complete"
    if not manifest:
        raise AgeCliError(f"{root}: no usable images ({len(all_problems)} problems, listed in {out / 'report.csv'})")
    return PrepareResult(out=out, kept=len(manifest), problems=all_problems, resumed_from=resumed_from, meta=meta,
                         align_fallbacks=fallbacks)


def _already_done(out: Path, meta: dict) -> PrepareResult:
    with open(out / "report.csv", newline="", encoding="utf-8") as f:
        problems = [(r["item"], r["problem"]) for r in csv.DictReader(f)]
    return PrepareResult(out=out, kept=meta["kept"], problems=problems, resumed_from=meta["rows_scanned"], meta=meta,
                         align_fallbacks=meta.get("align_fallbacks", 0))


def ensure_cache(prepared: Path, size: int, on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Build crops_<size>.npy for an already prepared dataset from its manifest's boxes (same crop geometry);
    an aligned dataset's from the landmarks its progress.json kept."""
    meta = prepare_meta(prepared)
    align = meta.get("align", "none")
    path = crop_path(prepared, size, align)
    if path.is_file():
        return path
    margin = meta.get("margin", DEFAULT_MARGIN)
    shift = meta.get("shift", DEFAULT_SHIFT)
    df = read_manifest(prepared / "manifest.csv")
    n = int(df["cache_row"].max()) + 1
    landmarks = _kept_landmarks(prepared, n) if align != "none" else [None] * n
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        for k, (row, path_str, box) in enumerate(zip(df["cache_row"], df["path"], df["box"])):
            image = load_image(path_str)
            coords = tuple(float(v) for v in box.split()) if box else None
            points = None if landmarks[int(row)] is None else np.array(landmarks[int(row)])
            array[int(row)] = crop_face(image, coords, size, margin, shift, points)
            if on_progress and (k % 200 == 0 or k == len(df) - 1):
                on_progress(k + 1, len(df))
        array.flush()
        del array
    return path


def _kept_landmarks(prepared: Path, rows: int) -> list:
    """Each cache row's landmarks from the state file of an aligned prepare; an error when they are gone."""
    state = _read_json(prepared / STATE)
    landmarks = state.get("landmarks")
    if not isinstance(landmarks, list) or len(landmarks) < rows:
        raise AgeCliError(f"{prepared / STATE}: missing, or without the landmarks of its aligned faces; "
                          f"run age prepare again with this size in --sizes")
    return landmarks
