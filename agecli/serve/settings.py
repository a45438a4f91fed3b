"""What each server process needs to build the app, and the parsing of the sizes given on the command line."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import ClassVar, Optional

from agecli.data.imageio import MAX_PIXELS
from agecli.errors import AgeCliError

DEFAULT_MAX_BYTES = 20_000_000  # a 50-megapixel JPEG is about 15 MB
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "k": 10**3, "m": 10**6, "g": 10**9,
              "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass
class ServeSettings:
    """What each server process needs to build the app; travels to `--workers` processes as JSON."""

    ENV: ClassVar[str] = "AGECLI_SERVE_SETTINGS"
    model: Optional[str] = None  # None: the built-in model
    detector: str = "default"
    device: str = "auto"
    token: Optional[str] = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = MAX_PIXELS

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeSettings":
        return cls(**json.loads(text))


def parse_size(text: str, option: str = "--max-bytes") -> int:
    """'20MB', '500k', '2MiB' or a plain number of bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and SIZE_UNITS.get(match.group(2).lower())
    if not match or unit is None or float(match.group(1)) * unit < 1:
        raise AgeCliError(f"{option} {text}: expected a size such as 20MB, 500kB, 2MiB or 1000000")
    return int(float(match.group(1)) * unit)


def max_pixels_from(megapixels: float) -> int:
    if not 0 < megapixels <= MAX_PIXELS / 1e6:
        raise AgeCliError(f"--max-megapixels {megapixels:g}: expected more than 0 and at most "
                          f"{MAX_PIXELS / 1e6:g} (agecli never decodes larger images)")
    return int(megapixels * 1e6)
