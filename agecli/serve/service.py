"""The model behind the server: one Predictor, loaded once and shared by every request.

Requests run in worker threads, off the event loop. Decoding a photo runs in parallel; the detector and
the age model run one photo at a time under a lock, because each already spreads its work over the
cores, and a second photo computed beside it would only make both slower. For more throughput on a
larger machine, `age serve --workers N` starts N processes, each with its own model.
"""

from __future__ import annotations

import io
import math
import os
import threading
import warnings

import anyio
from PIL import Image

from agecli.data.imageio import MAX_PIXELS, decode_image_bytes
from agecli.errors import AgeCliError
from agecli.modelio.builtin import is_shipped
from agecli.predict.predictor import Predictor
from agecli.predict.results import PhotoResult
from agecli.serve.upload import ApiError

UPLOAD_NAME = "upload"  # how error messages name the photo: the client knows which one it sent


class ModelService:
    def __init__(self, predictor: Predictor, max_pixels: int = MAX_PIXELS):
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.card = model_card(predictor)
        self._model_lock = threading.Lock()
        # requests in worker threads at once: bounds memory (a 50-megapixel photo is 150 MB of pixels)
        self._threads = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))

    async def predict_async(self, data: bytes) -> dict:
        """predict() in a worker thread, so the event loop keeps serving other requests meanwhile."""
        return await anyio.to_thread.run_sync(self.predict, data, limiter=self._threads)

    def predict(self, data: bytes) -> dict:
        """The JSON answer for one photo's bytes; ApiError (422) when they are not a usable image."""
        check_pixels(data, self.max_pixels)
        try:
            image = decode_image_bytes(data, UPLOAD_NAME)
        except AgeCliError as err:  # ImageError: not an image, truncated, too small...
            raise ApiError(422, str(err)) from None
        with self._model_lock:
            result = self.predictor.predict_image(image, UPLOAD_NAME)
        if result.status == "error":  # the model gave a NaN age: the server's fault, never an answer
            raise ApiError(500, result.error)
        return photo_json(result, self.card["name"])


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Refuse a photo over the pixel limit from its header, before a single pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the check below says it better
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except Exception:
        return  # unreadable header: the decoder names the problem
    if width * height > max_pixels:
        raise ApiError(422, f"{UPLOAD_NAME}: image is {width}x{height} ({width * height / 1e6:.1f} megapixels), "
                            f"over the --max-megapixels limit of {max_pixels / 1e6:g}")


def photo_json(result: PhotoResult, model_name: str) -> dict:
    width, height = result.size
    faces = [{"box": [round(v, 1) for v in face.box],
              "score": None if face.score is None else round(float(face.score), 4),
              "age": round(face.age, 2),
              "spread": None if face.spread is None else round(face.spread, 2)} for face in result.faces]
    return {"model": model_name, "image": {"width": width, "height": height}, "faces": faces,
            "message": result.error}  # "no face found" when there is none


def model_card(predictor: Predictor) -> dict:
    """What GET /v1/model tells: name, architecture, metrics, licence, preprocessing."""
    backend = predictor.backend
    if hasattr(backend, "state"):  # a checkpoint: everything is in its state
        from agecli.models import (
            describe,  # imports torch, which an ONNX model is served without
        )

        state, metadata = backend.state, {}
        info, architecture = state.get("info", {}), describe(state["model"])
        metrics = info.get("test_metrics", state.get("metrics", {}))
    else:  # an export: its metadata records the checkpoint's info and metrics
        metadata = getattr(backend, "metadata", {})
        info, architecture = metadata.get("info", {}), backend.model_name
        metrics = info.get("test_metrics", metadata.get("source", {}).get("metrics", {}))
    card = {"name": predictor.model_path.stem, "file": predictor.model_path.name,
            "builtin": is_shipped(predictor.model_path),
            "architecture": architecture, "backend": backend.kind, "detector": predictor.detector_name,
            "trained_on": info.get("trained_on", ""), "metrics": metrics,
            "licence": info.get("licence") or "not stated", "preprocess": backend.preprocess.public_dict()}
    return finite(card)


def finite(value):
    """JSON has no NaN or infinity: they become null (a metric that was never measured, for example)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "item"):  # numpy and torch scalars
        return finite(value.item())
    return value
