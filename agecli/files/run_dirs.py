"""Run folders: one fresh, numbered folder per job (runs/train/exp, exp2 ...), agreed on by every torchrun rank."""

from __future__ import annotations

import os
from pathlib import Path

from agecli.system.ranks import world_size


def increment_dir(base: str | os.PathLike, name: str) -> Path:
    """runs/train/exp, then exp2, exp3 ... : a fresh directory per job, created here."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = base / (name if i == 1 else f"{name}{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run directory under {base}")


RUN_DIR_ENV = "AGECLI_RUN_DIR"  # a fixed run folder for this job (set by launchers that choose it themselves)


def new_run_dir(project: str | Path, label: str) -> tuple[Path, bool]:
    """(run folder, whether this call created it) for a new job named `label` under `project`.

    A fresh numbered folder (label, label2, ...) for one process. Under torchrun every rank must pick
    the same folder, so it is project/label without numbering; AGECLI_RUN_DIR overrides both. Those two
    may already exist, so they are not this call's to remove when the run fails.
    """
    if os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
    elif world_size() > 1:
        run_dir = Path(project) / label
    else:
        return increment_dir(project, label), True
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False
