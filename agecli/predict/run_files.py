"""The files of a predict run folder, written as results arrive, so a crash keeps what was done.

    predictions.jsonl     one JSON record per photo, appended and flushed (and fsynced) every batch
    predictions.csv       one row per face, appended alongside
    predictions.meta.json model, detector, shard, number of inputs, finished: what --resume and merge check
    predictions.json      the summary and every record, built at the end from predictions.jsonl

Records are written in input order, so after a kill, predictions.jsonl is a prefix of the finished
file, perhaps with a torn last line. Resuming truncates that line, rebuilds predictions.csv from the
records kept, skips the photos they cover (an error is tried again) and appends the rest. At the end
the files are put in input order if they are not (a resumed error, changed inputs), so a resumed run
ends with exactly the bytes of an uninterrupted one. A shard (--shard I/N) holds inputs I-1, I-1+N, ...
(agecli.files.shards); merging all N shards interleaves their records back into the single-run order.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

from agecli.errors import AgeCliError
from agecli.files.atomic import (
    SafeCsvWriter,
    atomic_path,
    check_writable_target,
    open_append,
    strict_json,
    write_json_atomic,
    write_text_atomic,
)
from agecli.files.outputs import file_problem, json_with_keys
from agecli.files.shards import parse_shard
from agecli.predict.outputs import CSV_COLUMNS, META_KEYS, META_NAME, OLD_SPREAD_NAMES, csv_rows

JSONL, CSV, JSON = "predictions.jsonl", "predictions.csv", "predictions.json"
RESUME_KEYS = ("model", "backend", "detector", "shard")  # a resumed run must match on these


def record_line(record: dict) -> str:
    """One JSONL line; strict JSON (a NaN age is an error record before it gets here, see results.py)."""
    return strict_json(record, ensure_ascii=True) + "\n"  # ASCII: non-UTF-8 file names survive as \\udcXX


def read_meta(folder: Path) -> dict | None:
    path = folder / META_NAME
    if not path.is_file() or not json_with_keys(META_KEYS)(path):
        return None
    return json.loads(path.read_text(encoding="utf-8"))


class StreamedPredictions:
    """OUT/predictions.jsonl and .csv, appended record by record and flushed by flush()."""

    def __init__(self, out_dir: str | Path, meta: dict, resume: bool = False, columns: list[str] = CSV_COLUMNS,
                 rows_of: Callable[[Iterable[dict]], Iterator[dict]] = csv_rows):
        self.out_dir = Path(out_dir)
        self.meta, self.columns, self.rows_of = dict(meta, finished=False), columns, rows_of
        self.jsonl_path, self.csv_path = self.out_dir / JSONL, self.out_dir / CSV
        self.done: set[str] = set()  # paths already predicted (resume skips them)
        self.pending: list[dict] = []
        if resume and read_meta(self.out_dir) is not None:
            self._recover()
        else:  # a fresh run (--resume where nothing was started yet is one too)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.jsonl_path, "")
            write_csv_from(self.out_dir, self.columns, self.rows_of)
        (self.out_dir / JSON).unlink(missing_ok=True)  # an earlier run's summary would now be stale
        write_json_atomic(self.out_dir / META_NAME, self.meta)
        self._jsonl = open_append(self.jsonl_path, encoding="ascii")
        self._csv = open_append(self.csv_path, encoding="utf-8", errors="surrogateescape", newline="")
        self._rows = SafeCsvWriter(self._csv, columns)

    def _recover(self) -> None:
        """Keep the complete records of an interrupted run; refuse one made another way."""
        old = read_meta(self.out_dir)
        for key in RESUME_KEYS:
            if old.get(key) != self.meta.get(key):
                raise AgeCliError(f"--resume {self.out_dir}: that run used {key} {old.get(key)}, this one "
                                  f"{self.meta.get(key)}; use the same options or another --out")
        problem = file_problem(self.jsonl_path)
        if problem:
            raise AgeCliError(f"--resume {self.jsonl_path}: {problem}; the run's records are gone, start it again "
                              f"without --resume")
        truncate_torn_line(self.jsonl_path)
        for record in iter_records(self.jsonl_path):
            if record.get("status") != "error":  # an unreadable file may be readable now: try it again
                self.done.add(record["path"])
        write_csv_from(self.out_dir, self.columns, self.rows_of)

    def add(self, record: dict) -> None:
        self.pending.append(record)

    def flush(self) -> None:
        """Append the pending records to both files and push them to disk: a crash after this keeps them."""
        if not self.pending:
            return
        self._jsonl.write("".join(record_line(r) for r in self.pending))
        self._rows.writerows(self.rows_of(self.pending))
        self.pending.clear()
        for f in (self._jsonl, self._csv):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        self._csv.close()

    def finish_photos(self, expected: list[str], info: dict) -> dict:
        """Close, put the records in input order (one per expected path), write predictions.json; the summary."""
        self.close()
        order_records(self.out_dir, expected, self.columns, self.rows_of)
        summary = write_photos_json(self.out_dir, info)
        write_json_atomic(self.out_dir / META_NAME, dict(self.meta, finished=True))
        return summary


def truncate_torn_line(path: Path) -> None:
    """Cut a last line that a kill left without its newline (every record is written with one)."""
    check_writable_target(path)
    with open(path, "rb+") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)


def iter_records(path: Path) -> Iterator[dict]:
    """The records of a predictions.jsonl; anything else (a file edited by hand, not UTF-8, a folder) is
    refused in one line naming the file and line. Records of older agecli name the spread "std"."""
    problem = file_problem(path)
    if problem:
        raise AgeCliError(f"{path}: {problem}; expected the predictions.jsonl of an age predict run")
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield _parse_record(line, path, number)




def _parse_record(line: bytes, path: Path, number: int) -> dict:
    """One line of a predictions.jsonl as a record, or one line of error naming the file and line number."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise AgeCliError(f"{path}: line {number} is not UTF-8 text; not a record age predict wrote") from None
    except ValueError as e:
        raise AgeCliError(f"{path}: line {number} is not JSON ({e}); not a record age predict wrote") from None
    if not isinstance(record, dict):
        raise AgeCliError(f"{path}: line {number} is a JSON {type(record).__name__}, not a record (an object)")
    for key, kind in (("path", str), ("faces", list)):
        if not isinstance(record.get(key), kind):
            raise AgeCliError(f"{path}: line {number}: the record has no {key} {'text' if kind is str else 'list'}; "
                              f"not a record age predict wrote")
    for face in record["faces"]:
        if not isinstance(face, dict):
            raise AgeCliError(f"{path}: line {number}: a face is not a JSON object; not a record age predict wrote")
        for new, old in OLD_SPREAD_NAMES.items():  # an older agecli's name for the spread
            if old in face and new not in face:
                face[new] = face.pop(old)
    return record


