"""Spread calibration: a temperature fitted on validation makes ±1 / ±2 spreads cover 68% / 95% of errors."""

import numpy as np
import torch

from agecli.models import create_model
from agecli.models.base import distribution_stats
from agecli.training.calibration import coverage, fit_temperature, in_band, shares_by_temperature


def _overconfident(n=4000, seed=0):
    """Gaussian age distributions of sd 3 whose true errors have sd 5: spreads too narrow by 5/3."""
    rng = np.random.default_rng(seed)
    ages = torch.arange(0, 101.0)
    centre = rng.uniform(20, 80, n)
    logits = -((ages.numpy()[None, :] - centre[:, None]) ** 2) / (2 * 3.0**2)
    target = centre + rng.normal(0, 5.0, n)
    return logits, ages, centre, target


def test_fitted_temperature_widens_an_overconfident_spread_to_a_gaussian_coverage():
    logits, ages, pred, target = _overconfident()
    fitted = fit_temperature(logits, ages, pred, target)
    assert fitted["before"][0] < 0.5  # sd 3 covers about 45% of errors of sd 5
    assert fitted["temperature"] > 2  # a Gaussian's sd grows as sqrt(T): (5/3)^2 = 2.8
    assert abs(fitted["after"][0] - 0.683) < 0.03 and abs(fitted["after"][1] - 0.954) < 0.03
    # and it generalises: fresh faces from the same model are covered alike
    logits2, _, pred2, target2 = _overconfident(seed=1)
    spread = distribution_stats(torch.as_tensor(logits2, dtype=torch.float32) / fitted["temperature"], ages)[1]
    within1, within2 = coverage(np.abs(pred2 - target2), spread.numpy())
    assert abs(within1 - 0.683) < 0.03 and abs(within2 - 0.954) < 0.03


def test_ensemble_spread_temperature_widens_the_spread_but_keeps_the_age():
    torch.manual_seed(0)
    members = [{"name": "small_resnet", "kwargs": {}}]
    plain = create_model("ensemble", members=members, point="median").eval()
    tempered = create_model("ensemble", members=members, point="median", spread_temperature=2.0).eval()
    tempered.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x), tempered(x)
    assert torch.equal(a["age"], b["age"])
    assert (distribution_stats(b["logits"], tempered.ages)[1] > distribution_stats(a["logits"], plain.ages)[1]).all()



def test_heavy_tailed_errors_keep_the_two_spread_share_near_95_percent():
    """Errors with a Student-t tail (df 4), as real faces have: one temperature cannot match both shares, and
    the fit must not give up the ±2 share (whose sampling noise is half the ±1 share's) to win the ±1 one."""
    rng = np.random.default_rng(0)
    ages, n = torch.arange(0, 101.0), 6000
    centre = rng.uniform(20, 80, n)
    logits = -((ages.numpy()[None, :] - centre[:, None]) ** 2) / (2 * 3.0**2)
    target = centre + 3.0 * rng.standard_t(4, n)
    within1, within2 = fit_temperature(logits, ages, centre, target)["after"]
    assert within2 > 0.922  # an unweighted fit stops at 0.916
    assert abs(within1 - 0.683) < 0.05


def test_the_temperatures_in_band_are_those_where_both_shares_meet_the_target():
    logits, ages, pred, target = _overconfident()
    band = in_band(shares_by_temperature(logits, ages, pred, target))
    assert band and 1.0 not in band  # too narrow untempered; a range of T around (5/3)^2 covers like a Gaussian
    assert fit_temperature(logits, ages, pred, target)["temperature"] in band
    for t in (min(band), max(band)):
        spread = distribution_stats(torch.as_tensor(logits, dtype=torch.float32) / t, ages)[1].numpy()
        within1, within2 = coverage(np.abs(pred - target), spread)
        assert abs(within1 - 0.68) <= 0.05 + 1e-9 and abs(within2 - 0.95) <= 0.03 + 1e-9


def test_no_temperature_is_in_band_for_errors_lighter_tailed_than_the_spreads():
    """Errors uniform on ±1.2 sd: any T that puts 68% within ±1 spread puts all of them within ±2."""
    logits, ages, pred, _ = _overconfident()
    target = pred + np.random.default_rng(2).uniform(-1.2, 1.2, len(pred)) * 5.0
    shares = shares_by_temperature(logits, ages, pred, target)
    assert in_band(shares) == []
    assert in_band(shares, band={1: (0.68, 0.05), 2: (0.95, 0.06)})  # a looser ±2


def test_with_sources_the_temperature_puts_each_one_in_band_where_one_t_can():
    """A large source whose errors are as wide as its spreads allow, and a small one with narrower errors: the
    pooled best T follows the large one and leaves the small one too wide; a T that serves both is chosen."""
    rng = np.random.default_rng(0)
    ages = torch.arange(0, 101.0)
    logits, _, centre, _ = _overconfident(n=3000)
    target = centre + rng.normal(0, 5.0, 3000) * np.r_[np.ones(2700), np.full(300, 0.88)]
    sources = np.array(["big"] * 2700 + ["small"] * 300)
    pooled = fit_temperature(logits, ages, centre, target)
    fitted = fit_temperature(logits, ages, centre, target, sources)
    small = shares_by_temperature(logits[2700:], ages, centre[2700:], target[2700:])
    big = shares_by_temperature(logits[:2700], ages, centre[:2700], target[:2700])
    assert pooled["temperature"] not in in_band(small)  # the pooled fit leaves the small source outside
    assert fitted["sources_in_band"] and fitted["temperature"] in set(in_band(small)) & set(in_band(big))
