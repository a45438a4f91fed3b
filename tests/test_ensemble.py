"""The `ensemble` model: averaging, flip TTA, building from checkpoints, and the full checkpoint/export path."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from agecli.errors import AgeCliError
from agecli.modelio.checkpoint import load_checkpoint, load_model, save_checkpoint
from agecli.modelio.export import export
from agecli.modelio.packaging import ensemble_from_checkpoints
from agecli.models import create_model, describe
from tests.helpers import noise, tiny_checkpoint


def members(tmp_path, name="ssrnet_dist", n=2, **preprocess):
    return [load_checkpoint(tiny_checkpoint(tmp_path / f"m{i}.pt", name=name, seed=i, **preprocess)) for i in range(n)]


@pytest.mark.parametrize("name", ["ssrnet_dist", "ssrnet"])
@pytest.mark.parametrize("flip", [False, True])
def test_ensemble_age_is_the_mean_over_members_and_mirrored_views(tmp_path, name, flip):
    states = members(tmp_path, name)
    model = ensemble_from_checkpoints(states, flip=flip)["model"]
    singles = [load_model(tmp_path / f"m{i}.pt")[0] for i in range(2)]
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        views = [x, x.flip(3)] if flip else [x]
        expected = torch.stack([m(v)["age"] for m in singles for v in views]).mean(0)
        out = model(x)
    torch.testing.assert_close(out["age"], expected, rtol=0, atol=1e-4)
    if name == "ssrnet_dist":  # the averaged distribution comes back out of softmax, so spreads still work
        probs = out["logits"].softmax(1)
        torch.testing.assert_close(probs.sum(1), torch.ones(5))
        torch.testing.assert_close((probs * model.ages).sum(1), out["age"], rtol=0, atol=1e-4)
    else:
        assert "logits" not in out
    # members really differ, so the test above is not comparing one model with itself
    assert not torch.allclose(singles[0](x)["age"], singles[1](x)["age"])


def test_flip_makes_the_prediction_mirror_invariant(tmp_path):
    model = ensemble_from_checkpoints(members(tmp_path, n=1), flip=True)["model"]
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["age"], model(x.flip(3))["age"], rtol=0, atol=1e-4)


def test_members_must_share_preprocessing_and_age_range(tmp_path):
    plain = load_checkpoint(tiny_checkpoint(tmp_path / "a.pt", name="ssrnet_dist"))
    other_size = load_checkpoint(tiny_checkpoint(tmp_path / "b.pt", name="ssrnet_dist", margin=0.3))
    regression = load_checkpoint(tiny_checkpoint(tmp_path / "c.pt", name="ssrnet"))
    with pytest.raises(AgeCliError, match=r"b\.pt: its preprocessing does not match .*margin=0\.3"):
        ensemble_from_checkpoints([plain, other_size], names=["a.pt", "b.pt"])
    with pytest.raises(AgeCliError, match="distribution heads over the same ages"):  # years vs probabilities
        ensemble_from_checkpoints([plain, regression])
    narrow = {"name": "ssrnet_dist", "kwargs": {"age_min": 0, "age_max": 69}}
    with pytest.raises(AgeCliError, match="distribution heads over the same ages"):
        create_model("ensemble", members=[{"name": "ssrnet_dist", "kwargs": {}}, narrow])
    with pytest.raises(AgeCliError, match="cannot be ensembles"):
        create_model("ensemble", members=[{"name": "ensemble"}])


@pytest.mark.parametrize("weights_format, atol", [("float16", 1e-3), ("int8", 2e-2)])
def test_members_of_different_architectures_average_their_distributions(tmp_path, weights_format, atol):
    ssr = load_checkpoint(tiny_checkpoint(tmp_path / "s.pt", name="ssrnet_dist", seed=0))
    res = load_checkpoint(tiny_checkpoint(tmp_path / "r.pt", name="small_resnet", seed=1))
    built = ensemble_from_checkpoints([ssr, ssr, res], flip=False)
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, **built, weights_format=weights_format)
    model, _, state = load_model(path)
    assert describe(state["model"]) == "2 x ssrnet_dist + 1 x small_resnet"
    stored = torch.load(path, weights_only=True)["state_dict"]  # compact on disk, float32 once loaded
    assert stored["members.2.head.2.weight"].dtype == getattr(torch, weights_format)
    assert state["state_dict"]["members.2.head.2.weight"].dtype == torch.float32
    assert path.stat().st_size < (0.3 if weights_format == "int8" else 0.55) * sum(
        v.numel() * 4 for v in built["model"].state_dict().values())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        singles = [load_model(tmp_path / n)[0] for n in ("s.pt", "s.pt", "r.pt")]
        expected = torch.stack([m(x)["logits"].softmax(1) for m in singles]).mean(0)
        torch.testing.assert_close(model(x)["logits"].softmax(1), expected, rtol=0, atol=atol)
        torch.testing.assert_close(model(x)["age"], (expected * model.ages).sum(1), rtol=0, atol=50 * atol)


def test_int8_weights_keep_each_output_channel_within_half_a_step():
    from agecli.modelio.checkpoint import compress_weights, restore_weights

    weights = {"conv.weight": torch.randn(4, 3, 3, 3) * torch.tensor([1e-3, 1.0, 10.0, 0.0]).view(4, 1, 1, 1),
               "bn.running_mean": torch.randn(4), "bn.num_batches_tracked": torch.tensor(7)}
    stored, scales = compress_weights(weights, "int8")
    assert stored["conv.weight"].dtype == torch.int8 and stored["bn.running_mean"].dtype == torch.float16
    restored = restore_weights(stored, scales)
    step = weights["conv.weight"].abs().amax(dim=(1, 2, 3), keepdim=True) / 127  # per channel, so small ones survive
    assert ((restored["conv.weight"] - weights["conv.weight"]).abs() <= step / 2 + 1e-9).all()
    assert restored["bn.num_batches_tracked"] == 7
    assert restore_weights(*compress_weights(weights, "float32"))["conv.weight"].equal(weights["conv.weight"])
    with pytest.raises(AgeCliError, match="'int4' is not one of"):
        compress_weights(weights, "int4")


def test_members_may_see_different_central_views_of_one_crop(tmp_path):
    tight = load_checkpoint(tiny_checkpoint(tmp_path / "t.pt", name="ssrnet_dist", seed=0, crop_size=72, input_size=64))
    wide = load_checkpoint(tiny_checkpoint(tmp_path / "w.pt", name="ssrnet_dist", seed=1, crop_size=72, input_size=72))
    built = ensemble_from_checkpoints([tight, wide], flip=False)
    assert built["preprocess"].input_size == 72 and [m["size"] for m in built["model_kwargs"]["members"]] == [64, 72]
    x = torch.randn(3, 3, 72, 72)
    with torch.no_grad():
        t, w = load_model(tmp_path / "t.pt")[0], load_model(tmp_path / "w.pt")[0]
        # the tight member sees the centre 64 px (as training's centre crop cut it); the 64-px backbone of the
        # wide member resizes the whole 72-px crop, as it did in training
        wide_alone = w(torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False))
        torch.testing.assert_close(w(x)["age"], wide_alone["age"])
        expected = (t(x[:, :, 4:68, 4:68])["age"] + w(x)["age"]) / 2
        torch.testing.assert_close(built["model"](x)["age"], expected, rtol=0, atol=1e-4)


def test_members_trained_at_other_resolutions_see_the_crop_resized_to_theirs(tmp_path):
    small = load_checkpoint(tiny_checkpoint(tmp_path / "s.pt", name="ssrnet_dist", seed=0, crop_size=72, input_size=64))
    large = load_checkpoint(tiny_checkpoint(tmp_path / "l.pt", name="small_resnet", seed=1, crop_size=108, input_size=96))
    built = ensemble_from_checkpoints([small, large], flip=False)
    # both see 8/9 of the crop, so the ensemble takes the central 96 px of a 108-px crop
    assert (built["preprocess"].input_size, built["preprocess"].crop_size) == (96, 108)
    assert [(m["resize"], m["size"]) for m in built["model_kwargs"]["members"]] == [(64, 64), (0, 96)]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        s, large_alone = load_model(tmp_path / "s.pt")[0], load_model(tmp_path / "l.pt")[0]
        small_view = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
        expected = torch.stack([s(small_view)["logits"].softmax(1), large_alone(x)["logits"].softmax(1)]).mean(0)
        torch.testing.assert_close(built["model"](x)["logits"].softmax(1), expected, rtol=0, atol=1e-5)


def test_median_splits_the_averaged_distribution_in_half():
    from agecli.models.ensemble import distribution_median

    ages = torch.arange(0, 5, dtype=torch.float32)
    probs = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0],   # all mass on 2: the median is 2
                          [0.5, 0.0, 0.0, 0.0, 0.5],   # half at 0, half at 4: mass [-0.5, 0.5] is used up at 0.5
                          [0.1, 0.1, 0.1, 0.1, 0.6]])  # skewed: the median (3.67) lies above the mean (3.0)
    torch.testing.assert_close(distribution_median(probs, ages), torch.tensor([2.0, 0.5, 3.5 + 1 / 6]))
    assert (probs * ages).sum(1)[2] < distribution_median(probs, ages)[2]


def test_shifted_views_are_averaged_and_must_stay_inside_the_crop(tmp_path):
    state = load_checkpoint(tiny_checkpoint(tmp_path / "m.pt", name="ssrnet_dist", crop_size=72, input_size=64))
    built = ensemble_from_checkpoints([state], flip=False, shift=2)
    assert built["preprocess"].input_size == 72  # the whole crop, so shifted views have room
    x = torch.randn(2, 3, 72, 72)
    single = load_model(tmp_path / "m.pt")[0]
    with torch.no_grad():
        views = [x[:, :, 4 + dy: 68 + dy, 4 + dx: 68 + dx] for dy, dx in ((0, 0), (-2, -2), (-2, 2), (2, -2), (2, 2))]
        expected = torch.stack([single(v)["logits"].softmax(1) for v in views]).mean(0)
        torch.testing.assert_close(built["model"](x)["logits"].softmax(1), expected, rtol=0, atol=1e-5)
    with pytest.raises(AgeCliError, match="m.pt: a 5-px shift leaves its 64-px view of the 72-px crop; .* at most 4"):
        ensemble_from_checkpoints([state], shift=5, names=["m.pt"])


@pytest.mark.parametrize("point", ["mean", "median"])
def test_ensemble_checkpoint_reloads_safely_and_exports_with_parity(tmp_path, point):
    built = ensemble_from_checkpoints(members(tmp_path, n=3, crop_size=72), flip=True, shift=2, point=point)
    path = tmp_path / "ens.pt"
    save_checkpoint(path, **built)
    model, _, state = load_model(path)  # weights_only loading: plain data and tensors only
    assert describe(state["model"]) == "3 x ssrnet_dist + flip + 5 crops" + (", median" if point == "median" else "")
    x = torch.randn(4, 3, 72, 72)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["age"], built["model"](x)["age"])

    result = export(path, "onnx", tmp_path / "ens.onnx", parity_images=None)
    assert result.max_abs_diff < 0.01
    assert result.metadata["architecture"] == describe(state["model"])  # what it is made of, not just "ensemble"
    session = ort.InferenceSession(str(tmp_path / "ens.onnx"))
    crops = np.stack([noise(72, 72, seed=s) for s in range(2)])
    ages = session.run(None, {session.get_inputs()[0].name: crops})[0]
    assert ages.shape == (2,) and np.isfinite(ages).all()


def test_package_script_builds_an_ensemble_and_refuses_members_with_other_validation_rows(tmp_path):
    import contextlib
    import io
    import re
    import runpy
    import subprocess
    import sys
    from pathlib import Path
    from unittest import mock

    from agecli.config import resolve_config
    from agecli.data.prepare import prepare
    from agecli.training.engine import train
    from tests.helpers import labelled_faces

    prepare("csv", labelled_faces(tmp_path / "faces", 40), tmp_path / "prep")
    for name, seed, split_seed in (("a", 0, 0), ("b", 1, 0), ("odd", 2, 2)):
        (tmp_path / name).mkdir()
        train(resolve_config("ssrnet/utkface", {
            "data.manifest": str(tmp_path / "prep"), "data.cache_size": 64, "data.augment": "flip",
            "train.epochs": 1, "train.batch_size": 16, "train.seed": seed, "data.split_seed": split_seed,
            "train.device": "cpu"}), tmp_path / name)

    script = Path(__file__).resolve().parents[1] / "scripts" / "package_model.py"

    def package(*args):  # the script's main in this process: the packaging is under test, not the interpreter
        argv = [str(script), *map(str, args), "--data", str(tmp_path / "prep")]
        out, err, code = io.StringIO(), io.StringIO(), 0
        with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exit_:  # sys.exit("error: ...") is how the script fails
                code = exit_.code if isinstance(exit_.code, int) else 1
                err.write(f"{exit_.code}\n" if isinstance(exit_.code, str) else "")
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())

    ok = package(tmp_path / "a", tmp_path / "b", "--flip", "--point", "median", "--weights", "int8",
                 "--out", tmp_path / "ens.pt")
    assert ok.returncode == 0, ok.stderr
    assert torch.load(tmp_path / "ens.pt", weights_only=True)["state_dict"]["members.0.head.1.weight"].dtype == torch.int8
    state = load_checkpoint(tmp_path / "ens.pt")
    assert describe(state["model"]) == "2 x ssrnet_dist + flip, median"
    assert [m["run"] for m in state["info"]["members"]] == ["a", "b"]
    assert state["info"]["test_metrics"]["n"] == 8  # prepare's 20% test split of 40 faces
    assert f"MAE {state['info']['val_metrics']['mae']:.3f}" in ok.stdout

    refused = package(tmp_path / "a", tmp_path / "odd", "--out", tmp_path / "bad.pt")
    assert refused.returncode != 0 and not (tmp_path / "bad.pt").exists()
    assert refused.stderr.strip().count("\n") == 0 and "odd: its validation split differs" in refused.stderr

    dry = package(tmp_path / "a", "--flip", "--dry-run", "--against", tmp_path / "a")
    assert dry.returncode == 0 and "val: MAE" in dry.stdout and "test:" not in dry.stdout
    # the flip view against the run alone, on the same faces: the printed difference is the MAEs' difference
    mine, theirs, diff = (float(v) for v in re.search(
        r"val: MAE ([\d.]+) .*\nval: MAE ([\d.]+) for .*; difference ([-+][\d.]+) years", dry.stdout).groups())
    assert abs(diff - (mine - theirs)) <= 0.0015


def test_an_eval_report_names_what_a_packaged_model_holds(tmp_path):
    from agecli.data.prepare import prepare
    from agecli.training.evaluation import run_eval
    from tests.helpers import labelled_faces

    one = load_checkpoint(tiny_checkpoint(tmp_path / "one.pt", name="ssrnet_dist", crop_size=64))
    path = tmp_path / "packaged.pt"
    save_checkpoint(path, **ensemble_from_checkpoints([one], flip=True))
    prepared = prepare("csv", labelled_faces(tmp_path / "faces", 6), tmp_path / "prep", sizes=(64,)).out
    out = run_eval(path, prepared, split="all", device="cpu", out=tmp_path / "eval")["out_dir"]
    assert json.loads((out / "metrics.json").read_text())["architecture"] == "1 x ssrnet_dist + flip"
    assert "Evaluation · 1 x ssrnet_dist + flip · packaged.pt" in (out / "report.html").read_text()
