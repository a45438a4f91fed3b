"""Shared pytest fixtures."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """The read-only shared folder (real data lives in shared/data); skip when this machine lacks it."""
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    return SHARED.resolve()
