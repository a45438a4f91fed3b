"""Which process of a torchrun job this is, read from its environment; no other module reads it itself."""

from __future__ import annotations

import os


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
