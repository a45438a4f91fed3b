"""What a file is, and where a command may write: the checks that keep user files safe.

Reading: only regular files are read as images, labels or models (a FIFO blocks a reader forever, a
device streams without end), and a model file is classified by its bytes before anything loads it.

Writing: an output never replaces one of the command's inputs, nor an existing file that an agecli
command of the same kind did not write.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import zipfile
from pathlib import Path

from agecli.errors import AgeCliError

# ---------------------------------------------------------------------------- reading

def file_problem(path: str | bytes | os.PathLike) -> str | None:
    """Why `path` cannot be read as a plain file, or None when it is a regular file.

    Looks at the inode only (stat), never opens it: opening a FIFO blocks until someone writes to it,
    and a device can stream forever.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "no such file"
    except OSError as e:
        return "symbolic link loop" if e.errno == errno.ELOOP else f"cannot read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    return "is not a regular file"


def file_kind(path: str | Path) -> str:
    """What a model file is, from its bytes, without running any of it.

    "empty"; "torchscript" (a zip holding code/ and constants.pkl: a program, not data); "checkpoint" (a
    torch.save zip); "zip" (any other zip archive); "pickle" (a bare pickle, e.g. torch.save's legacy format);
    "other" (anything else).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "zip"
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        return "checkpoint" if any(n.endswith("data.pkl") for n in names) else "zip"
    # pickle protocols 2-5 open with PROTO (0x80) and the protocol number
    return "pickle" if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5 else "other"


# ---------------------------------------------------------------------------- writing

def check_output_dir(path: str | Path, option: str) -> None:
    """An output folder may exist, but must be a folder."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise AgeCliError(f"{option} {path}: exists and is not a folder; choose a folder")


def check_output_file(path: str | Path, option: str, inputs=(), written_by_us=None) -> None:
    """Refuse, in one line naming `option`, an output file that would replace a user's file.

    That is: one of `inputs` (compared by inode, so links and other spellings count), a symbolic link
    (writing through it would change a file elsewhere), anything that is not a regular file, or an existing
    file that `written_by_us(path)` does not recognise as an earlier output of the same kind (without that
    test every existing file is refused).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if os.path.islink(path):
        raise AgeCliError(f"{option} {path}: is a symbolic link; agecli does not write through links, remove it or "
                          f"choose another output")
    problem = file_problem(path)
    if problem:
        raise AgeCliError(f"{option} {path}: {problem}; choose another output")
    if _inode(path) in {_inode(p) for p in inputs if os.path.exists(p)}:
        raise AgeCliError(f"{option} {path}: is one of the inputs; choose another output")
    if written_by_us is None or not written_by_us(path):
        raise AgeCliError(f"{option} {path}: already exists and is not an earlier output of this command; "
                          f"choose another name or remove it")


def _inode(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def csv_with_header(columns: list[str]):
    """Recogniser for check_output_file: a CSV whose first line is exactly this header."""
    expected = ",".join(columns)

    def recognise(path: Path) -> bool:
        with open(path, "rb") as f:
            first = f.readline(len(expected) + 4)
        return first.rstrip(b"\r\n").decode("utf-8", "replace") == expected

    return recognise


def csv_starting_with(columns: list[str]):
    """Recogniser for check_output_file: a CSV whose header begins with these columns (more may follow)."""
    expected = [c.encode() for c in columns]

    def recognise(path: Path) -> bool:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
        return first.rstrip(b"\r\n").split(b",")[:len(expected)] == expected

    return recognise


def json_with_keys(keys, exact: bool = True):
    """Recogniser for check_output_file: a JSON object with these top-level keys (exactly, or at least)."""
    wanted = set(keys)

    def recognise(path: Path) -> bool:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, OSError):  # UnicodeDecodeError is a ValueError
            return False
        if not isinstance(data, dict):
            return False
        return set(data) == wanted if exact else wanted <= set(data)

    return recognise
