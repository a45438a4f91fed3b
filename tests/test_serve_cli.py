"""`age serve` before it listens: options, checks, the warning, workers, other model formats."""

from __future__ import annotations

import json
import socket
import sys
from types import SimpleNamespace

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from agecli.cli.app import app as cli
from agecli.errors import AgeCliError
from agecli.serve import server
from agecli.serve.server import exposure_warning
from agecli.serve.settings import ServeSettings, max_pixels_from, parse_size
from tests.helpers import assert_one_line_error, noise, run_age, tiny_checkpoint
from tests.test_serve import png_bytes


def test_missing_server_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    result = CliRunner().invoke(cli, ["serve"])
    assert isinstance(result.exception, AgeCliError)
    assert str(result.exception) == "age serve needs uvicorn: pip install 'agecli[serve]'"


@pytest.mark.parametrize("text, expected", [("20MB", 20_000_000), ("500kB", 500_000), ("2MiB", 2 * 2**20),
                                            ("1000", 1000), ("1.5m", 1_500_000)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "20XB", "-5", "0", ""])
def test_bad_sizes_are_one_line_errors(text):
    with pytest.raises(AgeCliError, match="--max-bytes .*expected a size such as 20MB"):
        parse_size(text)


def test_megapixel_limit_is_bounded_by_the_decoder():
    assert max_pixels_from(12.5) == 12_500_000
    for bad in (0, -1, 51):
        with pytest.raises(AgeCliError, match="--max-megapixels"):
            max_pixels_from(bad)


def test_warning_only_beyond_loopback_without_a_token():
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("localhost", None) is None
    assert exposure_warning("::1", None) is None and exposure_warning("0.0.0.0", "t") is None
    for host in ("0.0.0.0", "192.168.1.20", "::", "myhost.example"):
        assert "without --token" in exposure_warning(host, None)


def test_busy_port_is_a_one_line_error_before_the_model_loads():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_age("serve", "--port", port, timeout=120)
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    assert "serving" not in result.stderr


def test_missing_model_is_a_one_line_error():
    result = CliRunner().invoke(cli, ["serve", "--model", "no/such/model.onnx", "--port", str(free_port())])
    assert isinstance(result.exception, AgeCliError) and "no such model file" in str(result.exception)


def fake_start(monkeypatch) -> list:
    """Stub the model and uvicorn: records what uvicorn.run was given."""
    calls = []
    card = {"name": "m", "backend": "pytorch", "detector": "none"}
    monkeypatch.setattr(server, "build_app", lambda settings: SimpleNamespace(state=SimpleNamespace(
        service=SimpleNamespace(card=card))))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def test_serve_warns_when_exposed_and_binds_loopback_by_default(monkeypatch):
    calls, said = fake_start(monkeypatch), []
    server.serve(ServeSettings(), port=free_port(), say=said.append)
    assert calls[0][1]["host"] == "127.0.0.1" and not any("warning" in s for s in said)
    server.serve(ServeSettings(), host="0.0.0.0", port=free_port(), say=said.append)
    assert calls[1][1]["host"] == "0.0.0.0" and said[-2].startswith("warning: listening on 0.0.0.0 without --token")
    said.clear()
    server.serve(ServeSettings(token="t"), host="0.0.0.0", port=free_port(), say=said.append)
    assert not any("warning" in s for s in said)


def test_workers_are_processes_that_build_the_app_from_the_environment(monkeypatch, tmp_path):
    calls = fake_start(monkeypatch)
    settings = ServeSettings(model=str(tiny_checkpoint(tmp_path / "m.pt", "ssrnet_dist")), detector="none",
                             token="t", max_bytes=20_000)
    monkeypatch.setenv(ServeSettings.ENV, "")
    server.serve(settings, port=free_port(), workers=3, say=lambda s: None)
    target, kwargs = calls[0]
    assert target == "agecli.serve.app:app_from_environment" and kwargs["factory"] and kwargs["workers"] == 3
    monkeypatch.undo()  # the real build_app, as a worker process runs it
    monkeypatch.setenv(ServeSettings.ENV, settings.to_json())
    from agecli.serve.app import app_from_environment

    client = TestClient(app_from_environment())
    headers = {"Authorization": "Bearer t"}
    assert client.get("/v1/model", headers=headers).json()["architecture"] == "ssrnet_dist"
    assert client.post("/v1/predict", content=b"x" * 30_000, headers=headers).status_code == 413
    face = client.post("/v1/predict", content=png_bytes(noise(64, 64)), headers=headers).json()["faces"]
    assert len(face) == 1 and face[0]["score"] is None and face[0]["spread"] > 0


def test_bad_workers_and_port(monkeypatch):
    fake_start(monkeypatch)
    with pytest.raises(AgeCliError, match="--workers 0"):
        server.serve(ServeSettings(), workers=0)
    with pytest.raises(AgeCliError, match="--port 70000"):
        server.serve(ServeSettings(), port=70000)


def test_onnx_export_is_served_with_its_recorded_card(tmp_path):
    from agecli.modelio.export import export
    from agecli.predict.predictor import Predictor
    from agecli.serve.app import create_app
    from agecli.serve.service import ModelService

    checkpoint = tiny_checkpoint(tmp_path / "best.pt", "ssrnet_dist", seed=2)
    onnx = export(checkpoint, "onnx").path
    client = TestClient(create_app(ModelService(Predictor(onnx, detector="none"))))
    card = client.get("/v1/model").json()
    assert card["name"] == "best" and card["file"] == "best.onnx" and card["backend"] == "onnx"
    assert card["architecture"] == "ssrnet_dist" and card["builtin"] is False
    assert card["preprocess"]["margin"] == 0.2 and card["licence"] == "not stated"
    json.dumps(card)  # plain JSON all the way down
    face = client.post("/v1/predict", content=png_bytes(noise(64, 64))).json()["faces"][0]
    assert face["box"] == [0.0, 0.0, 64.0, 64.0] and face["spread"] > 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
