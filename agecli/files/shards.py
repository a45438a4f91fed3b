"""Splitting one job over machines: `--shard I/N`, numbered from 1 like a job array (`--array=1-N`).

`age lopo` shards its folds and `age predict` its photos the same way: item k of the stable sorted list
goes to shard k % N + 1, so the shards are disjoint, together complete and balanced.
"""

from __future__ import annotations

import re
from typing import Sequence, TypeVar

from agecli.errors import AgeCliError

T = TypeVar("T")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'2/4' -> (2, 4), the second of four shards; numbered from 1 like a job array `--array=1-4`."""
    if spec is None or not spec.strip():
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m:
        raise AgeCliError(f"shard '{spec}': expected I/N, like 1/4 (the first of four shards)")
    return check_shard((int(m[1]), int(m[2])))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if n < 1 or not 1 <= i <= n:
        last = max(n, 1)
        raise AgeCliError(f"shard {i}/{n}: I must be between 1 and N (shards of a {last}-way split: 1/{last} ... {last}/{last})")
    return i, n


def take_shard(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """The items of one shard: item k goes to shard k % N + 1."""
    if shard is None:
        return list(items)
    i, n = check_shard(shard)
    return [item for k, item in enumerate(items) if k % n == i - 1]
