"""One real-browser run: sign in, label three items with the keyboard only, check the store."""

from __future__ import annotations

import re

import pytest

from tests.e2e.browser import CHROMIUM, signed_in_page
from tests.labeler.conftest import PASSWORD, labeller  # noqa: F401  (the running-app fixture)
from tests.labeler.test_label_tab import human_labels

pytestmark = pytest.mark.e2e


def current_item(page) -> int:  # noqa: ANN001
    text = page.locator("#why").inner_text()
    m = re.search(r"item #(\d+)", text)
    return int(m.group(1)) if m else -1


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                                   "(apt-get install chromium)")
def test_keyboard_only_labelling(labeller, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    with sync_api.sync_playwright() as pw:
        browser, page = signed_in_page(pw, labeller.url, "ann", PASSWORD)
        try:
            shown = []
            for key in ("Enter", "2", "s"):
                item = current_item(page)
                shown.append(item)
                page.keyboard.press(key)
                page.wait_for_function(
                    f"() => {{ const m = /item #(\\d+)/.exec(document.querySelector('#why')?.innerText || '');"
                    f" return m && Number(m[1]) !== {item}; }}", timeout=30_000)
            page.wait_for_timeout(500)  # let the attention map and side panel arrive for the picture
            page.screenshot(path=str(tmp_path / "label-tab.png"), full_page=True)
        finally:
            browser.close()
    rows = human_labels(labeller.project)
    assert [(r.item_id, r.annotator) for r in rows] == [(i, "ann") for i in shown]
    assert rows[0].decision == "accepted" and rows[0].label == rows[0].suggestion
    assert rows[1].decision == "corrected" and rows[1].label != rows[1].suggestion
    assert rows[2].decision == "skipped" and rows[2].label is None
    assert (tmp_path / "label-tab.png").stat().st_size > 10_000
