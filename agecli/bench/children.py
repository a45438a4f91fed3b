"""The measurements of `age bench`, each run in a fresh interpreter (`python -m agecli.bench.children NAME
ARGS_JSON THREADS`, started by runner.run_child) so that its peak memory is its own. Each child imports only
what its measurement needs, inside its function, and prints one line: its rows and its peak memory."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from agecli.system.device import keep_freed_memory


def peak_mib() -> float:
    """This process's peak resident memory in MiB (Linux VmHWM; elsewhere ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def timed(step, items_per_step: int, seconds: float, min_steps: int = 3) -> dict:
    """Run step() until both `seconds` and `min_steps` are reached; items per wall- and per CPU-second."""
    steps, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while steps < min_steps or time.perf_counter() - wall0 < seconds:
        step()
        steps += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"items": steps * items_per_step, "wall": wall, "cpu": cpu}


def child_train(prepared: str, channels_last: bool, batch: int, epochs: int) -> list[dict]:
    import torch

    from agecli.config import resolve_config
    from agecli.data.cache import Batches, open_crops
    from agecli.report.progress import NullReporter
    from agecli.system.reproducibility import seed_everything
    from agecli.training import datasets, engine
    from agecli.training.losses import create_loss

    cfg = resolve_config("ssrnet/paper", {"data.manifest": prepared, "train.device": "cpu", "train.batch_size": batch,
                                          "train.channels_last": channels_last})
    folder, df = datasets.load_data(prepared)
    crops = open_crops(folder, cfg.data.cache_size)
    train_df, _ = datasets.split_rows(df, cfg)
    seed_everything(0)
    model = engine.build_model(cfg)
    preprocess = engine.preprocess_for(cfg, model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(cfg, model)
    loss_fn = create_loss(cfg.loss.name, cfg.loss.lambda_mean, cfg.loss.lambda_var)

    def batches(rows):
        return Batches(crops, rows["cache_row"].to_numpy(), rows["age"].to_numpy(), batch,
                       preprocess=preprocess, augment=cfg.data.augment,
                       shuffle=True, seed=0, channels_last=channels_last)

    def epoch(b):
        engine.train_one_epoch(model, b, loss_fn, optimizer, model.ages, NullReporter())

    setup = peak_mib()
    epoch(batches(train_df.iloc[: 3 * batch]))  # warm-up: allocator, oneDNN kernel choice; not timed
    full = batches(train_df)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for e in range(1, epochs + 1):
        full.set_epoch(e)  # a new shuffle each epoch, as in fit
        epoch(full)
    result = {"items": epochs * len(train_df), "wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}
    note = f"{len(train_df)} faces x {epochs} epochs, Adam + L1 ({cfg.preset})"
    return [{"task": "SSR-Net training, end to end", "variant": f"channels_last {'on' if channels_last else 'off'}",
             "batch": batch, "unit": "img/s", "target": "train", "note": note, "setup_mib": setup, **result}]


def child_infer(kind: str, checkpoint: str, onnx_path: str, crops_file: str, seconds: float, threads: int,
                task: str = "SSR-Net inference, uint8 crops -> ages") -> list[dict]:
    """Rows for batch 1 and 64; the targets are stated for SSR-Net's rows only."""
    import numpy as np

    crops = np.load(crops_file)
    note = ""
    if kind.startswith("onnxruntime"):
        import onnxruntime as ort

        from agecli.modelio.backends import OnnxBackend

        backend = OnnxBackend(Path(onnx_path), "cpu")
        if kind == "onnxruntime, threads set":
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            backend.session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
            note = f"intra_op_num_threads={threads}, sequential"
        else:
            note = "OnnxBackend as age predict builds it: onnxruntime picks its thread count"
        infer = backend.run
    else:
        import torch

        from agecli.modelio.backends import TorchBackend
        from agecli.modelio.export import ExportedAgeModel

        backend = TorchBackend(Path(checkpoint), "cpu")
        if kind == "pytorch eager":
            infer = backend.run
        else:
            wrapper = ExportedAgeModel(backend.model, backend.preprocess).eval()
            if kind == "torchscript trace+freeze":
                with torch.no_grad(), warnings.catch_warnings():  # shape checks are constant for one crop size
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    module = torch.jit.freeze(torch.jit.trace(wrapper, torch.from_numpy(crops[:2]), check_trace=False))
            else:
                module = torch.compile(wrapper, dynamic=False)

            def infer(x):
                with torch.inference_mode():
                    return module(torch.from_numpy(x))[0].numpy()
    setup, rows = peak_mib(), []  # onnxruntime rows: no torch imported, as in a torch-free service
    for batch in (1, 64):
        x = np.ascontiguousarray(crops[:batch])
        t0 = time.perf_counter()
        infer(x)  # warm-up (and, for torch.compile, the compilation)
        first = time.perf_counter() - t0
        for _ in range(2):
            infer(x)
        extra = f"first call {first:.1f} s (compiling)" if kind == "torch.compile" else ""
        target = ("ort64" if kind.startswith("onnx") else "torch64") if batch == 64 and task.startswith("SSR") else ""
        rows.append({"task": task, "variant": kind, "batch": batch, "unit": "img/s", "target": target,
                     "note": note or extra, "setup_mib": setup, **timed(lambda x=x: infer(x), batch, seconds)})
    return rows


def child_predict(model: str, photos: list[str], pipeline: bool = True) -> list[dict]:
    """pipeline: as `age predict` runs (the default); False: one photo after the other, as a server answers
    requests (benchmarks/serve_load.py)."""
    from agecli.data.image_files import iter_images
    from agecli.predict.pipeline import predict_photos
    from agecli.predict.predictor import Predictor

    predictor = Predictor(model, detector="default", device="cpu")
    setup = peak_mib()
    list(predictor.predict(photos[:2]))  # warm-up: lazy sessions, first-call allocations
    found = []
    # the pipeline decodes and detects ahead of the model and batches faces across photos
    run = (lambda: predict_photos(predictor, iter_images(photos))) if pipeline else lambda: predictor.predict(photos)
    result = timed(lambda: found.extend(run()), len(photos), 0, min_steps=1)
    faces = sum(len(r.faces) for r in found)
    note = f"{len(photos)} photos, {faces} faces, detector {predictor.detector_name}, model {Path(model).suffix[1:]}"
    return [{"task": "age predict, 448-px photos", "variant": f"{type(predictor.backend).__name__}", "batch": "",
             "unit": "photos/s", "target": "predict", "note": note, "setup_mib": setup, **result}]


CHILDREN = {"train": child_train, "infer": child_infer, "predict": child_predict}


def _child_main(name: str, args_json: str, threads: int | None) -> None:
    kwargs = json.loads(args_json)
    heap = kwargs.pop("heap_kept", False) and keep_freed_memory()
    uses_torch = not (kwargs.get("kind", "").startswith("onnx") or kwargs.get("model", "").endswith(".onnx"))
    if threads and uses_torch:  # onnxruntime children never import torch (OMP_NUM_THREADS is set for them)
        import torch

        torch.set_num_threads(threads)
    rows = CHILDREN[name](**kwargs)
    for row in rows:
        row["variant"] += " + heap kept" if heap else ""
    print("AGECLI_BENCH " + json.dumps({"rows": rows, "peak_mib": peak_mib()}))


if __name__ == "__main__" and len(sys.argv) >= 3:
    _child_main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
