"""small_resnet: the compact ResNet with a softmax-over-ages head."""

from __future__ import annotations

import pytest
import torch

from agecli.errors import AgeCliError
from agecli.modelio.checkpoint import load_checkpoint
from agecli.models import create_model
from tests.helpers import age_main, labelled_faces


@pytest.mark.parametrize("size", [64, 72])
def test_outputs_are_a_distribution_over_ages_at_any_input_size(size):
    model = create_model("small_resnet", age_min=0, age_max=69).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out["logits"].shape == (3, 70) and out["age"].shape == (3,)
    torch.testing.assert_close(out["age"], (out["logits"].softmax(1) * model.ages).sum(1))
    assert ((out["age"] >= 0) & (out["age"] <= 69)).all()


def test_gradients_reach_every_parameter():
    model = create_model("small_resnet", widths=[8, 16, 32], blocks=[1, 2, 1], stem=8)
    for block in model.modules():  # each block's residual branch starts at zero (by design); open it
        if hasattr(block, "bn2"):
            torch.nn.init.ones_(block.bn2.weight)
    model(torch.randn(4, 3, 64, 64))["age"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_widths_and_blocks_set_the_layout():
    small = create_model("small_resnet", widths=[8, 16], blocks=[1, 1], stem=8)
    deeper = create_model("small_resnet", widths=[8, 16], blocks=[2, 2], stem=8)
    assert sum(p.numel() for p in deeper.parameters()) > sum(p.numel() for p in small.parameters())
    assert sum(p.numel() for p in create_model("small_resnet").parameters()) < 1_000_000  # "small": fits in a few MB
    with pytest.raises(AgeCliError, match="one entry per stage"):
        create_model("small_resnet", widths=[8, 16], blocks=[1])


def test_cli_trains_it_from_a_preset_with_one_model_argument_overridden(tmp_path):
    faces = labelled_faces(tmp_path / "faces", 30)
    assert age_main("prepare", "csv", "--root", faces, "--out", tmp_path / "prep", cwd=tmp_path).returncode == 0
    r = age_main("train", "small_resnet", "--preset", "utkface", "--data", tmp_path / "prep", "--epochs", "1",
                "--set", "data.cache_size=64", "--set", "model.kwargs.widths=[8, 16]",
                "--set", "model.kwargs.blocks=[1, 1]", "--set", "model.kwargs.stem=8",
                "--out", "runs/train/sres", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    state = load_checkpoint(tmp_path / "runs" / "train" / "sres" / "best.pt")
    assert state["model"]["name"] == "small_resnet"
    assert state["model"]["kwargs"] == {"age_min": 0, "age_max": 100, "dropout": 0.2, "widths": [8, 16],
                                        "blocks": [1, 1], "stem": 8}
