"""SSR-Net and SSRNetDist: shapes, size, gradients, export. Faithfulness to the port is in test_port.py."""

import importlib.util
import json

import pytest
import torch

from agecli.errors import AgeCliError
from agecli.models import create_model
from agecli.models.ssrnet import SSRNet, SSRNetDist


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("batch", [1, 5])
def test_ssrnet_output_shape_and_range(batch):
    torch.manual_seed(0)
    model = SSRNet().eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 64, 64))
    assert set(out) == {"age"}
    assert out["age"].shape == (batch,)
    assert torch.isfinite(out["age"]).all()
    # Not a hard bound of the formulation (p is a ReLU, not a softmax), but what a fresh net gives.
    assert ((out["age"] >= 0) & (out["age"] <= model.V)).all()


def test_forward_features_are_per_stage_coarse_to_fine():
    feats = SSRNet().eval().forward_features(torch.randn(2, 3, 64, 64))
    assert [(a.shape, b.shape) for a, b in feats] == [
        ((2, 32, 8, 8), (2, 16, 8, 8)),
        ((2, 32, 16, 16), (2, 16, 16, 16)),
        ((2, 32, 32, 32), (2, 16, 32, 32)),
    ]


def test_parameter_count_is_compact():
    # The paper's selling point: ~0.3 MB of weights. The released architecture has 44,871.
    assert 40_000 <= n_params(SSRNet()) <= 50_000


def test_readable_parameter_names():
    names = {n for n, _ in SSRNet().named_parameters()}
    for expected in ("backbone.stream_a.block1.conv.weight", "backbone.stream_b.block4.bn.bias",
                     "fuse.0.delta.weight", "fuse.2.eta.bias", "fuse.1.p.weight"):
        assert expected in names


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = SSRNet().train()
    age = model(torch.randn(4, 3, 64, 64))["age"]
    ((age - 30.0) ** 2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model.backbone.stream_a.block1.conv.weight.grad.abs().sum() > 0
    assert model.backbone.stream_b.block1.conv.weight.grad.abs().sum() > 0


def test_kwargs_round_trip_through_json_and_registry():
    kwargs = {"stage_num": [3, 3, 3], "lambda_local": 1.0, "lambda_d": 1.0, "V": 101.0, "image_size": 64}
    model = create_model("ssrnet", **json.loads(json.dumps(kwargs)))
    assert isinstance(model, SSRNet)
    assert isinstance(create_model("ssrnet_dist", age_min=0, age_max=100), SSRNetDist)


def test_other_input_sizes_and_bad_size():
    out = SSRNet(image_size=96).eval()(torch.randn(2, 3, 96, 96))
    assert out["age"].shape == (2,)
    with pytest.raises(AgeCliError, match="divisible by 16"):
        SSRNet(image_size=60)


@pytest.mark.parametrize("batch", [1, 5])
def test_dist_outputs_and_ages_buffer(batch):
    model = SSRNetDist(age_min=0, age_max=100).eval()
    assert torch.equal(model.ages, torch.arange(0, 101, dtype=torch.float32))
    assert "ages" in model.state_dict()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, 64, 64))
    assert out["logits"].shape == (batch, 101)
    assert out["age"].shape == (batch,)
    expected = (out["logits"].softmax(1) * model.ages).sum(1)
    assert torch.allclose(out["age"], expected)
    assert ((out["age"] >= 0) & (out["age"] <= 100)).all()  # an expectation stays inside the range


def test_dist_custom_range_and_size():
    model = SSRNetDist(age_min=16, age_max=77, dropout=0.3)
    assert model.ages[0] == 16 and model.ages[-1] == 77 and len(model.ages) == 62
    bytes_ = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert bytes_ < 5 * 2**20
    with pytest.raises(AgeCliError):
        SSRNetDist(age_min=50, age_max=10)


def test_dist_gradients():
    model = SSRNetDist().train()
    out = model(torch.randn(3, 3, 64, 64))
    torch.nn.functional.cross_entropy(out["logits"], torch.tensor([5, 40, 90])).backward()
    assert all(p.grad is not None for p in model.parameters())


HAVE_ORT = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter is deliberate, see below
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace's deprecation notice
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the input-size check is constant per trace
@pytest.mark.parametrize("cls", [SSRNet, SSRNetDist])
def test_export_with_dynamic_batch(cls, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    x5 = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        ref = model(x5)
    if not HAVE_ORT:
        traced = torch.jit.trace(model, (torch.randn(2, 3, 64, 64),), strict=False)
        assert torch.allclose(traced(x5)["age"], ref["age"], atol=1e-4)
        return
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    # dynamo=False: the TorchScript exporter needs no onnxscript; traced at batch 2, run at batch 5.
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), str(path), input_names=["image"],
                      output_names=list(ref), dynamic_axes={"image": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x5.numpy()})
    for name, arr in zip(ref, got):
        assert torch.allclose(torch.from_numpy(arr), ref[name], atol=1e-3), name
