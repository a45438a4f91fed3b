"""Running a model file: one interface over the three formats agecli writes.

Each backend has `run(crops) -> (ages, spreads | None)` on uint8 RGB crops of `crop_size` pixels and says
what it expects in `preprocess` (an agecli.data.preprocess.Preprocess):
  * a checkpoint (.pt): PyTorch, with cache.center_crop + to_model_input, as training feeds the model;
  * an ONNX export: onnxruntime only. torch is never imported on this path, so a service without torch
    can use it. The graph does the centre crop and normalisation itself (see agecli.modelio.export);
  * a TorchScript export: the same graph, run by torch.jit.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from agecli.data.imageio import safe_name
from agecli.errors import AgeCliError
from agecli.files.outputs import file_kind, file_problem
from agecli.modelio.limits import check_preprocess, check_side, type_name

METADATA_KEY = "agecli"  # ONNX metadata_props key / TorchScript extra file stem holding the export metadata



class TorchBackend:
    """An agecli checkpoint run by PyTorch, preprocessed exactly as training does."""

    kind = "pytorch"

    def __init__(self, path: Path, device: str = "auto", fold: bool = True):
        import torch

        from agecli.modelio.checkpoint import load_model
        from agecli.models.fuse import fold_batchnorm
        from agecli.system.device import select_device

        self.model, self.preprocess, self.state = load_model(path)
        if fold:  # the same ages to float rounding; Lite0 1.5x faster on CPU (benchmarks/model_speed.py)
            fold_batchnorm(self.model)
        self.model_name = self.state["model"]["name"]
        self.device = select_device(device)
        # channels_last on CPU: 1.45x faster for EfficientNet-Lite0 at batch 64, no slower for small ResNets
        self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.crop_size = self.preprocess.crop_size

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        from agecli.data.cache import center_crop, to_model_input

        p = self.preprocess
        with torch.no_grad():
            batch = center_crop(torch.from_numpy(np.ascontiguousarray(crops)), p.input_size)
            x = to_model_input(batch.to(self.device), p.mean, p.std, p.channel_order)
            x = x.contiguous(memory_format=self.memory_format)
            age, std = self.model.age_and_spread(self.model(x))
        return age.cpu().numpy(), None if std is None else std.cpu().numpy()



class OnnxBackend:
    """An `age export --format onnx` file run by onnxruntime; needs no torch."""

    kind = "onnx"

    def __init__(self, path: Path, device: str = "auto"):
        import onnxruntime as ort

        available = ort.get_available_providers()
        wants_cuda = device.startswith("cuda") or device == "auto"
        providers = ["CUDAExecutionProvider"] if wants_cuda and "CUDAExecutionProvider" in available else []
        if device.startswith("cuda") and not providers:
            raise AgeCliError(f"--device {device}: this onnxruntime has no CUDA provider; use --device cpu")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers + ["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise AgeCliError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise AgeCliError(f"{path}: not exported by `age export` (no '{METADATA_KEY}' metadata)")
        _read_metadata(self, meta[METADATA_KEY], path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outs = dict(zip(self.output_names, self.session.run(None, {self.input_name: np.ascontiguousarray(crops)})))
        spread = outs.get("spread", outs.get("std"))  # older exports named it std
        return outs["age"].astype(np.float32), None if spread is None else spread.astype(np.float32)



class TorchScriptBackend:
    """An `age export --format torchscript` file: the same graph as the ONNX export, run by torch.jit."""

    kind = "torchscript"

    def __init__(self, path: Path, device: str = "auto"):
        import torch

        from agecli.system.device import select_device

        extra = {f"{METADATA_KEY}.json": ""}
        self.device = select_device(device)
        with warnings.catch_warnings():  # torch.jit.load warns that TorchScript is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        if not extra[f"{METADATA_KEY}.json"]:
            raise AgeCliError(f"{path}: not exported by `age export` (no extra/{METADATA_KEY}.json metadata)")
        _read_metadata(self, extra[f"{METADATA_KEY}.json"], path)

    def run(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        with torch.no_grad():
            outs = self.module(torch.from_numpy(np.ascontiguousarray(crops)).to(self.device))
        age = outs[0].float().cpu().numpy()
        return age, outs[1].float().cpu().numpy() if len(outs) > 1 else None



def _read_metadata(backend, text: str | bytes, path: Path) -> None:
    """The export metadata (a JSON document) of an ONNX or TorchScript file, checked field by field."""
    where = safe_name(path)
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: nested thousands deep
        raise AgeCliError(f"{where}: its '{METADATA_KEY}' metadata is not valid JSON ({str(err)[:160]})") from None
    if not isinstance(meta, dict):
        raise AgeCliError(f"{where}: its '{METADATA_KEY}' metadata must be a JSON object, got {type_name(meta)}")
    for key in ("preprocess", "input"):
        if key not in meta:
            raise AgeCliError(f"{where}: its '{METADATA_KEY}' metadata has no '{key}'")
    if not isinstance(meta["input"], dict):
        raise AgeCliError(f"{where}: metadata input must be a JSON object, got {type_name(meta['input'])}")
    crop_size = check_side(meta["input"].get("size"), "metadata input.size", where)
    backend.metadata = meta  # all the export recorded (licence, metrics), for those who describe the model
    # the graph takes crops of input.size pixels, whatever the preprocess block says of the crop
    preprocess = check_preprocess(meta["preprocess"], where, field="metadata preprocess")
    if preprocess.input_size > crop_size:
        raise AgeCliError(f"{where}: metadata input.size {crop_size} is below preprocess.size {preprocess.input_size}")
    backend.preprocess = replace(preprocess, crop_size=crop_size)
    backend.model_name = str(meta.get("model", "?"))
    backend.crop_size = backend.preprocess.crop_size



def load_backend(path: str | Path, device: str = "auto", allow_torchscript: bool = False):
    """The backend for a model file, chosen by what the file is, never by its name alone.

    A TorchScript file is a program: torch.jit.load runs code from it. It is loaded only with
    allow_torchscript (`--allow-torchscript`); ONNX is the way to ship a model that is data.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise AgeCliError(f"{safe_name(path)}: {'no such model file' if problem == 'no such file' else problem}")
    if path.suffix.lower() == ".onnx":
        return OnnxBackend(path, device)
    if file_kind(path) == "torchscript":
        if not allow_torchscript:
            raise AgeCliError(f"{safe_name(path)}: is a TorchScript program, which runs code from the file when "
                              f"loaded; pass --allow-torchscript only for a file you trust, or use the .onnx export")
        return TorchScriptBackend(path, device)
    return TorchBackend(path, device)

