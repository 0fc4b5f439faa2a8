"""Shared steps of the real-browser tests: start headless Chromium, sign in, wait for the first item."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


def signed_in_page(pw: Any, url: str, name: str, password: str) -> tuple[Any, Any]:
    """(browser, page) with ``name`` signed in and the Label tab's first item on screen; close the
    browser when done."""
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(url)
    page.get_by_label(re.compile("username", re.I)).fill(name)
    page.get_by_label(re.compile("password", re.I)).fill(password)
    page.keyboard.press("Enter")
    page.wait_for_function("() => /item #\\d+/.test(document.querySelector('#why')?.innerText || '')",
                           timeout=30_000)
    page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a field
    return browser, page
