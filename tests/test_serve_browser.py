"""The page at / in headless Chromium, against `age serve` running as a real process on loopback."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.browser import chromium_page

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = ROOT / "examples" / "astronaut.png"
START_TIMEOUT = 180  # seconds: loading the model on a busy 2-core machine


DROP_FILE = """([data, name]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: "image/png"}));
    document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = "page-test-token"
# waited for with a locator: wait_for_function's polling evaluates a string, which the page's CSP refuses
MODEL_LOADED = re.compile(r"^model default")


@pytest.fixture
def server_url(request, tmp_path):
    """`age serve` with the built-in model on a free loopback port; stopped after the test.

    Parametrised indirectly with a token, it is started with AGECLI_SERVE_TOKEN set to it.
    """
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("AGECLI_SERVE_TOKEN", None)
    if getattr(request, "param", None):
        env["AGECLI_SERVE_TOKEN"] = request.param
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "agecli", "serve", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_healthy(url, process, tmp_path / "server.log")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"age serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    pytest.fail(f"age serve did not answer /health within {START_TIMEOUT} s:\n{log.read_text()}")


def test_page_labels_the_astronaut_with_the_apis_age(server_url, tmp_path):
    api = httpx.post(server_url + "v1/predict", files={"image": ("astronaut.png", ASTRONAUT.read_bytes())},
                     timeout=60).json()
    [expected] = api["faces"]
    with chromium_page() as (page, console_errors):
        page.goto(server_url)
        page.locator("#model", has_text=MODEL_LOADED).wait_for()
        assert page.locator("#token-form").is_hidden()  # no token on this server: nothing to ask
        page.set_input_files("#files", str(ASTRONAUT))
        page.wait_for_selector("figure.photo[data-done]", timeout=60_000)
        age_cell = page.locator("#faces tbody td.age")
        assert age_cell.count() == 1
        shown_age, shown_spread = age_cell.inner_text(), page.locator("#faces tbody td.spread").inner_text()
        exact_age = float(age_cell.get_attribute("data-age"))  # the API's number, before display rounding
        label = page.locator("svg text.label").text_content()
        screenshot = tmp_path / "serve_page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        box_on_screen = page.locator("svg rect.box").bounding_box()
        photo_on_screen = page.locator(".frame img").bounding_box()
        caption = page.locator("figure.photo figcaption").inner_text()
        assert console_errors == []

        # a file that is not a photo: the API's one-line error appears under it, the page keeps working
        page.set_input_files("#files", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"no pixels"}])
        page.wait_for_selector("figure.photo.failed figcaption")
        failure = page.locator("figure.photo.failed figcaption").inner_text()

        # dropped on the zone, as a user drags a photo from their desktop
        page.evaluate(DROP_FILE, [base64.b64encode(ASTRONAUT.read_bytes()).decode(), "dropped.png"])
        page.wait_for_selector("figure.photo[data-done] >> nth=1", timeout=60_000)
        dropped_ages = page.locator("#faces tbody td.age").all_inner_texts()

    assert exact_age == expected["age"]
    # one decimal on the page; JavaScript rounds ties up where Python rounds them to even, hence the 0.05
    assert re.fullmatch(r"\d+\.\d", shown_age) and float(shown_age) == pytest.approx(expected["age"], abs=0.05 + 1e-9)
    assert re.fullmatch(r"±\d+\.\d", shown_spread)
    assert float(shown_spread[1:]) == pytest.approx(expected["spread"], abs=0.05 + 1e-9)
    assert label == f"{shown_age} {shown_spread}"
    assert caption == "astronaut.png: 1 face"
    assert failure.startswith("notes.png: upload: not an image")
    assert dropped_ages == [shown_age, shown_age]
    # the box is drawn over the face: screen position / displayed size = API box / photo size
    scale = photo_on_screen["width"] / api["image"]["width"]
    x0, y0, x1, y1 = expected["box"]
    assert box_on_screen["x"] - photo_on_screen["x"] == pytest.approx(x0 * scale, abs=4)
    assert box_on_screen["y"] - photo_on_screen["y"] == pytest.approx(y0 * scale, abs=4)
    assert box_on_screen["width"] == pytest.approx((x1 - x0) * scale, abs=6)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")


@pytest.mark.parametrize("server_url", [TOKEN], indirect=True)
def test_page_asks_for_the_token_and_then_works(server_url):
    assert httpx.get(server_url + "v1/model").status_code == 401
    with chromium_page() as (page, console_errors):
        page.goto(server_url)
        page.wait_for_selector("#token-form:not([hidden])")
        assert "401" in " ".join(console_errors)  # the browser logs the refused call; nothing else failed
        page.fill("#token", "wrong")
        page.click("#token-form button")
        page.wait_for_selector("#token-message:text('missing or wrong token')")
        page.fill("#token", TOKEN)
        page.click("#token-form button")
        page.locator("#model", has_text=MODEL_LOADED).wait_for()
        assert page.locator("#token-form").is_hidden()
        page.set_input_files("#files", str(ASTRONAUT))
        page.wait_for_selector("figure.photo[data-done]", timeout=60_000)
        assert page.locator("#faces tbody td.age").count() == 1
        assert all("401" in error for error in console_errors), console_errors
