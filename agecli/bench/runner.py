"""`age bench`: how fast SSR-Net trains and infers, how fast the built-in model infers, and how fast `age predict`
runs, on this machine.

Measured, each in a fresh Python subprocess (children.py), with glibc's default
malloc settings and, where marked "+ heap kept", with keep_freed_memory() (see there):
  * training, end to end from a prepared manifest: the memory-mapped crop cache, agecli's Batches,
    the model, Adam and the L1 loss through engine.train_one_epoch, as `age train` runs them; the
    first batches are a warm-up and are not timed; channels_last off and on;
  * inference on uint8 face crops (what a detector + crop gives) to ages, preprocessing included,
    at batch 1 and 64: PyTorch eager (predict.TorchBackend), TorchScript trace + freeze,
    torch.compile, and ONNX Runtime on the `age export` file (as `age predict` loads it, and with
    its thread count set);
  * the same for the built-in model (`default`), as `age predict` runs it: PyTorch with the heap kept, and
    its ONNX export;
  * `age predict` on photos, through its pipeline: decoding, the default face detector, crops and the
    model (no drawing).

Why subprocesses: a process's peak memory (VmHWM) never goes down, so within one process the second
measurement's peak would include the first's. Each child reports its own peak, and separately its peak
just before the first timed step (interpreter, torch and/or onnxruntime, model, data opened), so the
difference is what the work itself allocated.
Throughput is given per wall-clock second (what a user waits) and per CPU-second of that process
(what it cost; less sensitive to other work on the machine, which the header's load average shows).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

# Targets for a 2-core CPU, in items per wall-clock second: (minimum, what it is compared with)
TARGETS = {"train": (700, "reference ~230"), "torch64": (1500, "reference eager ~450"),
           "ort64": (3000, ""), "predict": (20, "")}


def run_child(name: str, n_threads: int | None, **kwargs) -> list[dict]:
    """One measurement in a fresh interpreter; its rows, each with the process's peak memory."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    if n_threads:
        env["OMP_NUM_THREADS"] = str(n_threads)
    cmd = [sys.executable, "-m", "agecli.bench.children", name, json.dumps(kwargs), str(n_threads or 0)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("AGECLI_BENCH ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [{"task": name, "variant": kwargs.get("kind", ""), "batch": "", "error": tail[:200]}]
    out = json.loads(lines[-1][len("AGECLI_BENCH "):])
    return [{**row, "peak_mib": out["peak_mib"]} for row in out["rows"]]


def _link_utkface(utk: Path, dest: Path, n: int) -> None:
    """Symlink n UTKFace faces, spread over the folder (all ages), into dest."""
    names = sorted(p for p in os.listdir(utk) if p.endswith(".jpg"))
    dest.mkdir(parents=True)
    for name in names[:: max(1, len(names) // n)][:n]:
        (dest / name).symlink_to(utk / name)


def _photos(folder: Path, limit: int | None) -> list[str]:
    from agecli.data.image_files import iter_images

    return [str(item.path) for item in iter_images([folder]) if item.problem is None][:limit]


def _bench_data(data: Path | None, tmp: Path, faces: int, photo_limit: int | None) -> tuple[Path, list[str], str]:
    """(prepared dataset, photos for `age predict`, what they are). With `data`, real faces from its
    utkface/ and photos from its fairface/; without, seeded synthetic ones, so `age bench` runs anywhere
    (speed does not depend on what the faces look like, only on their number and size)."""
    from agecli.data.prepare import prepare
    from agecli.data.synthetic import write_synthetic_dataset, write_synthetic_photos
    from agecli.errors import AgeCliError

    if data is None:
        prepared = prepare("csv", write_synthetic_dataset(tmp / "faces", faces, size=200), tmp / "prep").out
        photos = [str(p) for p in write_synthetic_photos(tmp / "photos", photo_limit or 270)]
        return prepared, photos, "synthetic faces and 448-px photos (pass --root for real ones)"
    for needed in ("utkface", "fairface"):
        if not (data / needed).is_dir():
            raise AgeCliError(f"{data / needed}: not found; --root needs a folder holding utkface/ and fairface/")
    _link_utkface(data / "utkface", tmp / "utk", faces)
    prepared = prepare("utkface", tmp / "utk", tmp / "prep").out
    return prepared, _photos(data / "fairface", photo_limit), f"UTKFace faces and FairFace photos from {data}"


def _bench_models(tmp: Path) -> tuple[Path, Path, str]:
    """(plain SSR-Net checkpoint for the training and inference rows, model for the predict rows, note).
    Inference uses plain SSR-Net, as the targets are stated (speed does not depend on the weights);
    predict uses what `age predict` runs by default."""
    import torch

    from agecli.data.preprocess import Preprocess
    from agecli.modelio.builtin import BUILTIN_MODEL
    from agecli.modelio.checkpoint import save_checkpoint
    from agecli.models import create_model

    checkpoint = tmp / "ssrnet.pt"
    torch.manual_seed(0)
    save_checkpoint(checkpoint, model=create_model("ssrnet"), model_name="ssrnet", model_kwargs={},
                    preprocess=Preprocess())
    if BUILTIN_MODEL.is_file():
        return checkpoint, BUILTIN_MODEL, "SSR-Net for its rows, the built-in model for its own and predict's"
    return checkpoint, checkpoint, "randomly initialised SSR-Net"


def _train_rows(prepared: Path, threads: int | None, epochs: int, on_step) -> list[dict]:
    rows = []
    for heap in (False, True):
        for channels_last in (False, True):
            on_step(f"training, channels_last {channels_last}, heap kept {heap}")
            rows += run_child("train", threads, prepared=str(prepared), channels_last=channels_last, batch=50,
                              epochs=epochs, heap_kept=heap)
    return rows


def _infer_rows(checkpoint: Path, crops_file: Path, tmp: Path, threads: int | None, quick: bool, seconds: float,
                on_step) -> list[dict]:
    import torch

    from agecli.modelio.export import export

    onnx_path = export(checkpoint, "onnx", tmp / "model.onnx").path
    kinds = [("pytorch eager", False), ("pytorch eager", True), ("torchscript trace+freeze", True)]
    kinds += [] if quick else [("torch.compile", True)]
    rows = []
    for kind, heap in kinds + [("onnxruntime", False), ("onnxruntime, threads set", False)]:
        on_step(f"inference, {kind}, heap kept {heap}")
        rows += run_child("infer", threads, kind=kind, checkpoint=str(checkpoint), onnx_path=str(onnx_path),
                          crops_file=str(crops_file), seconds=seconds,
                          threads=threads or torch.get_num_threads(), heap_kept=heap)
    return rows


def _builtin_infer_rows(model: Path, tmp: Path, threads: int | None, seconds: float, on_step) -> list[dict]:
    """The model `age predict` runs by default, on seeded uint8 crops of its own size (the content does not
    change the cost), as `age predict` runs it: PyTorch with the heap kept, and its ONNX export."""
    import numpy as np
    import torch

    from agecli.modelio.checkpoint import load_checkpoint, stored_preprocess
    from agecli.modelio.export import export
    from agecli.models import describe

    state = load_checkpoint(model)
    size = stored_preprocess(state).crop_size
    crops_file = tmp / "builtin_crops.npy"
    np.save(crops_file, np.random.default_rng(0).integers(0, 256, (64, size, size, 3), dtype=np.uint8))
    onnx_path = export(model, "onnx", tmp / "builtin.onnx").path
    task = f"built-in model ({describe(state['model'])}) inference, uint8 crops -> ages"
    rows = []
    for kind, heap in (("pytorch eager", True), ("onnxruntime", False)):
        on_step(f"inference, built-in model, {kind}")
        rows += run_child("infer", threads, kind=kind, checkpoint=str(model), onnx_path=str(onnx_path),
                          crops_file=str(crops_file), seconds=seconds, threads=threads or torch.get_num_threads(),
                          heap_kept=heap, task=task)
    return rows


def _predict_rows(model: Path, photos: list[str], tmp: Path, threads: int | None, on_step) -> list[dict]:
    from agecli.modelio.export import export

    model_onnx = export(model, "onnx", tmp / "predict.onnx").path
    rows = []
    for path, heap in ((model, False), (model, True), (model_onnx, False)):
        on_step(f"age predict, {Path(path).suffix[1:]} model, heap kept {heap}")
        rows += run_child("predict", threads, model=str(path), photos=photos, heap_kept=heap)
    return rows


def run_benchmarks(data: str | Path | None = None, quick: bool = False, threads: int | None = None,
                   on_step=lambda text: None) -> dict:
    """All measurements; {"rows": [...], "info": {...}}. data: a folder holding utkface/ and fairface/, or
    None for synthetic faces and photos. quick: smaller, shorter, and no torch.compile."""
    import numpy as np

    faces, epochs, seconds, photo_limit = (500, 1, 1.5, 60) if quick else (2000, 3, 4.0, None)
    with tempfile.TemporaryDirectory(prefix="agecli-bench-") as tmp:
        tmp = Path(tmp)
        on_step(f"preparing {faces} faces")
        prepared, photos, data_note = _bench_data(Path(data) if data else None, tmp, faces, photo_limit)
        np.save(tmp / "crops.npy", np.load(prepared / "crops_64.npy")[:64])
        checkpoint, predict_model, model_note = _bench_models(tmp)
        rows = (_train_rows(prepared, threads, epochs, on_step)
                + _infer_rows(checkpoint, tmp / "crops.npy", tmp, threads, quick, seconds, on_step)
                + (_builtin_infer_rows(predict_model, tmp, threads, seconds, on_step) if predict_model != checkpoint
                   else [])
                + _predict_rows(predict_model, photos, tmp, threads, on_step))
    return {"rows": rows, "info": _bench_info(threads, quick, model_note, data_note)}


def _bench_info(threads: int | None, quick: bool, model_note: str, data_note: str) -> dict:
    import onnxruntime
    import torch

    return {"command": " ".join(shlex.quote(a) for a in sys.argv), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "threads": threads or torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": _cpu_name(), "load": _load(), "model": model_note,
            "data": data_note, "python": platform.python_version(), "quick": quick}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def markdown(result: dict) -> str:
    """The results as a markdown table, with what was measured and how."""
    info = result["info"]
    lines = [f"`{info['command']}`", "",
             f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, Python {info['python']}; "
             f"{info['threads']} thread(s) on {info['cpus']} CPU(s) ({info['cpu']}); "
             f"load average at the end {info['load']}; model: {info['model']}; data: {info.get('data', '?')}"
             + ("; --quick" if info["quick"] else ""),
             "", "| task | variant | batch | per wall-s | per CPU-s | peak RSS MiB (before first step) | target (2-core CPU) | notes |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['task']} | {r['variant']} | | failed | | | | {r['error']} |")
            continue
        wall, cpu = r["items"] / r["wall"], r["items"] / r["cpu"] if r["cpu"] > 0 else float("nan")
        target = ""
        if r["target"] in TARGETS:
            minimum, reference = TARGETS[r["target"]]
            target = f"≥ {minimum:,} {r['unit']}{', ' + reference if reference else ''}: " \
                     f"**{'met' if wall >= minimum else 'missed'}**"
        lines.append(f"| {r['task']} | {r['variant']} | {r['batch']} | {wall:,.0f} {r['unit']} | {cpu:,.0f} | "
                     f"{r['peak_mib']:,.0f} ({r['setup_mib']:,.0f}) | {target} | {r['note']} |")
    lines += ["", ("Each training and predict row, and each inference variant (both batch sizes), ran in its "
                   "own Python process. Peak RSS is that process's high-water mark (VmHWM), interpreter and "
                   "libraries included; in brackets, its peak just before the first timed step (libraries, model, "
                   "data opened), so the difference is what the work itself allocated. onnxruntime rows never "
                   "import torch. Per CPU-s = items per CPU-second the process used (all its threads): on a busy "
                   "machine it is the steadier figure; per wall-s is what a user waits.")]
    return "\n".join(lines)
