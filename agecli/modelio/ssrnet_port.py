"""Import the checkpoint published by the public PyTorch port of SSR-Net into an agecli checkpoint.

The port's weights only need renaming: `agecli.models.ssrnet.SSRNet` computes the same function
(tests/test_port.py checks it against the port's own outputs). Its .pth is read weights-only, so a
file that would need arbitrary unpickling is refused before anything in it runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from agecli.data.preprocess import (
    DEFAULT_MARGIN,
    DEFAULT_SHIFT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
)
from agecli.errors import AgeCliError
from agecli.files.outputs import check_output_file
from agecli.files.safe_load import load_raw
from agecli.modelio.checkpoint import save_checkpoint
from agecli.models.ssrnet import SSRNet

_CONV = ("weight", "bias")
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_LINEAR = ("weight", "bias")


def _module_table() -> list[tuple[str, str, tuple[str, ...]]]:
    """(port module, our module, parameter names) for every module that holds weights.

    The port numbers stages fine-to-coarse in its backbone names (stage3 = first conv) and in its
    heads (stage1 = coarsest), while we follow the paper: fuse[0] is stage 1, the coarsest.
    """
    rows = []
    for port_stream, ours in (("stream1", "stream_a"), ("stream2", "stream_b")):
        # port Sequential index of the conv / BN inside each of its "stages" -> our block
        for port_stage, idx, block in (("stage3", 0, 1), ("stage2", 0, 2), ("stage1", 0, 3), ("stage1", 4, 4)):
            base = f"{port_stream}_{port_stage}"
            rows.append((f"{base}.{idx}", f"backbone.{ours}.block{block}.conv", _CONV))
            rows.append((f"{base}.{idx + 1}", f"backbone.{ours}.block{block}.bn", _BN))
    for n in (1, 2, 3):
        fuse = f"fuse.{n - 1}"
        for port_stream, side in (("stream1", "a"), ("stream2", "b")):
            block = f"funsion_block_{port_stream}_stage_{n}"  # sic: the port's spelling
            rows.append((f"{block}_before_PB.0", f"{fuse}.reduce_{side}", _CONV))
            rows.append((f"{block}_prediction_block.1", f"{fuse}.pred_{side}", _LINEAR))
        rows.append((f"stage{n}_FC_after_PB.0", f"{fuse}.fc", _LINEAR))
        rows.append((f"stage{n}_prob.0", f"{fuse}.p", _LINEAR))
        rows.append((f"stage{n}_index_offsets.0", f"{fuse}.eta", _LINEAR))
        rows.append((f"stage{n}_delta_k.0", f"{fuse}.delta", _LINEAR))
    return rows


# THE mapping: port state_dict key -> agecli SSRNet state_dict key (104 entries).
PORT_TO_AGECLI: dict[str, str] = {
    f"{port}.{name}": f"{ours}.{name}" for port, ours, names in _module_table() for name in names
}

# Hyper-parameters of the published weights (the port's defaults), as plain JSON values.
PORT_MODEL_KWARGS = {"stage_num": [3, 3, 3], "lambda_local": 1.0, "lambda_d": 1.0, "V": 101.0, "image_size": 64}

# The port fed cv2.imread (BGR) images, normalised with ImageNet's RGB statistics applied in B, G, R
# order. Our pipeline flips RGB to BGR when channel_order is 'BGR' and then applies mean/std as
# listed, which reproduces that exactly (mean[0] goes to the B channel).
PORT_PREPROCESS = Preprocess(
    input_size=64,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    channel_order="BGR",
    # MegaAge-Asian faces are tight aligned chips like UTKFace's, so predict frames detected faces the same way
    margin=DEFAULT_MARGIN,
    shift=DEFAULT_SHIFT,
    age_min=0,
    age_max=PORT_MODEL_KWARGS["V"],  # SSR-Net covers ages 0 to V
)

PORT_INFO = {
    "source": "SSR-Net PyTorch port",
    "licence": "none stated: do not redistribute",
    "trained_on": "MegaAge-Asian",
}


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def _port_state_dict(raw, src: Path) -> dict[str, torch.Tensor]:
    """The port's tensors from either {'state_dict': ...} or a bare state dict, without 'module.'."""
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise AgeCliError(f"{src}: not a state dict of tensors (nor a dict holding one under 'state_dict')")
    # DataParallel saves every key as module.<key>
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def check_port_state_dict(sd: dict[str, torch.Tensor], model: SSRNet, src: Path) -> None:
    """Raise one AgeCliError line naming the first few missing/unexpected keys and shape mismatches."""
    ours = model.state_dict()
    problems = [f"missing {k}" for k in PORT_TO_AGECLI if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in PORT_TO_AGECLI]
    problems += [
        f"shape {_shape(v)} vs {_shape(ours[PORT_TO_AGECLI[k]])} for {k}"
        for k, v in sd.items()
        if k in PORT_TO_AGECLI and v.shape != ours[PORT_TO_AGECLI[k]].shape
    ]
    if problems:
        more = f"; ({len(problems) - 3} more)" if len(problems) > 3 else ""
        raise AgeCliError(f"{src}: does not fit SSR-Net: {'; '.join(problems[:3])}{more}")


def _earlier_import(path: Path) -> bool:
    """True for a checkpoint this importer wrote: the only kind of existing file --output may replace."""
    try:
        state = load_raw(path)
    except AgeCliError:
        return False
    info = state.get("info") if isinstance(state, dict) else None
    return isinstance(info, dict) and info.get("source") == PORT_INFO["source"]


def import_ssrnet_port(src: str | Path, out: str | Path) -> dict:
    """Convert the port's .pth at `src` into an agecli checkpoint at `out`; returns a summary."""
    src, out = Path(src), Path(out)
    check_output_file(out, "--output", inputs=[src], written_by_us=_earlier_import)
    raw = load_raw(src)  # weights-only: pickled objects are refused, never run
    sd = _port_state_dict(raw, src)
    model = SSRNet(**PORT_MODEL_KWARGS)
    check_port_state_dict(sd, model, src)
    model.load_state_dict({PORT_TO_AGECLI[k]: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    model.eval()
    epoch = raw.get("epoch", 0) if isinstance(raw, dict) else 0
    epoch = int(epoch) if isinstance(epoch, (int, float)) else 0
    save_checkpoint(
        out,
        model=model,
        model_name="ssrnet",
        model_kwargs=PORT_MODEL_KWARGS,
        preprocess=PORT_PREPROCESS,
        info=PORT_INFO,
        epoch=epoch,
    )
    n_params = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "params": n_params, "epoch": epoch, "tensors": len(sd)}
