import math

import numpy as np
import pytest
import torch

from agecli.metrics import (
    age_metrics,
    cumulative_accuracy,
    mae,
    mae_by_age_group,
    paired_mae_difference,
)
from agecli.training.losses import (
    MeanVarianceLoss,
    age_to_class,
    create_loss,
    distribution_moments,
)


def test_mae_and_ca_hand_worked():
    pred = [10.0, 22.5, 30.0, 41.0]
    true = [12.0, 20.0, 30.0, 46.0]
    # errors 2, 2.5, 0, 5
    assert mae(pred, true) == pytest.approx(9.5 / 4)
    assert cumulative_accuracy(pred, true, 3) == pytest.approx(3 / 4)
    # CA(5) counts |e| < 5 strictly: the error of exactly 5 does not count
    assert cumulative_accuracy(pred, true, 5) == pytest.approx(3 / 4)
    assert cumulative_accuracy(pred, true, 5.01) == pytest.approx(1.0)


def test_ca_uses_unrounded_prediction():
    # 2.9 away is inside CA(3); rounding the prediction first (33 vs 30) would make it 3 and fail
    assert cumulative_accuracy([32.9], [30.0], 3) == 1.0


def test_age_metrics_and_groups():
    m = age_metrics([5, 15, 75], [7, 15, 70])
    assert m["n"] == 3 and m["mae"] == pytest.approx(7 / 3)
    groups = {g["group"]: g for g in mae_by_age_group([5, 15, 75], [7, 15, 70])}
    assert set(groups) == {"0-9", "10-19", "70+"}
    assert groups["0-9"]["mae"] == 2 and groups["70+"]["mae"] == 5
    assert "within_1" not in groups["0-9"]  # no spread given
    assert math.isnan(mae([], []))
    # with spreads, each group's coverage: errors 2, 1 (0-9) against spreads 1, 1; error 5 (70+) against 3
    groups = {g["group"]: g for g in mae_by_age_group([5, 7, 75], [7, 6, 70], spread=[1, 1, 3])}
    assert (groups["0-9"]["within_1"], groups["0-9"]["within_2"]) == (0.5, 1.0)
    assert (groups["70+"]["within_1"], groups["70+"]["within_2"]) == (0.0, 1.0)


def test_mean_variance_loss_matches_hand_computation():
    ages = torch.tensor([0.0, 1.0, 2.0])
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    target = torch.tensor([2.0])
    # p = (.2,.5,.3): mean = 0.5 + 0.6 = 1.1; var = .2*1.21 + .5*.01 + .3*.81 = 0.49
    mean, var = distribution_moments(logits, ages)
    assert mean.item() == pytest.approx(1.1)
    assert var.item() == pytest.approx(0.49)
    softmax = -math.log(0.3)
    mean_term = (1.1 - 2.0) ** 2 / 2
    expected = softmax + 0.2 * mean_term + 0.05 * 0.49
    loss = MeanVarianceLoss(0.2, 0.05)({"logits": logits, "age": mean}, target, ages)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_softmax_and_regression_losses():
    ages = torch.arange(5.0)
    logits = torch.zeros(2, 5)
    assert create_loss("softmax")({"logits": logits}, torch.tensor([1.0, 3.0]), ages).item() == pytest.approx(math.log(5))
    out = {"age": torch.tensor([1.0, 4.0])}
    assert create_loss("l1")(out, torch.tensor([2.0, 2.0])).item() == pytest.approx(1.5)
    assert create_loss("mse")(out, torch.tensor([2.0, 2.0])).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="distribution head"):
        create_loss("mean_variance")(out, torch.tensor([2.0, 2.0]), ages)


def test_age_to_class_clamps_out_of_range():
    ages = torch.arange(10.0, 15.0)
    assert age_to_class(torch.tensor([9.0, 12.4, 12.6, 99.0]), ages).tolist() == [0, 2, 3, 4]


def test_paired_mae_difference_tells_a_real_gain_from_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 6, 1500)
    same = paired_mae_difference(base, base)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    # every face 0.5 years better: the interval is tight around -0.5 and excludes 0
    better = paired_mae_difference(np.sign(base) * np.maximum(np.abs(base) - 0.5, 0), base)
    assert better["high"] < 0 and better["low"] <= better["difference"] <= better["high"]
    # independent noise of the same size: the difference is small and its interval spans 0
    other = paired_mae_difference(rng.normal(0, 6, 1500), base)
    assert other["low"] < 0 < other["high"] and other["n"] == 1500
    with pytest.raises(ValueError):
        paired_mae_difference(base[:10], base)