@contextlib.contextmanager
def _shape_errors(path: Path) -> Iterator[None]:
    """A record that lacks a field the CSV or the summary needs: one line naming the file, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError) as err:
        detail = f"no {err}" if isinstance(err, KeyError) else (str(err).splitlines() or [type(err).__name__])[0]
        raise AgeCliError(f"{path}: a record is not as age predict writes it ({detail})") from None


def _in_order(path: Path, expected: list[str]) -> bool:
    """Does the file hold exactly one record per expected path, in that order? (no index built: memory)"""
    count = 0
    for count, record in enumerate(iter_records(path), 1):
        if count > len(expected) or record["path"] != expected[count - 1]:
            return False
    return count == len(expected)


def _line_index(path: Path) -> dict[str, tuple[int, int]]:
    """path -> (offset, length) of its last record."""
    index, offset = {}, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                index[_parse_record(line, path, number)["path"]] = (offset, len(line))
            offset += len(line)
    return index


def order_records(out_dir: Path, expected: list[str], columns, rows_of) -> None:
    """Rewrite predictions.jsonl and .csv in `expected` order when they are not in it already."""
    jsonl = out_dir / JSONL
    if _in_order(jsonl, expected):
        return
    index = _line_index(jsonl)
    missing = [p for p in expected if p not in index]
    if missing:
        raise AgeCliError(f"{jsonl}: no prediction for {missing[0]} ({len(missing)} missing); rerun with --resume")
    with atomic_path(jsonl) as tmp, open(jsonl, "rb") as src, open(tmp, "wb") as dst:
        for key in expected:
            offset, length = index[key]
            src.seek(offset)
            dst.write(src.read(length))
    write_csv_from(out_dir, columns, rows_of)


def write_csv_from(out_dir: Path, columns=CSV_COLUMNS, rows_of=csv_rows) -> None:
    """predictions.csv from predictions.jsonl's records, so the two always agree."""
    with atomic_path(out_dir / CSV) as tmp, _shape_errors(out_dir / JSONL):
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            writer = SafeCsvWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows_of(iter_records(out_dir / JSONL)))


