"""What every dataset reader shares: the manifest row, the scan result (rows plus the items left out and why),
and the checks of a dataset's folder and of an age label."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from agecli.data.imageio import safe_name
from agecli.errors import AgeCliError

ROW_KEYS = ["path", "age", "subject", "split", "source", "gender", "box"]
MAX_AGE = 120
SPLITS = ("train", "val", "test", "")


@dataclass
class SourceScan:
    rows: list[dict] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def make_row(path, age, source, subject="", split="", gender="", box="") -> dict:
    return {"path": os.path.abspath(path), "age": float(age), "subject": subject, "split": split,
            "source": source, "gender": gender, "box": box}


def require_dir(root: Path) -> Path:
    if not root.is_dir():
        raise AgeCliError(f"{safe_name(root)}: no such folder")
    return require_utf8(root)


def require_utf8(root: Path) -> Path:
    try:
        str(root).encode("utf-8")
    except UnicodeEncodeError:
        # every row path would inherit the bad bytes and break the UTF-8 manifest
        raise AgeCliError(f"{safe_name(root)}: name is not valid UTF-8; rename it") from None
    return root


def age_problem(age: float) -> str | None:
    if age != age:
        return "age is NaN"
    if not 0 <= age <= MAX_AGE:
        return f"age {age:g} out of range 0-{MAX_AGE}"
    return None


def none_found(root: Path, what: str, scan: SourceScan, hint: str = "") -> AgeCliError:
    msg = f"{safe_name(root)}: no {what} found" + (f" ({hint})" if hint else "")
    if scan.problems:
        item, problem = scan.problems[0]
        msg += f"; {len(scan.problems)} skipped, first: {item}: {problem}"
    return AgeCliError(msg)
