"""From the memory-mapped crop cache to network inputs: batching, augmentation, normalisation.

Training reads uint8 crops straight from crops_<S>.npy (no JPEG decoding per step). Only the rows of a
batch are touched, so memory stays flat however large the dataset is. Augmentation runs on whole
batches as tensor operations, which keeps a 2-core CPU busy with the model rather than with Python loops.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError


def open_crops(prepared: Path, size: int) -> np.ndarray:
    from agecli.data.prepare import crop_path, ensure_cache, prepared_align

    path = crop_path(prepared, size, prepared_align(prepared))  # aligned crops have their own file
    if not path.is_file():
        ensure_cache(prepared, size)
    try:
        crops = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as err:  # numpy's words for a truncated or foreign .npy
        raise AgeCliError(f"{path}: truncated or corrupt crop cache ({str(err) or type(err).__name__}); "
                          f"run age prepare again into a new folder") from None
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
        raise AgeCliError(f"{path}: not a crop cache of {size}-px RGB crops (found {crops.dtype} {crops.shape}); "
                          f"run age prepare again into a new folder")
    return crops


class StackedCrops:
    """Several crop caches read as one array: row offsets[i] + r is row r of parts[i].

    A run over several prepared datasets indexes all their faces with one row number, while each
    dataset's cache stays its own memory map (nothing is copied)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:])
        self.dtype = self.parts[0].dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim == 0:
            return self[rows.reshape(1)][0]
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for i, part in enumerate(self.parts):
            mine = part_of == i
            if mine.any():
                out[mine] = part[rows[mine] - self.offsets[i]]
        return out


def to_model_input(batch_uint8: torch.Tensor, mean, std, channel_order: str = "RGB") -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float, normalised in the channel order the model expects."""
    return normalise(to_unit_float(batch_uint8), mean, std, channel_order)


def to_unit_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return batch_uint8.permute(0, 3, 1, 2).float().div_(255.0)


def normalise(x: torch.Tensor, mean, std, channel_order: str = "RGB") -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> normalised, in the channel order the model expects."""
    if channel_order == "BGR":
        x = x.flip(1)
    mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def center_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, C) -> centre (N, size, size, C)."""
    h, w = batch.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return batch[:, top: top + size, left: left + size]


def random_crop(batch: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    h, w = batch.shape[1:3]
    if h == size and w == size:
        return batch
    tops = torch.randint(0, h - size + 1, (len(batch),), generator=generator)
    lefts = torch.randint(0, w - size + 1, (len(batch),), generator=generator)
    return torch.stack([img[top: top + size, left: left + size]
                        for img, top, left in zip(batch, tops.tolist(), lefts.tolist())])


def random_affine_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                       degrees: float = 10.0, shear: float = 16.0, scale: float = 0.0) -> torch.Tensor:
    """With probability p per image: rotation in +-degrees, shear in +-shear degrees and a horizontal flip;
    with `scale`, a zoom by a factor in [1 - scale, 1 + scale] as well (a detector's box varies in size)."""
    n = x.shape[0]
    apply = torch.rand(n, generator=generator) < p
    if not apply.any():
        return x
    angle = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * degrees)
    shear_x = torch.deg2rad((torch.rand(n, generator=generator) * 2 - 1) * shear)
    zoom = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    flip = torch.where(apply, -1.0, 1.0)
    cos, sin, tan = torch.cos(angle) / zoom, torch.sin(angle) / zoom, torch.tan(shear_x)
    # rotation @ shear @ flip, as a 2x3 sampling matrix in normalised coordinates
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = cos * tan - sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = sin * tan + cos
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3)
    theta = torch.where(apply.view(n, 1, 1), theta, identity).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 0.5."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)


PHOTO_AUGMENTS = ("photo", "photo_turn")  # data.augment values that imitate photos: crop, colour, affine