def photo_summary(records: Iterable[dict]) -> dict:
    count = {"photos": 0, "with_faces": 0, "faces": 0, "no_face": 0, "errors": 0}
    for r in records:
        count["photos"] += 1
        count["faces"] += len(r["faces"])
        count[{"ok": "with_faces", "no face": "no_face"}.get(r["status"], "errors")] += 1
    return count


def write_photos_json(out_dir: Path, info: dict) -> dict:
    """predictions.json, {info..., summary, photos: [every record]}, streamed from predictions.jsonl."""
    with _shape_errors(out_dir / JSONL):
        summary = photo_summary(iter_records(out_dir / JSONL))
    head = strict_json({**info, "summary": summary}, indent=2)
    with atomic_path(out_dir / JSON) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(head[:-2] + ',\n  "photos": [')  # head ends with "\n}": reopen the object for the list
        for i, record in enumerate(iter_records(out_dir / JSONL)):
            body = strict_json(record, indent=2).replace("\n", "\n    ")
            f.write(("," if i else "") + "\n    " + body)
        f.write("\n  ]\n}\n")
    return summary


# ---------------------------------------------------------------------------- shards

def merge_runs(folders: list[str | Path], out: str | Path) -> tuple[dict, dict]:
    """Combine the finished shard folders of one job into `out`, byte for byte the single run's files.

    Returns (info, summary). Refuses folders that are not shards of the same job, or not finished.
    """
    metas = []
    for folder in map(Path, folders):
        meta = read_meta(folder)
        if meta is None:
            raise AgeCliError(f"--merge {folder}: not an age predict run folder (no {META_NAME})")
        if not meta["finished"]:
            raise AgeCliError(f"--merge {folder}: unfinished; rerun that shard with --resume --out {folder}")
        metas.append((folder, meta))
    first = metas[0][1]
    for folder, meta in metas:
        for key in ("model", "backend", "detector", "inputs"):
            if meta[key] != first[key]:
                raise AgeCliError(f"--merge {folder}: {key} {meta[key]} differs from {metas[0][0]}'s {first[key]}")
    shards = {}
    for folder, meta in metas:
        index, count = parse_shard(meta["shard"] or "1/1")
        if index in shards:
            raise AgeCliError(f"--merge {folder}: shard {meta['shard']} is also in {shards[index]}")
        shards[index] = folder
    count = parse_shard(first["shard"] or "1/1")[1]
    if sorted(shards) != list(range(1, count + 1)):
        absent = sorted(set(range(1, count + 1)) - set(shards))
        raise AgeCliError(f"--merge: shard {absent[0]}/{count} is missing ({len(absent)} of {count} absent)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _interleave([shards[i] / JSONL for i in range(1, count + 1)], out / JSONL, first["inputs"])
    write_csv_from(out)
    info = {k: first[k] for k in ("model", "backend", "detector")}
    summary = write_photos_json(out, info)
    write_json_atomic(out / META_NAME, {**first, "shard": None, "finished": True})
    return info, summary


def _interleave(sources: list[Path], target: Path, total: int) -> None:
    """Record k of the single run is record k // N of shard k % N + 1 (agecli.files.shards.take_shard)."""
    for source in sources:
        problem = file_problem(source)
        if problem:
            raise AgeCliError(f"--merge {source}: {problem}; expected the predictions.jsonl of a finished shard")
    handles = [open(p, "rb") for p in sources]
    try:
        with atomic_path(target) as tmp, open(tmp, "wb") as dst:
            for k in range(total):
                line = handles[k % len(handles)].readline()
                if not line.endswith(b"\n"):
                    raise AgeCliError(f"--merge {sources[k % len(handles)]}: fewer records than its shard holds")
                _parse_record(line, sources[k % len(handles)], k // len(handles) + 1)  # refuse an edited shard
                dst.write(line)
            if any(h.readline() for h in handles):
                raise AgeCliError("--merge: a shard holds more records than its share of the inputs")
    finally:
        for h in handles:
            h.close()
