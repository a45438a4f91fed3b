"""`age export`: a checkpoint -> ONNX or TorchScript that a service can run without agecli, checked for parity.

The exported graph takes what a face detector + crop gives, not a tensor a consumer must normalise:

    input  "image": uint8, (N, S, S, 3), RGB, N dynamic; S = metadata input.size (the crop size, e.g. 64)
                    made with agecli.data.crops.crop_face(photo, box, S, margin) (margin in the metadata)
    output "age":   float32 (N,), years
           "spread": float32 (N,), spread of the predicted age distribution (distribution heads only;
                     exports made before 2026-12 name it "std")

Centre crop to the network size, channel flip (BGR models) and mean/std normalisation happen inside
the graph with the very functions training uses (agecli.data.cache), so a consumer cannot feed BGR to
an RGB model or forget the scaling. The metadata (one JSON document, ONNX `metadata_props["agecli"]`,
TorchScript extra file `agecli.json`) records all of it, plus the model name, age range, licence notes
and the agecli version.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import agecli
from agecli.data.cache import center_crop, to_model_input
from agecli.data.crops import crop_batch
from agecli.data.image_files import iter_images
from agecli.data.imageio import ImageError, load_image
from agecli.data.preprocess import Preprocess
from agecli.data.synthetic import synthetic_faces
from agecli.errors import AgeCliError
from agecli.files.atomic import atomic_path
from agecli.files.outputs import check_output_file, file_kind
from agecli.modelio.backends import (
    METADATA_KEY,
    OnnxBackend,
    TorchBackend,
    TorchScriptBackend,
)
from agecli.modelio.builtin import is_shipped, resolve_model_path
from agecli.models import describe

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
PARITY_TOLERANCE = 0.01  # years: far below any age error that matters, far above float32 noise
PARITY_COUNT = 32
OPSET = 17


class ExportedAgeModel(nn.Module):
    """uint8 NHWC RGB crops -> (age,) or (age, std): the model with its preprocessing built in."""

    def __init__(self, model: nn.Module, preprocess: Preprocess):
        super().__init__()
        self.model = model
        self.preprocess = preprocess

    def forward(self, image: torch.Tensor):
        p = self.preprocess
        x = to_model_input(center_crop(image, p.input_size), p.mean, p.std, p.channel_order)
        age, std = self.model.age_and_spread(self.model(x))
        return (age,) if std is None else (age, std)


@dataclass
class ExportResult:
    path: Path
    format: str
    metadata: dict
    max_abs_diff: float  # years, exported vs PyTorch, over the parity images
    parity_images: int
    parity_source: str  # what the parity images were


ALIGNED_INPUT = ("align_face(photo, landmarks, size): the face warped so that its five landmarks (eyes, nose, mouth "
                 "corners) land on agecli.data.crops.FIVE_POINT_TEMPLATE; ")


def export_metadata(state: dict, preprocess: Preprocess, has_std: bool) -> dict:
    crop = preprocess.crop_size
    return {
        "format": "agecli-export", "format_version": 1,
        "model": state["model"]["name"], "architecture": describe(state["model"]), "agecli_version": agecli.__version__,
        "input": {"name": "image", "layout": "NHWC", "dtype": "uint8", "channels": "RGB", "size": crop,
                  "how": (ALIGNED_INPUT if preprocess.align != "none" else
                          "crop_face(photo, box, size, margin): square crop around the face box, resized; ")
                  + "centre crop, channel order and normalisation are done inside the model"},
        "outputs": ["age", "spread"] if has_std else ["age"],
        "preprocess": preprocess.public_dict(),
        "info": state.get("info", {}),
        "source": {"epoch": state.get("epoch", 0), "metrics": state.get("metrics", {})},
    }


def default_output(checkpoint: Path, fmt: str) -> Path:
    """run/best.pt -> run/best.onnx; a shipped model's export goes to the working folder, never into the package."""
    if is_shipped(checkpoint):
        return Path(checkpoint.stem + FORMATS[fmt])
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def export(checkpoint: str | Path, fmt: str = "onnx", out: str | Path | None = None,
           parity_images=None) -> ExportResult:
    """Export `checkpoint`, then check the file against PyTorch; nothing is left at `out` if parity fails.

    parity_images: image files / folders / globs (faces, used whole); default: 32 seeded synthetic faces.
    """
    if fmt not in FORMATS:
        raise AgeCliError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    checkpoint = resolve_model_path(checkpoint)  # a file, or a shipped model's name (age export default)
    out = Path(out) if out else default_output(checkpoint, fmt)
    if out.resolve() == checkpoint.resolve():
        raise AgeCliError(f"{out}: refusing to overwrite the checkpoint itself; pass another --out")
    check_output_file(out, "--output", inputs=[checkpoint], written_by_us=earlier_export)
    reference = TorchBackend(checkpoint, "cpu")
    preprocess, state = reference.preprocess, reference.state
    # the graph is traced from a plain copy: the reference runs channels_last, a layout an export need not keep
    wrapper = ExportedAgeModel(copy.deepcopy(reference.model).to(memory_format=torch.contiguous_format),
                               preprocess).eval()
    crops, source = parity_crops(parity_images, preprocess)
    with torch.no_grad():
        has_std = len(wrapper(torch.from_numpy(crops[:2]))) == 2
    meta = export_metadata(state, preprocess, has_std)
    with atomic_path(out) as tmp:  # a file that fails parity never replaces `out`
        if fmt == "onnx":
            _write_onnx(wrapper, crops[:2], meta, tmp)
            exported = OnnxBackend(tmp, "cpu")
        else:
            _write_torchscript(wrapper, crops[:2], meta, tmp)
            exported = TorchScriptBackend(tmp, "cpu")
        diff = parity(reference, exported, crops)
        if not diff <= PARITY_TOLERANCE:  # `not <=` so that NaN fails too
            raise AgeCliError(f"export failed the parity check: the {fmt} model's ages differ from PyTorch's by up "
                              f"to {diff:.4g} years on {len(crops)} {source} (limit {PARITY_TOLERANCE}); "
                              f"nothing was written")
    return ExportResult(out, fmt, meta, diff, len(crops), source)


