"""The shapes of the API's answers, as OpenAPI documents them at /docs and /openapi.json."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class Face(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in pixels of the upright photo (EXIF rotation applied)")
    score: Optional[float] = Field(description="the face detector's confidence, 0 to 1")
    age: float = Field(description="estimated age in years")
    spread: Optional[float] = Field(description="one standard deviation of the predicted age distribution, "
                                                "in years; null for models without a distribution")


class ImageSize(BaseModel):
    width: int
    height: int


class Prediction(BaseModel):
    model: str = Field(description="the model's name (its file name without the extension)")
    image: ImageSize
    faces: list[Face] = Field(description="one entry per face found, in the detector's order")
    message: Optional[str] = Field(description="why there are no faces ('no face found'), else null")


class ModelCard(BaseModel):
    name: str
    file: str
    builtin: bool = Field(description="whether this is the model shipped inside agecli")
    architecture: str
    backend: str = Field(description="pytorch, onnx or torchscript")
    detector: str
    trained_on: str
    metrics: dict[str, Any] = Field(description="test metrics the model records (MAE, CA(3), CA(5)...)")
    licence: str
    preprocess: dict[str, Any] = Field(description="crop geometry, input size, mean/std, channel order")


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong with the request, in one line")
