"""A model sees, at prediction time, the pixels its training saw: through `age predict` (every backend) and
`age serve`, the SSR-Net port reproduces its own published outputs, and agecli's built-in models agree with
`age eval` on the crops `age prepare` made.

Both checks go through the commands a user runs, not through a preprocessing written for the test: a shortcut
in predict's decoding (JPEGs decoded at reduced DCT scale) once moved the port's ages by up to 3.9 years while
tests that preprocessed the images themselves still passed.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import age_main, link_utkface

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference"
WEIGHTS = Path(__file__).resolve().parents[1] / "agecli" / "weights"
GOLDEN_LIMIT = 0.01  # years: the JSON output rounds ages to 3 decimals, the serve answer to 2
PARITY_LIMIT = 1e-3  # years, predict against eval on the same chips


def age(*spellings: tuple) -> None:
    """Run the first spelling of a command that works (options are being renamed; the old ones stay as
    deprecated aliases); fail with what each printed."""
    printed = []
    for args in spellings:
        result = age_main(*args)
        if result.returncode == 0:
            return
        printed.append(f"age {' '.join(map(str, args))}: {result.stderr[-2000:]}")
    pytest.fail("\n".join(printed))


def predicted_ages(chips: Path, model: Path, out: Path) -> dict[str, float]:
    """`age predict` on every chip, whole image as the face: {file name: age}."""
    json_path = out.with_suffix(".json")
    # a batch no larger than the chips: predict pads the last batch, and padding is wasted time here
    common = [chips, "--model", model, "--allow-torchscript", "--json", json_path, "--batch", len(os.listdir(chips))]
    age(("predict", *common, "--detector", "none", "--out", out),
        ("predict", *common, "--no-detect", "--out", out.with_name(out.name + "_old")))
    photos = json.loads(json_path.read_text())["photos"]
    assert all(p["status"] == "ok" and len(p["faces"]) == 1 for p in photos), photos
    return {Path(p["path"]).name: p["faces"][0]["age"] for p in photos}


# ---- the SSR-Net port against its own golden outputs -------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict[str, float]:
    if not REFERENCE.is_dir():
        pytest.skip(f"shared folder not found at {SHARED}")
    images = json.loads((REFERENCE / "ssrnet_pytorch_port_golden.json").read_text())["images"]
    assert len(images) == 32
    return {e["image"]: e["output"] for e in images}


@pytest.fixture(scope="module")
def golden_chips(golden, tmp_path_factory) -> Path:
    """The 32 UTKFace chips the golden outputs name, linked (never copied into the repository)."""
    chips = tmp_path_factory.mktemp("golden_chips")
    for name in golden:
        (chips / name).symlink_to(SHARED / "data" / "utkface" / name)
    return chips


@pytest.fixture(scope="module")
def port_models(golden, tmp_path_factory) -> dict[str, Path]:
    """The port's checkpoint imported with `age import`, and exported to ONNX and TorchScript with `age export`."""
    folder = tmp_path_factory.mktemp("port_models")
    models = {"pt": folder / "port.pt", "onnx": folder / "port.onnx", "torchscript": folder / "port.torchscript.pt"}
    pth = REFERENCE / "ssrnet_pytorch_port_megaage.pth"
    age(("import", "ssrnet-port", pth, "-o", models["pt"]), ("import", "ssrnet-port", pth, "--out", models["pt"]))
    for fmt in ("onnx", "torchscript"):
        export = ("export", models["pt"], "--format", fmt)
        age((*export, "-o", models[fmt]), (*export, "--out", models[fmt]))
    return models


def assert_golden(got: dict[str, float], golden: dict[str, float]) -> None:
    assert sorted(got) == sorted(golden)
    errors = {name: abs(got[name] - golden[name]) for name in golden}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= GOLDEN_LIMIT, f"{worst}: {got[worst]} vs the port's {golden[worst]}"


@pytest.mark.parametrize("backend", ["pt", "onnx", "torchscript"])
def test_age_predict_reproduces_the_ports_golden_outputs(backend, port_models, golden_chips, golden, tmp_path):
    assert_golden(predicted_ages(golden_chips, port_models[backend], tmp_path / "run"), golden)


def test_age_serve_reproduces_the_ports_golden_outputs(port_models, golden_chips, golden):
    from fastapi.testclient import TestClient

    from agecli.predict.predictor import Predictor
    from agecli.serve.app import create_app
    from agecli.serve.service import ModelService

    client = TestClient(create_app(ModelService(Predictor(port_models["pt"], detector="none", device="cpu"))))
    got = {}
    for name in golden:
        response = client.post("/v1/predict", files={"image": (name, (golden_chips / name).read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        got[name] = response.json()["faces"][0]["age"]
    assert_golden(got, golden)


# ---- built-in models: predict against eval on the crops prepare made --------------------------------------


def utkface_chips(folder: Path, n: int = 8) -> Path:
    """A handful of real UTKFace chips, or 200x200 synthetic JPEG chips named like them when shared is absent.
    200 px: large enough that a reduced-scale decode would fit every built-in model's crop size."""
    if (SHARED / "data" / "utkface").is_dir():
        link_utkface(SHARED, folder, n)
        return folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 120, 200)
    for i in range(n):
        face = ramp[:, None, None] + ramp[None, :, None] * rng.uniform(0.2, 1, 3) + rng.normal(60, 25, (200, 200, 3))
        Image.fromarray(np.clip(face, 0, 255).astype(np.uint8)).save(folder / f"{20 + 5 * i}_0_0_2017011{i}.jpg.chip.jpg",
                                                                     quality=90)
    return folder


def eval_ages(model: Path, prepared: Path, out: Path) -> dict[str, float]:
    """`age eval` on every row of a prepared dataset: {file name: age}."""
    common = ("--data", prepared, "--split", "all", "--out", out)
    age(("eval", "--model", model, *common), ("eval", model, *common))
    with open(out / "predictions.csv", newline="") as f:
        return {Path(row["path"]).name: float(row["pred"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def prepared_chips(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """(the chips, {alignment: `age prepare utkface` of them}) with crops at every built-in model's size, cut
    as each model's alignment says (an aligned model's chips are aligned on the landmarks found in them)."""
    from agecli.modelio.checkpoint import load_model

    folder = tmp_path_factory.mktemp("parity")
    chips = utkface_chips(folder / "chips")
    sizes: dict[str, set] = {}
    for path in WEIGHTS.glob("*.pt"):
        preprocess = load_model(path)[1]
        sizes.setdefault(preprocess.align, set()).add(preprocess.crop_size)
    prepared = {}
    for align, crop_sizes in sizes.items():
        prepared[align] = folder / f"prepared-{align}"
        age(("prepare", "utkface", "--root", chips, "--out", prepared[align], "--align", align,
             "--sizes", ",".join(map(str, sorted(crop_sizes)))))
    return chips, prepared


@pytest.mark.parametrize("model", sorted(p.name for p in WEIGHTS.glob("*.pt")))
def test_builtin_models_predict_what_eval_gives_on_prepared_crops(model, prepared_chips, tmp_path):
    from agecli.modelio.checkpoint import load_model

    chips, prepared = prepared_chips
    evaluated = eval_ages(WEIGHTS / model, prepared[load_model(WEIGHTS / model)[1].align], tmp_path / "eval")
    predicted = predicted_ages(chips, WEIGHTS / model, tmp_path / "predict")
    assert sorted(predicted) == sorted(evaluated) == sorted(os.listdir(chips))
    for name, expected in evaluated.items():
        assert predicted[name] == pytest.approx(expected, abs=PARITY_LIMIT), name