def earlier_export(path: Path) -> bool:
    """True for a file `age export` wrote (it carries agecli metadata): the only existing file --output replaces."""
    try:
        if file_kind(path) == "torchscript":  # read as a zip listing, never loaded
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(f"extra/{METADATA_KEY}.json") for n in z.namelist())
        import onnx

        return any(p.key == METADATA_KEY for p in onnx.load(str(path), load_external_data=False).metadata_props)
    except Exception:  # not a zip, not a protobuf: not ours
        return False


def parity(reference, exported, crops: np.ndarray) -> float:
    """Largest |difference| in years (age, and std where present) over the crops.

    The exported model runs once on the whole batch and once one crop at a time, which checks the
    dynamic batch dimension too.
    """
    ref_age, ref_std = reference.run(crops)
    runs = [exported.run(crops)] + [exported.run(crops[i: i + 1]) for i in range(min(len(crops), 4))]
    diffs = [np.abs(runs[0][0] - ref_age)]
    if ref_std is not None:
        if runs[0][1] is None:
            return float("inf")
        diffs.append(np.abs(runs[0][1] - ref_std))
    for i, (age, _) in enumerate(runs[1:]):
        diffs.append(np.abs(age - ref_age[i: i + 1]))
    return float(max(d.max() for d in diffs))


def parity_crops(paths, preprocess: Preprocess) -> tuple[np.ndarray, str]:
    """(N, S, S, 3) uint8 crops to compare on, and a few words saying what they are: the first
    PARITY_COUNT readable images of `paths` (files, folders, globs; each used whole as a face crop), or
    by default seeded synthetic faces, the same on every machine."""
    if paths is None:
        return synthetic_faces(PARITY_COUNT, preprocess.crop_size, seed=0), "synthetic faces"
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    crops = []
    for item in iter_images(paths):
        if len(crops) == PARITY_COUNT:
            break
        if item.problem is None:
            try:
                crops.append(crop_batch(load_image(item.path), None, preprocess)[0])
            except ImageError:
                continue
    if not crops:
        raise AgeCliError(f"no readable parity images in {', '.join(map(str, paths))}")
    return np.stack(crops), "parity images"


def _write_onnx(wrapper: nn.Module, example: np.ndarray, meta: dict, path: Path) -> None:
    import onnx

    outputs = meta["outputs"]
    buf = io.BytesIO()
    with warnings.catch_warnings():  # tracer notes on shapes that are constant for a fixed crop size
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (torch.from_numpy(example),), buf, dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]})
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name, proto.producer_version = "agecli", agecli.__version__
    proto.doc_string = "Age estimation. " + meta["input"]["how"]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _write_torchscript(wrapper: nn.Module, example: np.ndarray, meta: dict, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, (torch.from_numpy(example),), check_trace=False)
        # torch.jit.save is deprecated in favour of torch.export, but TorchScript is what C++/mobile consumers load
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
