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


@pytest.fixture(scope="session")
def port_checkpoint(tmp_path_factory) -> Path:
    """The SSR-Net PyTorch port's checkpoint imported once per session: a real trained model, and a BGR one."""
    if not SHARED.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    from agecli.modelio.ssrnet_port import import_ssrnet_port

    out = tmp_path_factory.mktemp("port") / "port.pt"
    import_ssrnet_port(SHARED.resolve() / "reference" / "ssrnet_pytorch_port_megaage.pth", out)
    return out
