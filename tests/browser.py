"""Headless Chromium for page tests: Debian's `chromium` driven by Playwright (no browser download).

`.ci/run` installs both. Where either is missing the tests skip, unless CI=true, where they fail: a page
test that silently skips in CI would prove nothing.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    found = os.environ.get("AGECLI_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    return found


def _missing(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser test cannot run in CI: {why}")
    pytest.skip(why)


@contextmanager
def chromium_page(width: int = 1280, height: int = 900):
    """A fresh page; yields (page, console_errors), where console_errors collects console errors and page errors."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    path = chromium_path()
    if path is None:
        _missing("no chromium on PATH (apt-get install chromium)")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors
        finally:
            browser.close()
