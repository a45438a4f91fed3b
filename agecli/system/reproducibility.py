"""Reproducible runs: the one seed limit, seeding every generator, and the library versions written beside each run."""

from __future__ import annotations

import platform
import random

import numpy as np

SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit: the largest seed any option or preset may give


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (SEED_MAX + 1))
    torch.manual_seed(seed)


def library_versions() -> dict[str, str]:
    """Versions recorded beside every run, so a result can be reproduced."""
    import agecli

    versions = {"python": platform.python_version(), "agecli": agecli.__version__, "platform": platform.platform()}
    for module in ("torch", "torchvision", "numpy", "cv2", "PIL", "onnxruntime"):
        try:
            mod = __import__(module)
            versions[module] = str(getattr(mod, "__version__", "?"))  # plain str: weights_only loading refuses TorchVersion
        except ImportError:
            continue
    try:
        import torch

        versions["cuda"] = torch.version.cuda or "none"
    except ImportError:
        pass
    return versions

