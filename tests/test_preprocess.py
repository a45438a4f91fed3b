"""The Preprocess type: what a checkpoint stores, how every older layout reads back, and typos."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.modelio.backends import TorchBackend
from agecli.modelio.builtin import WEIGHTS_DIR
from agecli.modelio.checkpoint import load_checkpoint, load_model
from agecli.modelio.export import export_metadata
from tests.helpers import tiny_checkpoint

# agecli/weights/ensemble.pt's preprocess (the default model until 2026-12-07), in the layout of format 1 and 2
# checkpoints
BUILTIN = {"size": 64, "cache_size": 72, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "channel_order": "RGB", "margin": -0.03, "shift": 0.08, "detector": "", "age_min": 0.0, "age_max": 100.0}


def test_round_trip_through_a_weights_only_checkpoint(tmp_path):
    p = Preprocess(input_size=96, crop_size=108, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), channel_order="BGR",
                   margin=0.1, shift=0.05, detector="haar", age_min=0, age_max=69)
    assert Preprocess.from_dict(p.to_dict()) == p
    torch.save({"preprocess": p.to_dict()}, tmp_path / "p.pt")  # plain data: weights_only reads it
    assert Preprocess.from_dict(torch.load(tmp_path / "p.pt", weights_only=True)["preprocess"]) == p
    assert json.loads(json.dumps(p.to_dict())) == p.to_dict()
    assert Preprocess(input_size=80).crop_size == 80  # no crop size: the whole crop is the input


def test_legacy_layouts_read_with_the_values_they_had():
    assert Preprocess.from_dict(BUILTIN) == Preprocess(input_size=64, crop_size=72, margin=-0.03, shift=0.08,
                                                       age_min=0, age_max=100)
    # the first checkpoints had neither cache_size, shift nor detector: the crop is the input, no shift
    first = {k: v for k, v in BUILTIN.items() if k not in ("cache_size", "shift", "detector")}
    assert (Preprocess.from_dict(first).crop_size, Preprocess.from_dict(first).shift) == (64, 0.0)
    # nothing at all: the old checkpoint defaults (margin 0.4, ages 0-101, ImageNet statistics, RGB)
    assert Preprocess.from_dict({}) == Preprocess(margin=0.4, shift=0.0, age_max=101.0)
    # a key this agecli does not know (an older or newer file) is ignored when reading
    assert Preprocess.from_dict({**BUILTIN, "interpolation": "bilinear"}) == Preprocess.from_dict(BUILTIN)


def test_a_misspelt_key_from_code_is_an_error(tmp_path):
    with pytest.raises(TypeError):
        Preprocess(marign=0.2)
    with pytest.raises(TypeError):
        dataclasses.replace(Preprocess(), cache_size=72)  # the legacy name is for stored dicts only
    with pytest.raises(TypeError):
        tiny_checkpoint(tmp_path / "t.pt", shfit=0.1)
    with pytest.raises(AgeCliError, match="unknown preprocess key 'marign'; did you mean 'margin'"):
        Preprocess.from_dict({"marign": 0.2}, strict=True)
    with pytest.raises(AgeCliError, match="channel_order"):
        Preprocess(channel_order="bgr")
    with pytest.raises(AgeCliError, match="at most crop_size"):
        Preprocess(input_size=72, crop_size=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Preprocess().margin = 0.0


def test_builtin_model_preprocess_reads_back_and_exports_the_same_metadata():
    model, p, state = load_model(WEIGHTS_DIR / "ensemble.pt")
    assert state["preprocess"] == BUILTIN  # the shipped file keeps its format 2 layout
    assert (p.input_size, p.crop_size, p.margin, p.shift, p.age_max) == (64, 72, -0.03, 0.08, 100.0)
    # export metadata and the serve card publish what they always did: the stored layout without the detector
    assert p.public_dict() == {k: v for k, v in BUILTIN.items() if k != "detector"}
    assert list(p.public_dict()) == [k for k in BUILTIN if k != "detector"]
    meta = export_metadata(state, p, has_std=True)
    assert meta["input"]["size"] == 72 and meta["preprocess"]["size"] == 64


def test_an_old_layout_checkpoint_predicts_as_before(tmp_path):
    path = tiny_checkpoint(tmp_path / "new.pt", "ssrnet_dist", crop_size=72)
    state = load_checkpoint(path)
    assert state["format_version"] == 3 and state["preprocess"]["crop_size"] == 72
    state.update(format_version=1, preprocess={"size": 64, "cache_size": 72, "mean": [0.485, 0.456, 0.406],
                                               "std": [0.229, 0.224, 0.225], "channel_order": "RGB",
                                               "margin": 0.2, "age_min": 0.0, "age_max": 101.0})
    torch.save(state, tmp_path / "old.pt")
    old, new = TorchBackend(tmp_path / "old.pt", "cpu"), TorchBackend(path, "cpu")
    assert old.preprocess == new.preprocess and old.crop_size == 72
    crops = np.random.default_rng(0).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
    np.testing.assert_array_equal(old.run(crops)[0], new.run(crops)[0])


def test_channels_last_backend_matches_the_plain_model(tmp_path):
    backend = TorchBackend(tiny_checkpoint(tmp_path / "r.pt", "small_resnet", crop_size=72), "cpu")
    conv = next(w for w in backend.model.parameters() if w.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    plain = load_model(tmp_path / "r.pt")[0]
    crops = np.random.default_rng(1).integers(0, 256, (4, 72, 72, 3), dtype=np.uint8)
    x = torch.from_numpy(crops[:, 4:68, 4:68]).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(backend.run(crops)[0], plain(x)["age"].numpy(), atol=1e-4)


def test_the_onnx_path_imports_neither_torch_nor_opencv():
    code = "import sys, agecli.data.preprocess; print(sorted({'torch', 'cv2'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
