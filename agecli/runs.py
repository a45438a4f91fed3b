"""Where a job writes, and which process writes it: run folders and torchrun ranks.

Decided here, in the library, so a run started from Python lands where the same run started from the
shell would, and so no other module reads torchrun's environment itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from agecli.utils import increment_dir

RUN_DIR_ENV = "AGECLI_RUN_DIR"  # a fixed run folder for this job (set by launchers that choose it themselves)


def rank() -> int:
    """This process's rank under torchrun (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's rank on its machine: the index of the GPU it uses under torchrun."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    """Number of processes training together (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True for the one process that writes files and prints: rank 0, or the only process."""
    return rank() == 0


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
