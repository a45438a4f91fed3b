"""`age export`: ONNX and TorchScript round trips, metadata, parity (and its failure), torch-free ONNX prediction."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from agecli.data.preprocess import Preprocess
from agecli.errors import AgeCliError
from agecli.modelio import export as export_mod
from agecli.modelio.checkpoint import load_model
from agecli.modelio.export import export
from agecli.predict.predictor import Predictor
from tests.helpers import age_main, assert_one_line_error, noise, tiny_checkpoint


def onnx_metadata(path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["agecli"])


def by_hand(model, crops: np.ndarray, pre: dict) -> np.ndarray:
    """What the exported graph must compute, written out without agecli's preprocessing code."""
    s, c = pre["size"], (crops.shape[1] - pre["size"]) // 2
    x = crops[:, c: c + s, c: c + s].astype(np.float32) / 255.0
    if pre["channel_order"] == "BGR":
        x = x[..., ::-1]
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))["age"].numpy()


def test_onnx_round_trip_with_metadata_and_dynamic_batch(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pt", channel_order="BGR", crop_size=72)
    result = export(ckpt, "onnx")
    assert result.path == tmp_path / "best.onnx" and result.path.is_file()
    assert result.max_abs_diff <= 0.01 and result.parity_images == 32
    meta = onnx_metadata(result.path)
    assert meta["model"] == "ssrnet" and meta["agecli_version"] and meta["outputs"] == ["age"]
    assert meta["input"] | {"how": ""} == {"name": "image", "layout": "NHWC", "dtype": "uint8", "channels": "RGB",
                                          "size": 72, "how": ""}
    assert {k: meta["preprocess"][k] for k in ("size", "channel_order", "margin", "age_min", "age_max")} == {
        "size": 64, "channel_order": "BGR", "margin": 0.2, "age_min": 0.0, "age_max": 101.0}
    # a consumer with onnxruntime alone: any batch size, uint8 crops in, ages out
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    crops = np.stack([noise(72, 72, s) for s in range(5)])
    (ages5,) = session.run(None, {"image": crops})
    (ages1,) = session.run(None, {"image": crops[2:3]})
    assert ages5.shape == (5,) and abs(ages1[0] - ages5[2]) < 1e-4
    model, _, _ = load_model(ckpt)
    # as a consumer reads it: the metadata says how, and the graph does it (centre crop, BGR, mean/std)
    np.testing.assert_allclose(ages5, by_hand(model, crops, meta["preprocess"]), atol=1e-3)


def test_torchscript_round_trip_of_a_distribution_model(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pt", "ssrnet_dist", seed=1)
    result = export(ckpt, "torchscript")
    assert result.path == tmp_path / "best.torchscript.pt" and result.max_abs_diff <= 0.01
    with zipfile.ZipFile(result.path) as z:
        meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/agecli.json"))))
    assert meta["outputs"] == ["age", "spread"] and meta["model"] == "ssrnet_dist"
    crops = np.stack([noise(64, 64, s) for s in range(3)])
    pt = Predictor(ckpt, detector="none").backend
    ts = Predictor(result.path, detector="none", allow_torchscript=True).backend
    assert ts.kind == "torchscript"
    for a, b in zip(pt.run(crops), ts.run(crops)):
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_onnx_distribution_model_reports_std(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "d.pt", "ssrnet_dist", seed=2)
    result = export(ckpt, "onnx", out=tmp_path / "exported" / "d.onnx")
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["age", "spread"]
    age, std = session.run(None, {"image": noise(64, 64)[None]})
    assert age.shape == std.shape == (1,) and std[0] > 0


def test_parity_failure_raises_and_leaves_no_file(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    good = export(ckpt, "onnx").path
    before = good.read_bytes()
    real_run = export_mod.OnnxBackend.run

    def off_by_a_bit(self, crops):
        age, std = real_run(self, crops)
        return age + 0.02, std

    monkeypatch.setattr(export_mod.OnnxBackend, "run", off_by_a_bit)
    with pytest.raises(AgeCliError, match="parity check"):
        export(ckpt, "onnx")
    assert good.read_bytes() == before  # the earlier good export survives
    with pytest.raises(AgeCliError, match="parity check"):
        export(ckpt, "onnx", out=tmp_path / "new.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.pt"]  # no temp files either


def test_onnx_prediction_never_imports_torch(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    onnx_path = export(ckpt, "onnx").path
    from PIL import Image

    Image.fromarray(noise(80, 80)).save(tmp_path / "face.png")
    code = ("import sys; from agecli.predict.predictor import Predictor; "
            f"p = Predictor({str(onnx_path)!r}, detector='none'); "
            f"r = list(p.predict([{str(tmp_path / 'face.png')!r}])); assert r[0].ok, r; "
            "d = Predictor(p.model_path); list(d.predict([p.model_path.parent / 'face.png'])); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(r[0].faces[0].age)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert abs(float(done.stdout) - Predictor(ckpt, detector="none").predict([tmp_path / "face.png"]).__next__()
               .faces[0].age) < 0.01


def test_bad_format_and_self_overwrite_are_refused(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    with pytest.raises(AgeCliError, match="choose one of onnx, torchscript"):
        export(ckpt, "tflite")
    with pytest.raises(AgeCliError, match="refusing to overwrite"):
        export(ckpt, "torchscript", out=ckpt)


# ---- the real (imported, BGR) model -------------------------------------------------------------


def test_port_model_export_and_cli_predict_agree(port_checkpoint, shared_dir, tmp_path):
    result = age_main("export", port_checkpoint, "--format", "onnx", "--output", tmp_path / "port.onnx")
    assert result.returncode == 0, result.stderr
    assert "synthetic faces" in result.stdout and "passed" in result.stdout
    ts = export(port_checkpoint, "torchscript", out=tmp_path / "port.torchscript.pt",
                parity_images=[shared_dir / "data" / "utkface"])  # the first 32 real faces of a large folder
    assert (ts.parity_source, ts.parity_images) == ("parity images", 32) and ts.max_abs_diff <= 0.01
    model, pre, _ = load_model(port_checkpoint)
    crops = Predictor(port_checkpoint, detector="none").crops(noise(100, 100), None)
    np.testing.assert_allclose(Predictor(tmp_path / "port.onnx", detector="none").backend.run(crops)[0],
                               by_hand(model, crops, pre.public_dict()), atol=1e-3)

    photos = [shared_dir / "examples" / "astronaut.png", *sorted((shared_dir / "data" / "fairface").glob("*.jpg"))[:3]]
    ages = {}
    for name in ("port.onnx", str(port_checkpoint)):
        out = tmp_path / f"run_{len(ages)}"
        done = age_main("predict", *photos, "--model", tmp_path / name, "--out", out, "--device", "cpu")
        assert done.returncode == 0, done.stderr
        data = json.loads((out / "predictions.json").read_text())
        ages[name] = [f["age"] for p in data["photos"] for f in p["faces"]]
    assert len(ages["port.onnx"]) >= 4
    np.testing.assert_allclose(ages["port.onnx"], ages[str(port_checkpoint)], atol=0.01)


def test_cli_export_errors_are_one_line(tmp_path):
    assert_one_line_error(age_main("export", tmp_path / "none.pt"), "no such checkpoint file")


def test_default_parity_images_are_generated_and_the_same_everywhere(tmp_path):
    """No data folder beside the checkout is consulted: the default is seeded synthetic faces."""
    first, source = export_mod.parity_crops(None, Preprocess(crop_size=72))
    again, _ = export_mod.parity_crops(None, Preprocess(crop_size=72))
    assert source == "synthetic faces" and first.shape == (32, 72, 72, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and len({crop.tobytes() for crop in first}) == 32
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(AgeCliError, match="no readable parity images"):
        export_mod.parity_crops([folder], Preprocess(crop_size=72))


def test_a_shipped_model_exports_by_name_into_the_working_folder(tmp_path):
    from agecli.modelio.builtin import WEIGHTS_DIR

    before = sorted(p.name for p in WEIGHTS_DIR.iterdir())
    r = age_main("export", "default", "--format", "onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in WEIGHTS_DIR.iterdir()) == before  # nothing written into the package
    meta = json.loads({p.key: p.value for p in onnx.load(tmp_path / "default.onnx").metadata_props}["agecli"])
    aligned = load_model(WEIGHTS_DIR / "default.pt")[1].align != "none"
    assert meta["preprocess"].get("align", "none") == ("five_point" if aligned else "none")
    assert meta["input"]["how"].startswith("align_face" if aligned else "crop_face")
