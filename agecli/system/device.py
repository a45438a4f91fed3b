"""The device a job runs on, and how its threads and freed memory are handled on a CPU."""

from __future__ import annotations

import ctypes
import os
import sys
from typing import TYPE_CHECKING

from agecli.errors import AgeCliError
from agecli.system.ranks import local_rank

if TYPE_CHECKING:
    import torch


def idle_threads_sleep() -> bool:
    """Let idle OpenMP threads (torch's, on CPU) sleep at once instead of spinning; True if it applies.

    With a face detector, `age predict` detects in one thread per core while the model runs, and torch's
    threads spinning between batches take the cores the detectors need (Lite0 on 2 cores, FairFace photos
    end to end: 63 -> 80 photos/s). Without one, spinning is faster (the model alone: 960 -> 590 crops/s
    when threads sleep), so only detecting runs call this. OpenMP reads the setting when torch loads:
    once torch is imported it is too late, and a value the user set is kept.
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return True



def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Make glibc malloc keep freed blocks below `limit` bytes for reuse instead of unmapping them.

    By default glibc serves large requests (above a dynamic threshold of at most 32 MiB) with fresh
    mmap and returns them on free, so every forward pass page-faults its activation maps in again:
    at batch 64 that more than halves SSR-Net's CPU inference speed. The cost: a process keeps its
    peak heap instead of shrinking after it. Returns False where it does not apply (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))
    except (OSError, AttributeError):
        return False


def select_device(name: str = "auto") -> torch.device:
    import torch  # here: the ONNX path never imports torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AgeCliError(f"--device {name}: not a device (examples: cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AgeCliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device
