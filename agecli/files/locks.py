"""One command at a time per output folder: two runs writing the same files would destroy each other.

    with folder_lock(out_dir, "--out"):
        ...  # write out_dir's files

The lock is a file inside the folder (LOCK_NAME), created atomically (O_CREAT | O_EXCL) and holding its
owner: process id, host and start time. A second run is refused in one line naming that owner. A lock
left by a killed run (its process no longer alive on this host) is stale and taken over; a lock held
from another host is respected, since its process cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Iterator

from agecli.errors import AgeCliError
from agecli.files.atomic import process_alive
from agecli.files.outputs import check_output_dir

LOCK_NAME = ".agecli.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Hold `folder`'s lock (creating the folder if needed) for the block; released on exit, even on error.

    A folder this call created is removed again if the block leaves it empty (a refused run leaves nothing).
    """
    folder = Path(folder)
    check_output_dir(folder, option)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    try:
        _acquire(lock, option, folder)
    except BaseException:
        if created:
            _remove_if_empty(folder)
        raise
    try:
        yield folder
    finally:
        _release(lock)
        if created:
            _remove_if_empty(folder)


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """The owner recorded in `folder`'s lock ({pid, host, started}), {} when unreadable, None when unlocked."""
    return _read(Path(folder) / LOCK_NAME)


def _acquire(lock: Path, option: str, folder: Path) -> None:
    for _ in range(3):  # a stale lock is removed and the creation tried again
        if _create(lock):
            return
        holder = _read(lock)
        if holder is None:
            continue  # released between our two looks
        if not _stale(holder):
            raise AgeCliError(f"{option} {folder}: in use by another agecli run ({_describe(holder)}); "
                              f"wait for it to finish or choose another folder")
        _take_over(lock, holder)
    raise AgeCliError(f"{option} {folder}: could not lock {lock}; another run keeps taking it")


def _create(lock: Path) -> bool:
    owner = {"pid": os.getpid(), "host": platform.node(),
             "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock, flags, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(owner) + "\n")
    return True


def _read(lock: Path) -> dict | None:
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}  # being written by its creator, or damaged: never taken as stale
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict) -> bool:
    """Left by a run on this host whose process has ended."""
    pid = holder.get("pid")
    if holder.get("host") != platform.node() or not isinstance(pid, int) or pid <= 0:
        return False
    return not process_alive(pid)


def _take_over(lock: Path, holder: dict) -> None:
    """Remove a stale lock, unless another run has replaced it meanwhile (then that one wins)."""
    if _read(lock) == holder:
        lock.unlink(missing_ok=True)


def _release(lock: Path) -> None:
    holder = _read(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == platform.node():
        lock.unlink(missing_ok=True)


def _describe(holder: dict) -> str:
    if not holder:
        return "owner unknown: the lock file is being written or is damaged; remove " + LOCK_NAME + " if no run is"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