def random_turn(x: torch.Tensor, generator: torch.Generator, p: float = 0.5, strength: float = 0.3) -> torch.Tensor:
    """With probability p per image, a perspective turn about the vertical axis: one side of the face recedes,
    narrower and shorter, as a head turned from the camera looks (UTKFace's chips are mostly frontal; photos
    are not). Each image samples (x, y) / (1 - k x) for k in [-strength, strength], in normalised coordinates."""
    n, _, h, w = x.shape
    apply = torch.rand(n, generator=generator) < p
    k = (torch.rand(n, generator=generator) * 2 - 1) * strength * apply
    if not apply.any():
        return x
    rows, cols = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h), torch.linspace(-1 + 1 / w, 1 - 1 / w, w),
                                indexing="ij")
    depth = 1 - k.view(n, 1, 1) * cols
    grid = torch.stack([cols / depth, rows / depth], dim=-1).to(x.device, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_photometric(x: torch.Tensor, generator: torch.Generator, strength: float = 0.3,
                       p_gray: float = 0.1, p_lowres: float = 0.3) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: per image, brightness, contrast and saturation scaled by factors in
    [1 - strength, 1 + strength]; with p_gray a grey image, with p_lowres a 0.35-0.8x downscale and back
    (photos of small or compressed faces are blurrier than dataset chips)."""
    n, _, h, w = x.shape

    def factors() -> torch.Tensor:
        return (1.0 + (torch.rand(n, generator=generator) * 2 - 1) * strength).view(n, 1, 1, 1).to(x)

    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

    def grey(images: torch.Tensor) -> torch.Tensor:
        return (images * weights).sum(1, keepdim=True)

    x = x * factors()                                  # brightness
    level = grey(x).mean((2, 3), keepdim=True)
    x = (x - level) * factors() + level                # contrast
    g = grey(x)
    x = (x - g) * factors() + g                        # saturation
    to_grey = (torch.rand(n, generator=generator) < p_gray).view(n, 1, 1, 1).to(x.device)
    x = torch.where(to_grey, grey(x).expand_as(x), x)
    low = torch.rand(n, generator=generator) < p_lowres
    if low.any():
        side = int(round(min(h, w) * (0.35 + 0.45 * float(torch.rand(1, generator=generator)))))
        small = F.interpolate(x[low.to(x.device)], size=(side, side), mode="area")
        x[low.to(x.device)] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0)


class Batches:
    """Iterates (inputs, ages) over rows of a crop cache.

    rows: cache rows to use; ages: their labels. With `shuffle`, the order comes from a generator seeded
    by (seed, epoch), so a resumed run sees exactly the batches an uninterrupted run would have seen.
    `weights` (one per row, with `shuffle`): each epoch instead draws len(rows) rows with replacement,
    row i with probability proportional to weights[i], from the same (seed, epoch) seed.
    `rank`/`world` give each distributed process its own equal share.
    """

    def __init__(self, crops: np.ndarray, rows, ages, batch_size: int, *, preprocess: Preprocess,
                 augment: str = "none", shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world: int = 1, device: str | torch.device = "cpu", channels_last: bool = False,
                 weights=None):
        self.crops = crops
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(crops)):
            bad = int(self.rows.max() if self.rows.max() >= len(crops) else self.rows.min())
            raise AgeCliError(f"manifest cache_row {bad} is out of range: the crop cache holds {len(crops)} rows "
                              f"(0-{len(crops) - 1}); the manifest and crops_*.npy do not belong together")
        self.ages = np.asarray(ages, dtype=np.float32)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and (self.weights.shape != self.rows.shape or not (self.weights > 0).all()):
            raise AgeCliError(f"sampling weights: need one positive weight per row ({len(self.rows)} rows)")
        self.batch_size = batch_size
        self.input_size = preprocess.input_size
        self.preprocess = preprocess
        self.augment = augment if shuffle else "none"
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world = rank, world
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.rows)
        if self.shuffle and self.weights is not None:
            rng = np.random.default_rng(self.seed * 100_003 + self.epoch)
            order = rng.choice(n, size=n, replace=True, p=self.weights / self.weights.sum())
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n)
        if self.world > 1:  # pad by wrapping so every rank gets the same number of batches
            per_rank = math.ceil(n / self.world)
            order = np.resize(order, per_rank * self.world)[self.rank::self.world]
        return order

    def drawn_rows(self) -> np.ndarray:
        """The cache rows this process reads in the current epoch, in order."""
        return self.rows[self._order()]

    def __len__(self) -> int:
        n = math.ceil(len(self.rows) / self.world)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, ages, _ in self.with_rows():
            yield x, ages

    def with_rows(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """(inputs, ages, the cache rows they come from), batch by batch: what the training loop reads to
        treat faces by where they come from (distill.sources)."""
        order = self._order()
        # augmentation draws differ per rank, as each rank augments different images
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch + 1 + self.rank * 1_000_003)
        for b in range(len(self)):
            idx = order[b * self.batch_size: (b + 1) * self.batch_size]
            rows = self.rows[idx]
            sort = np.argsort(rows)  # sequential reads from the memory map are faster
            images = torch.from_numpy(np.ascontiguousarray(self.crops[rows[sort]]))
            ages = torch.from_numpy(self.ages[idx][sort])
            yield self._inputs(images, g), ages.to(self.device, non_blocking=True), rows[sort]

    def _inputs(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.augment == "mvloss" or self.augment in PHOTO_AUGMENTS:
            images = random_crop(images, self.input_size, g)
        elif images.shape[1] != self.input_size:
            images = center_crop(images, self.input_size)
        p = self.preprocess
        x = to_unit_float(images.to(self.device, non_blocking=True))
        if self.augment in PHOTO_AUGMENTS:
            x = random_photometric(x, g)
        if self.augment == "photo_turn":
            x = random_turn(x, g)
        x = normalise(x, p.mean, p.std, p.channel_order)
        if self.augment == "mvloss":
            x = random_affine_flip(x, g)
        elif self.augment in PHOTO_AUGMENTS:  # affine on 80%; the extra flip: each flipped with p=0.5
            x = random_flip(random_affine_flip(x, g, p=0.8, scale=0.1), g)
        elif self.augment == "flip":
            x = random_flip(x, g)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
