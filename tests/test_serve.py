"""`age serve` in process, through FastAPI's test client: every route, every bad input, the token."""

from __future__ import annotations

import builtins
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agecli.data.imageio import decode_image_bytes
from agecli.predict.predictor import Predictor
from agecli.serve.app import STATIC, create_app
from agecli.serve.service import ModelService
from tests.helpers import noise

ASTRONAUT = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def service() -> ModelService:
    """The built-in model with the default detector, loaded once for the module, as the server does."""
    return ModelService(Predictor())


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return TestClient(create_app(service))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response, status: int, *needles: str) -> str:
    """A JSON body {"error": one line}, the given status, and no trace of Python internals."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message and 'File "' not in message
    for needle in needles:
        assert needle in message, message
    return message


# ---------------------------------------------------------------------------- the routes

def test_predict_multipart_gives_each_face_as_the_library_does(client, service):
    data = ASTRONAUT.read_bytes()
    response = client.post("/v1/predict", files={"image": ("astronaut.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "default" and body["image"] == {"width": 512, "height": 512}
    assert body["message"] is None and len(body["faces"]) == 1
    face = body["faces"][0]
    expected = service.predictor.predict_image(decode_image_bytes(data, "astronaut")).faces[0]
    assert face["age"] == pytest.approx(expected.age, abs=0.005)
    assert face["spread"] == pytest.approx(expected.spread, abs=0.005) and face["spread"] > 0
    assert face["score"] == pytest.approx(expected.score, abs=1e-4) and 0.5 < face["score"] <= 1
    assert face["box"] == pytest.approx(list(expected.box), abs=0.05)
    x0, y0, x1, y1 = face["box"]
    assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512


def test_predict_raw_body_equals_multipart(client):
    data = ASTRONAUT.read_bytes()
    raw = client.post("/v1/predict", content=data, headers={"Content-Type": "image/png"})
    form = client.post("/v1/predict", files={"image": ("a.png", data, "image/png")})
    untyped = client.post("/v1/predict", content=data)
    assert raw.status_code == form.status_code == untyped.status_code == 200
    assert raw.json() == form.json() == untyped.json()


def test_photo_without_a_face_is_not_an_error(client):
    grey = np.full((120, 160, 3), 128, np.uint8)
    response = client.post("/v1/predict", files={"image": ("grey.png", png_bytes(grey), "image/png")})
    assert response.status_code == 200
    assert response.json()["faces"] == [] and response.json()["message"] == "no face found"
    assert response.json()["image"] == {"width": 160, "height": 120}


def test_model_card(client):
    card = client.get("/v1/model").json()
    assert card["name"] == "default" and card["builtin"] is True and card["backend"] == "pytorch"
    from agecli.modelio.builtin import BUILTIN_MODEL
    from agecli.modelio.checkpoint import load_model
    from agecli.models import describe

    _, preprocess, state = load_model(BUILTIN_MODEL)  # the card describes the shipped default as it is stored
    assert card["architecture"] == describe(state["model"]) and card["detector"] == "retinaface"
    assert 3 < card["metrics"]["mae"] < 8 and "non-commercial" in card["licence"]
    assert card["preprocess"]["size"] == preprocess.input_size and card["preprocess"]["margin"] == pytest.approx(-0.03)


def test_health_and_openapi_docs(client):
    assert client.get("/health").json() == {"status": "ok"}
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "image" in body["multipart/form-data"]["schema"]["properties"]
    assert "age" in spec["components"]["schemas"]["Face"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "/openapi.json" in docs.text


def test_page_and_its_assets_ship_in_the_package_without_any_cdn(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'type="file"' in page.text and "/static/app.js" in page.text and "/static/style.css" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
    for path in STATIC.iterdir():  # the only absolute URL allowed is SVG's namespace, which loads nothing
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)


def test_unknown_route_and_wrong_method_are_json(client):
    assert_error(client.get("/v2/nothing"), 404, "/v2/nothing")
    assert_error(client.get("/v1/predict"), 405)


# ---------------------------------------------------------------------------- bad input

def test_not_an_image(client):
    response = client.post("/v1/predict", files={"image": ("notes.txt", b"just some text\n" * 20, "text/plain")})
    assert_error(response, 422, "not an image")


def test_truncated_image(client):
    data = ASTRONAUT.read_bytes()
    assert_error(client.post("/v1/predict", files={"image": ("cut.png", data[: len(data) // 3], "image/png")}),
                 422, "truncated")


def test_image_too_small(client):
    assert_error(client.post("/v1/predict", content=png_bytes(noise(8, 8))), 422, "too small")


def test_image_over_the_megapixel_limit_is_refused_from_its_header(service, monkeypatch):
    strict = TestClient(create_app(ModelService(service.predictor, max_pixels=200_000)))
    decoded = []
    monkeypatch.setattr("agecli.serve.service.decode_image_bytes", lambda *a: decoded.append(a))
    message = assert_error(strict.post("/v1/predict", content=ASTRONAUT.read_bytes()), 422, "512x512",
                           "--max-megapixels limit of 0.2")
    assert "0.3 megapixels" in message and decoded == []  # refused before decoding


def test_upload_over_max_bytes(service):
    small = TestClient(create_app(service, max_bytes=10_000))
    data = ASTRONAUT.read_bytes()
    assert_error(small.post("/v1/predict", content=data), 413, "--max-bytes", "10,000")
    assert_error(small.post("/v1/predict", files={"image": ("a.png", data, "image/png")}), 413, "--max-bytes")
    chunks = (data[i: i + 4096] for i in range(0, len(data), 4096))  # no Content-Length: counted as it arrives
    assert_error(small.post("/v1/predict", content=chunks), 413, "--max-bytes")


def test_missing_field_empty_body_and_wrong_body_types(client):
    data = ASTRONAUT.read_bytes()
    assert_error(client.post("/v1/predict", files={"photo": ("a.png", data, "image/png")}), 400, "no 'image' field")
    assert_error(client.post("/v1/predict", data={"image": ""}, files={"other": ("x", b"x")}), 400, "empty upload")
    assert_error(client.post("/v1/predict"), 400, "empty upload", "-F image=@")
    assert_error(client.post("/v1/predict", json={"image": "photo.jpg"}), 415, "JSON body holds no photo")
    assert_error(client.post("/v1/predict", data={"image": "photo.jpg"}), 422, "not an image")


def test_raw_body_labelled_as_a_form_is_read_as_the_photo(client):
    """`curl --data-binary @photo.jpg` sends the photo with Content-Type application/x-www-form-urlencoded."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/v1/predict", content=ASTRONAUT.read_bytes(), headers=headers)
    assert response.status_code == 200 and len(response.json()["faces"]) == 1


