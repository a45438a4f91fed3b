"""Importing the SSR-Net PyTorch port's checkpoint, and faithfulness against the port's own outputs.

The golden outputs were produced by the port's code, not ours, so matching them checks the
architecture. Preprocessing is re-implemented here from the JSON's description on purpose: it must not
share code with agecli's pipeline.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agecli.errors import AgeCliError
from agecli.files.safe_load import load_raw
from agecli.modelio.checkpoint import load_model
from agecli.modelio.ssrnet_port import (
    PORT_MODEL_KWARGS,
    PORT_TO_AGECLI,
    import_ssrnet_port,
)
from agecli.models.ssrnet import SSRNet

PTH = "reference/ssrnet_pytorch_port_megaage.pth"
GOLDEN = "reference/ssrnet_pytorch_port_golden.json"


@pytest.fixture
def golden(shared_dir) -> dict:
    return json.loads((shared_dir / GOLDEN).read_text())


@pytest.fixture
def imported(shared_dir, tmp_path) -> tuple[torch.nn.Module, dict, dict, dict]:
    summary = import_ssrnet_port(shared_dir / PTH, tmp_path / "ssrnet_port.pt")
    model, preprocess, state = load_model(tmp_path / "ssrnet_port.pt")
    return model, preprocess, state, summary


def port_style_state_dict() -> dict[str, torch.Tensor]:
    """A state dict named and shaped like the port's, built from a fresh SSRNet (needs no shared data)."""
    ours = SSRNet(**PORT_MODEL_KWARGS).state_dict()
    return {port: ours[mine].clone() for port, mine in PORT_TO_AGECLI.items()}


# ---- the mapping itself -------------------------------------------------------------------------


def test_mapping_is_a_bijection_onto_ssrnet():
    ours = SSRNet(**PORT_MODEL_KWARGS).state_dict()
    assert len(PORT_TO_AGECLI) == 104
    assert sorted(PORT_TO_AGECLI.values()) == sorted(ours)


def test_mapping_covers_the_ports_keys_and_shapes(golden):
    ours = SSRNet(**PORT_MODEL_KWARGS).state_dict()
    assert {e["key"] for e in golden["state_dict"]} == set(PORT_TO_AGECLI)
    for e in golden["state_dict"]:
        assert list(ours[PORT_TO_AGECLI[e["key"]]].shape) == e["shape"], e["key"]


# ---- importing ----------------------------------------------------------------------------------


def test_import_real_checkpoint(imported, shared_dir):
    model, preprocess, state, summary = imported
    assert isinstance(model, SSRNet) and not model.training
    assert preprocess.channel_order == "BGR"
    assert preprocess.input_size == 64 and preprocess.mean == (0.485, 0.456, 0.406)
    assert state["model"]["name"] == "ssrnet"
    assert state["epoch"] == summary["epoch"] == load_raw(shared_dir / PTH)["epoch"]
    assert "do not redistribute" in state["info"]["licence"]
    port_params = sum(v.numel() for k, v in load_raw(shared_dir / PTH)["state_dict"].items()
                      if "running_" not in k and "num_batches" not in k)
    assert summary["params"] == port_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("wrap", ["bare", "module_prefix"])
def test_import_bare_and_dataparallel_state_dicts(wrap, tmp_path):
    port = port_style_state_dict()
    sd = {f"module.{k}": v for k, v in port.items()} if wrap == "module_prefix" else port
    torch.save(sd, tmp_path / "port.pth")
    summary = import_ssrnet_port(tmp_path / "port.pth", tmp_path / "out.pt")
    assert summary["epoch"] == 0
    model, _, _ = load_model(tmp_path / "out.pt")
    assert torch.equal(model.fuse[0].delta.weight, port["stage1_delta_k.0.weight"])  # stage 1 = fuse[0]


