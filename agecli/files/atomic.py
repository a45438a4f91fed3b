"""Atomic writes: a file appears whole or not at all, and a killed run leaves no half-written output.

Every writer here (atomic_path and the helpers on it, open_append for streamed files) refuses to write
through a symbolic link or into anything that is not a regular file, so an output never lands outside
the folder it was given. JSON is strict (no NaN or Infinity) and CSV text cells are safe to open in a
spreadsheet (see spreadsheet_safe).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from agecli.errors import AgeCliError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash (or kill -9) mid-write leaves the old file, never half of a new one. The temporary's name
    records this host and process, so the next write of the same file removes what a killed one left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_writable_target(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give the usual permissions
        check_writable_target(path)  # again: a link may have been put there while the block ran
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()



def check_writable_target(path: str | os.PathLike) -> None:
    """Refuse, in one line naming `path`, to write where a symbolic link or a non-regular file is.

    Writing through a link would change the file it points to, which may lie anywhere; replacing a
    folder, FIFO or device is never what a user meant.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise AgeCliError(f"{path}: is a symbolic link; agecli does not write through links, remove it or "
                          f"choose another output")
    if not stat.S_ISREG(mode):
        raise AgeCliError(f"{path}: exists and is not a regular file; remove it or choose another output")


def open_append(path: str | os.PathLike, truncate: bool = False, **text_options):
    """`path` opened for appending text (truncated first if `truncate`), never through a link.

    O_NOFOLLOW makes the refusal atomic: a link put there after any check is still not followed.
    text_options go to open() (encoding, errors, newline).
    """
    check_writable_target(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | (os.O_TRUNC if truncate else 0), 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AgeCliError(f"{path}: is a symbolic link; agecli does not write through links") from None
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without a reader, a folder
            raise AgeCliError(f"{path}: exists and is not a regular file; remove it or choose another output") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise AgeCliError(f"{path}: exists and is not a regular file; remove it or choose another output")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return open(fd, "a", **text_options)


_HOST = hashlib.sha1(platform.node().encode()).hexdigest()[:8]  # a shared file system may serve several hosts



OLD_TEMPORARY_SECONDS = 24 * 3600  # temporaries named without host and process (older agecli): stale after a day



def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries of `path` that atomic_path left when its process was killed."""
    removed = []
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        tag = tmp.name[len(prefix):-len(".tmp")].split("-")
        if len(tag) == 3 and tag[1].isdigit():
            stale = tag[0] == _HOST and not process_alive(int(tag[1]))
        else:
            try:
                stale = time.time() - tmp.stat().st_mtime > OLD_TEMPORARY_SECONDS
            except OSError:
                continue
        if stale:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed



def process_alive(pid: int) -> bool:
    """Whether a process of this host is running (another user's counts)."""
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



def strict_json(data: Any, **options) -> str:
    """json.dumps that refuses NaN and Infinity (JSON has neither; most readers reject the bare words)."""
    return json.dumps(data, allow_nan=False, default=_json_default, **options)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """`data` as strict JSON; a NaN or infinite number anywhere in it is refused, in one line naming where."""
    try:
        text = strict_json(data, indent=2)
    except ValueError:
        raise AgeCliError(f"{path}: not written, {non_finite_key(data)} is not a finite number") from None
    write_text_atomic(path, text + "\n")


def non_finite_key(data: Any, where: str = "") -> str | None:
    """Where in `data` the first NaN or infinite number is ("metrics.mae", "photos[3].age"), or None."""
    if isinstance(data, (float, np.floating)):
        return None if np.isfinite(data) else (where or "the value")
    if isinstance(data, np.ndarray):
        return None if np.isfinite(data).all() or data.dtype.kind not in "fc" else (where or "the value")
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = non_finite_key(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found:
            return found
    return None


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text, never runs (OWASP's CSV injection advice).

    Text starting with = + - @ tab or CR gets a leading single quote ("=1+2.jpg" -> "'=1+2.jpg");
    numbers (and None) are returned unchanged, so -3.5 stays a number.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SafeCsvWriter:
    """csv.DictWriter whose text cells pass through spreadsheet_safe: every CSV agecli writes uses it."""

    def __init__(self, f, columns: list[str]):
        self._writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")

    def writeheader(self) -> None:
        self._writer.writeheader()

    def writerow(self, row: dict) -> None:
        self._writer.writerow({k: spreadsheet_safe(v) for k, v in row.items()})

    def writerows(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.writerow(row)


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict], columns: list[str]) -> None:
    """Header and rows, written atomically; text cells are neutralised by spreadsheet_safe (SafeCsvWriter)."""
    buf = io.StringIO()
    writer = SafeCsvWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
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