def test_malformed_and_cut_off_multipart(client):
    headers = {"Content-Type": "multipart/form-data; boundary=XYZ"}
    assert_error(client.post("/v1/predict", content=b"garbage with no boundary at all", headers=headers),
                 400, "multipart")
    start = (b'--XYZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
             b"Content-Type: image/png\r\n\r\n")
    assert_error(client.post("/v1/predict", content=start + ASTRONAUT.read_bytes()[:2000], headers=headers),
                 400, "closing boundary")
    assert_error(client.post("/v1/predict", content=b"x", headers={"Content-Type": "multipart/form-data"}),
                 400, "boundary")


def test_uploads_are_decoded_in_memory_never_written(client, monkeypatch):
    """A 2.8 MB upload, over the size at which form parsers spool a file to disk: nothing is created."""
    created = []
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            created.append(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            created.append(file)
        return real_open(file, mode, *args, **kwargs)

    big = png_bytes(noise(960, 1000, seed=3))
    assert len(big) > 2_000_000
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    response = client.post("/v1/predict", files={"image": ("big.png", big, "image/png")})
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    assert created == []


# ---------------------------------------------------------------------------- the token

def test_token_guards_every_route_but_health_and_the_page(service):
    guarded = TestClient(create_app(service, token=TOKEN))
    good, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer not-the-token"}
    data = ASTRONAUT.read_bytes()
    calls = [("get", "/v1/model", {}), ("get", "/openapi.json", {}), ("get", "/docs", {}),
             ("post", "/v1/predict", {"content": data})]
    for method, path, kwargs in calls:
        for headers in ({}, wrong, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            response = getattr(guarded, method)(path, headers=headers, **kwargs)
            assert_error(response, 401, "Authorization: Bearer")
            assert response.headers["www-authenticate"] == "Bearer"
        assert getattr(guarded, method)(path, headers=good, **kwargs).status_code == 200, path
    assert guarded.get("/health").json() == {"status": "ok"}
    # the page and its assets are the package's files; a browser cannot send the header to open them
    assert guarded.get("/").status_code == guarded.get("/static/app.js").status_code == 200


def test_token_is_checked_before_the_upload_is_read(service):
    guarded = TestClient(create_app(service, token=TOKEN, max_bytes=100))
    assert_error(guarded.post("/v1/predict", content=b"x" * 1000), 401)
