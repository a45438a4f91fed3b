"""Atomic writes: a file appears whole or not at all, and a killed run leaves no half-written output."""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash (or kill -9) mid-write leaves the old file, never half of a new one. The temporary's name
    records this host and process, so the next write of the same file removes what a killed one left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()



_HOST = hashlib.sha1(platform.node().encode()).hexdigest()[:8]  # a shared file system may serve several hosts



OLD_TEMPORARY_SECONDS = 24 * 3600  # temporaries named without host and process (older agecli): stale after a day



def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries of `path` that atomic_path left when its process was killed."""
    removed = []
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        tag = tmp.name[len(prefix):-len(".tmp")].split("-")
        if len(tag) == 3 and tag[1].isdigit():
            stale = tag[0] == _HOST and not _process_alive(int(tag[1]))
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > OLD_TEMPORARY_SECONDS
            except OSError:
                continue
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed



def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, and belongs to someone else
        return True
    return True



@contextlib.contextmanager
def discard_on_failure(folder: Path, keep_if: str) -> Iterator[Path]:
    """Delete `folder` (which this command created) when the block fails before `folder/keep_if` exists.

    A run that stops before its first checkpoint leaves nothing to resume or to read, so no empty run
    folder is left behind; one that has a checkpoint is kept for --resume.
    """
    try:
        yield folder
    except BaseException:
        if not (folder / keep_if).exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise



def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask



def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")  # keep non-UTF-8 file names



def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")



def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text_atomic(path, buf.getvalue())



def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

