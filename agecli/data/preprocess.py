"""What a model expects between a face box and its input tensor: one frozen `Preprocess`, kept with the weights.

    photo --crop_face(box, crop_size, margin, shift)--> crop_size x crop_size uint8 RGB (what `age prepare` caches)
          (align "five_point": crop_face warps the face's five landmarks onto agecli.data.crops.FIVE_POINT_TEMPLATE)
          --centre crop--> input_size x input_size --channel_order, (x / 255 - mean) / std--> the network

A checkpoint stores `to_dict()`, plain data that `torch.load(weights_only=True)` reads; `from_dict` reads
every layout agecli has written. Export metadata and the serve card publish `public_dict()`, their
unchanged layout. This module imports neither torch nor OpenCV, because the ONNX path uses it.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields
from typing import Mapping

from agecli.errors import AgeCliError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE, MAX_SIDE = 16, 1024  # pixels of a crop or network input: 4x the largest shipped preset (256)

# Crop geometry per detector, so that detect + crop_face on a full photo frames the
# face like a UTKFace chip (the training data). Measured on 200 UTKFace chips padded
# into a black canvas, and cross-checked with RetinaFace's eye/mouth landmarks on
# MORPH and FairFace photos (see benchmarks/detectors.py --margins):
# * RetinaFace boxes run from hairline to chin and are as tall as the chip or a bit
#   taller (needed margin -0.04..-0.02), centred ~8% of the side above the chip centre.
# * Haar boxes are square, about the chip's size (needed margin -0.02..+0.01), centred
#   ~9% of the side above the chip centre.
# * YuNet was not measured (no model file here); it is trained on the same data as
#   RetinaFace (WIDER FACE) and draws similar boxes, so it uses the same numbers.
MARGINS = {"retinaface": -0.03, "yunet": -0.03, "haar": 0.0}
SHIFTS = {"retinaface": 0.08, "yunet": 0.08, "haar": 0.09}
DEFAULT_MARGIN = MARGINS["retinaface"]
DEFAULT_SHIFT = SHIFTS["retinaface"]

# Names older checkpoints (format 1 and 2) and export metadata use: `size` is the network's side, `cache_size`
# the crop's.
LEGACY_NAMES = {"size": "input_size", "cache_size": "crop_size"}
# What a stored dict without these keys meant before this type existed (the old checkpoint defaults had margin
# 0.4, and predict read a missing shift as 0), so an old file frames faces exactly as it did.
LEGACY_MISSING = {"margin": 0.4, "shift": 0.0}
# how a face is cut, with how to say it: the box's square (margin, shift), or turned upright on its five landmarks
ALIGNS = {"none": "cut from their boxes", "five_point": "aligned on five landmarks"}


@dataclass(frozen=True)
class Preprocess:
    input_size: int = 64  # side of the square the network sees: the centre of the crop
    crop_size: int = 0  # side of the face crop cut from the photo and cached by prepare (0: input_size)
    mean: tuple[float, ...] = IMAGENET_MEAN  # per channel, in channel_order, on pixels scaled to 0-1
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "RGB"  # the order the network sees: RGB or BGR
    margin: float = DEFAULT_MARGIN  # crop geometry (agecli.data.crops.square_box) of the training faces
    shift: float = DEFAULT_SHIFT
    detector: str = ""  # the detector those faces were cut with ("": ready-made face chips)
    age_min: float = 0.0  # the ages the model predicts
    age_max: float = 101.0
    align: str = "none"  # one of ALIGNS; "none" (the box crop) is what every file without the key meant

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the values once, here
        set_(self, "input_size", int(self.input_size))
        set_(self, "crop_size", int(self.crop_size or 0) or self.input_size)
        for name in ("mean", "std"):
            set_(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("margin", "shift", "age_min", "age_max"):
            set_(self, name, float(getattr(self, name)))
        set_(self, "detector", str(self.detector or ""))
        if self.align not in ALIGNS:
            raise AgeCliError(f"preprocess align '{self.align}' is not one of: {', '.join(ALIGNS)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise AgeCliError(f"preprocess channel_order '{self.channel_order}' is not RGB or BGR")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise AgeCliError("preprocess mean and std need three values each")
        if not 0 < self.input_size <= self.crop_size:
            raise AgeCliError(f"preprocess input_size {self.input_size} must be positive and at most crop_size "
                              f"{self.crop_size}")

    def to_dict(self) -> dict:
        """Plain data, as checkpoints store it."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, stored: Mapping, strict: bool = False) -> Preprocess:
        """A stored dict of any agecli layout: legacy names are mapped, keys an old file lacks take the value
        they had then, and unknown keys are ignored (old files may hold them) unless `strict`."""
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in stored.items():
            name = LEGACY_NAMES.get(key, key)
            if name in known:
                values[name] = value
            elif strict:
                hint = difflib.get_close_matches(key, [*known, *LEGACY_NAMES], n=1)
                raise AgeCliError(f"unknown preprocess key '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        return cls(**{**LEGACY_MISSING, **values})

    def public_dict(self) -> dict:
        """The layout export metadata and the serve card have always published, for their consumers."""
        values = self.to_dict()
        if values["align"] == "none":  # the layout unchanged for the box crop; an aligned model must say so
            del values["align"]
        return {"size": values.pop("input_size"), "cache_size": values.pop("crop_size"),
                **{k: v for k, v in values.items() if k != "detector"}}
