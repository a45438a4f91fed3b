"""Training augmentation on cached crops (agecli/data/cache.py)."""

import numpy as np
import torch

from agecli.data.cache import Batches, random_affine_flip, random_photometric, random_turn
from agecli.data.preprocess import Preprocess

PRE = Preprocess(input_size=24, crop_size=28, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _crops(n=32, size=28):
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, size=(n, 1, 1, 3))
    noise = rng.integers(-30, 30, size=(n, size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _batch(augment, seed=0, epoch=0):
    b = Batches(_crops(), np.arange(32), np.zeros(32), 32, preprocess=PRE, augment=augment, shuffle=True, seed=seed)
    b.set_epoch(epoch)
    return next(iter(b))[0]


def test_photo_augmentation_is_reproducible_and_varies_by_epoch():
    assert torch.equal(_batch("photo"), _batch("photo"))
    assert not torch.equal(_batch("photo"), _batch("photo", epoch=1))


def test_photo_augmentation_changes_colour_and_level_but_stays_in_range():
    photo, plain = _batch("photo"), _batch("mvloss")
    assert photo.shape == plain.shape == (32, 3, 24, 24)
    assert photo.min() >= -1.0 - 1e-6 and photo.max() <= 1.0 + 1e-6
    # brightness and contrast vary per image: the spread of image means and of image contrasts grows
    assert photo.mean((1, 2, 3)).std() > 1.2 * plain.mean((1, 2, 3)).std()


def test_photometric_grey_and_low_resolution():
    x = torch.rand(64, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = random_photometric(x, g, strength=0.0, p_gray=1.0, p_lowres=0.0)
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    blurred = random_photometric(x, torch.Generator().manual_seed(0), strength=0.0, p_gray=0.0, p_lowres=1.0)
    # a downscale and back removes pixel-level detail: neighbours become alike
    assert (blurred.diff(dim=3).abs().mean()) < 0.5 * x.diff(dim=3).abs().mean()


def test_affine_scale_zooms():
    square = torch.zeros(16, 1, 33, 33)
    square[:, :, 8:25, 8:25] = 1.0
    g = torch.Generator().manual_seed(0)
    same = random_affine_flip(square, g, p=1.0, degrees=0.0, shear=0.0)
    zoomed = random_affine_flip(square, torch.Generator().manual_seed(0), p=1.0, degrees=0.0, shear=0.0, scale=0.4)
    assert torch.allclose(same.sum((1, 2, 3)), square.sum((1, 2, 3)), rtol=0.05)
    areas = zoomed.sum((1, 2, 3)) / square.sum((1, 2, 3))
    assert areas.max() > 1.3 and areas.min() < 0.7


def test_a_turned_face_recedes_on_one_side_only():
    white = torch.ones(16, 1, 40, 40)
    turned = random_turn(white, torch.Generator().manual_seed(0), p=1.0, strength=0.3)
    for image in turned[:, 0]:
        left, right = image[[0, -1]][:, :4], image[[0, -1]][:, -4:]  # the corners of the top and bottom rows
        assert bool((left < 0.5).any()) != bool((right < 0.5).any())  # black corners on the far side only
        assert image[20, 18:22].min() > 0.99  # the middle of the face stays where it was
    assert torch.equal(random_turn(white, torch.Generator().manual_seed(0), p=0.0), white)


def test_photo_turn_augmentation_is_reproducible_and_differs_from_photo():
    assert torch.equal(_batch("photo_turn"), _batch("photo_turn"))
    assert not torch.equal(_batch("photo_turn"), _batch("photo"))
