"""The FastAPI application: the API, its docs, the page at / and errors as one-line JSON.

    POST /v1/predict   a photo (multipart field `image`, or the raw bytes) -> every face with its age
    GET  /v1/model     the model's card: name, metrics, licence, preprocessing
    GET  /health       liveness, never behind the token
    GET  /docs, /openapi.json, and the page: / with its assets under /static/

With a token, every route but /health needs `Authorization: Bearer TOKEN`, except the page and its
assets: a browser cannot send that header when it opens a URL, and they are the same files as in the
package. The page asks for the token and sends it with its API calls.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

import agecli
from agecli.serve.schemas import ErrorBody, Health, ModelCard, Prediction
from agecli.serve.service import ModelService
from agecli.serve.settings import DEFAULT_MAX_BYTES, ServeSettings
from agecli.serve.upload import FIELD, ApiError, image_bytes, read_body

STATIC = Path(__file__).resolve().parent / "static"
# The page loads nothing from elsewhere; this makes the browser refuse it if it ever tried.
PAGE_POLICY = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"
ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 413, 415, 422)}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": [FIELD], "properties": {
        FIELD: {"type": "string", "format": "binary", "description": "the photo: JPEG, PNG, WebP, TIFF, BMP..."}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "the photo's bytes as the whole body"}},
}}}
log = logging.getLogger("agecli.serve")


def create_app(service: ModelService, token: Optional[str] = None, max_bytes: int = DEFAULT_MAX_BYTES) -> FastAPI:
    app = FastAPI(title="agecli", version=agecli.__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  description="Estimate the age of every face in a photo. "
                              f"`curl -F {FIELD}=@photo.jpg http://HOST:PORT/v1/predict`")
    app.state.service = service
    guarded = [Depends(token_check(token))] if token else []
    add_error_handlers(app)
    add_api(app, service, max_bytes, guarded)
    add_docs(app, guarded)
    add_page(app)
    return app


def token_check(token: str):
    scheme = HTTPBearer(auto_error=False, description="the token given to `age serve --token`")
    expected = token.encode()

    def check(credentials: Optional[HTTPAuthorizationCredentials] = Depends(scheme)) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not hmac.compare_digest(given, expected):  # constant time: no guessing it byte by byte
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'",
                           headers={"WWW-Authenticate": "Bearer"})

    return check


def add_api(app: FastAPI, service: ModelService, max_bytes: int, guarded: list) -> None:
    @app.get("/health", response_model=Health, tags=["service"])
    def health() -> dict:
        """Whether the server is up (the model is loaded before the server starts listening)."""
        return {"status": "ok"}

    @app.get("/v1/model", response_model=ModelCard, dependencies=guarded, responses=ERRORS, tags=["model"])
    def model() -> dict:
        """The model being served: name, architecture, test metrics, licence and preprocessing."""
        return service.card

    @app.post("/v1/predict", response_model=Prediction, dependencies=guarded, responses=ERRORS,
              openapi_extra=PREDICT_BODY, tags=["model"])
    async def predict(request: Request) -> dict:
        """Every face in one photo: its box, the detector's score, the age and its spread.

        Send the photo as the multipart field `image` or as the raw request body. The photo is read
        into memory and decoded from there; nothing is written to disk.
        """
        body = await read_body(request, max_bytes)
        return await service.predict_async(image_bytes(request.headers.get("content-type", ""), body))


def add_docs(app: FastAPI, guarded: list) -> None:
    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="agecli API")


def add_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def add_error_handlers(app: FastAPI) -> None:
    """Every error is {"error": "one line"} with a 4xx status; a bug is a 500 without a traceback."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return error_response(err.status, err.message, err.headers)

    @app.exception_handler(HTTPException)  # 404 for an unknown path, 405 for a wrong method...
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error_response(err.status_code, f"{err.detail}: {request.method} {request.url.path}", err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}" for e in err.errors()]
        return error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def bug(request: Request, err: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=err)  # the trace stays in the log
        return error_response(500, f"internal error ({type(err).__name__}); the server log has the details")


def error_response(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(jsonable_encoder({"error": " ".join(str(message).split())}), status, headers=headers)


def app_from_environment() -> FastAPI:
    """The app for each `--workers N` process: uvicorn imports it and reads the settings from the environment."""
    return build_app(ServeSettings.from_json(os.environ[ServeSettings.ENV]))


def build_app(settings: ServeSettings):
    """Load the model once and wrap it in the app; every request shares it."""
    from agecli.predict.predictor import Predictor
    from agecli.system.device import keep_freed_memory

    keep_freed_memory()  # as `age predict` runs: reuse activation buffers between requests
    predictor = Predictor(settings.model, detector=settings.detector, device=settings.device)
    return create_app(ModelService(predictor, settings.max_pixels), settings.token, settings.max_bytes)