def test_mismatching_checkpoint_names_the_problems(tmp_path):
    sd = port_style_state_dict()
    sd["stream1_stage3_renamed.0.weight"] = sd.pop("stream1_stage3.0.weight")
    sd["stage2_prob.0.weight"] = torch.zeros(5, 6)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "bad.pth")
    with pytest.raises(AgeCliError) as err:
        import_ssrnet_port(tmp_path / "bad.pth", tmp_path / "out.pt")
    msg = str(err.value)
    assert "\n" not in msg
    assert "bad.pth: does not fit SSR-Net" in msg
    assert "missing stream1_stage3.0.weight" in msg
    assert "unexpected stream1_stage3_renamed.0.weight" in msg
    assert "shape 5x6 vs 3x6 for stage2_prob.0.weight" in msg
    assert not (tmp_path / "out.pt").exists()


def test_many_mismatches_are_summarised(tmp_path):
    sd = {f"other.{i}.weight": torch.zeros(2) for i in range(3)}
    torch.save(sd, tmp_path / "other.pth")
    with pytest.raises(AgeCliError, match=r"\(\d+ more\)"):
        import_ssrnet_port(tmp_path / "other.pth", tmp_path / "out.pt")


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(AgeCliError, match="not a state dict"):
        import_ssrnet_port(tmp_path / "list.pth", tmp_path / "out.pt")


class _Payload:
    """Unpickling this would create `marker` (open(..., 'w')): a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    sd = port_style_state_dict()
    torch.save({"state_dict": sd, "epoch": 1, "extra": _Payload(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(AgeCliError, match="refused"):
        load_raw(tmp_path / "evil.pth")
    with pytest.raises(AgeCliError, match="refused"):
        import_ssrnet_port(tmp_path / "evil.pth", tmp_path / "out.pt")
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


# ---- faithfulness: the port's own outputs -------------------------------------------------------


def port_preprocess(path: Path) -> torch.Tensor:
    """The JSON's recipe: cv2.imread (BGR uint8) -> PIL -> Resize((64, 64)) bilinear -> ToTensor ->
    Normalize(mean, std), with mean[0]/std[0] landing on the B channel."""
    import cv2
    from PIL import Image
    from torchvision import transforms

    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    tf = transforms.Compose([
        transforms.Resize((64, 64), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    return tf(Image.fromarray(bgr))


def test_golden_images(imported, golden, shared_dir):
    model = imported[0]
    images = golden["images"]
    assert len(images) == 32
    x = torch.stack([port_preprocess(shared_dir / "data" / "utkface" / e["image"]) for e in images])
    with torch.no_grad():
        got = model(x)["age"].numpy()
    expected = np.array([e["output"] for e in images])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)


def test_predict_feeds_the_model_the_ports_own_pixels(shared_dir, golden, tmp_path):
    """What `age predict --detector none` hands the network, before normalising, is bit for bit the port's
    64x64 image (cv2.imread, then PIL's bilinear resize); a reduced-scale JPEG decode was not (up to 3.9 years
    off). The whole command is checked against the golden ages in tests/test_faithful_pixels.py."""
    import cv2
    from PIL import Image

    from agecli.data.imageio import load_image
    from agecli.predict.predictor import Predictor

    import_ssrnet_port(shared_dir / PTH, tmp_path / "port.pt")
    predictor = Predictor(tmp_path / "port.pt", detector="none", device="cpu")
    for e in golden["images"]:
        path = shared_dir / "data" / "utkface" / e["image"]
        crop = predictor.find_faces(load_image(path))[2][0]
        port_bgr = np.asarray(Image.fromarray(cv2.imread(str(path))).resize((64, 64), Image.Resampling.BILINEAR))
        assert np.array_equal(crop[:, :, ::-1], port_bgr), e["image"]


def test_golden_fixed_random_input(imported, golden):
    model = imported[0]
    assert golden["fixed_input"] == "torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))"
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(x)["age"].numpy()
    np.testing.assert_allclose(got, np.array(golden["fixed_input_outputs"]), rtol=0, atol=1e-3)
