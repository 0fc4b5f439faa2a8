"""Real-browser runs: keyboard-only labelling, and a key pressed while the next photo is still
loading on a throttled network (it must not label a photo nobody saw)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.e2e.browser import ARGS, CHROMIUM, signed_in_page
from tests.labeler.conftest import PASSWORD, labeller  # noqa: F401  (the running-app fixture)
from tests.labeler.test_label_tab import human_labels

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at "
                                                  "/usr/bin/chromium (apt-get install chromium)")]

# The page names an item (#item-id), its photo (item-<id>.jpg) has finished loading, and the
# why-line shows that item (innerText: what is rendered, so not while the panel is hidden).
PHOTO_READY = """() => {
  const id = document.querySelector('#item-id input')?.value;
  const img = document.querySelector('#photo img');
  return !!id && !!img && decodeURIComponent(img.src).includes('item-' + Number(id) + '.jpg')
         && img.complete && img.naturalWidth > 0
         && !document.body.classList.contains('al-loading-label')
         && document.querySelector('#why').innerText.includes('item #' + Number(id));
}"""


@pytest.fixture
def page(labeller) -> Iterator:  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    with sync_api.sync_playwright() as pw:
        browser, page = signed_in_page(pw, labeller.url, "ann", PASSWORD)
        try:
            page.wait_for_function(PHOTO_READY, timeout=30_000)
            yield page
        finally:
            browser.close()


def current_item(page) -> int:  # noqa: ANN001
    m = re.search(r"item #(\d+)", page.locator("#why").inner_text())
    return int(m.group(1)) if m else -1


def test_keyboard_only_labelling(labeller, page, tmp_path):  # noqa: F811
    shown = []
    for key in ("Enter", "2", "s"):
        page.wait_for_function(PHOTO_READY, timeout=30_000)
        item = current_item(page)
        shown.append(item)
        page.keyboard.press(key)
        page.wait_for_function(
            f"() => {{ const m = /item #(\\d+)/.exec(document.querySelector('#why')?.innerText || '');"
            f" return m && Number(m[1]) !== {item}; }}", timeout=30_000)
    page.wait_for_timeout(500)  # let the attention map and side panel arrive for the picture
    page.screenshot(path=str(tmp_path / "label-tab.png"), full_page=True)
    rows = human_labels(labeller.project)
    assert [(r.item_id, r.annotator) for r in rows] == [(i, "ann") for i in shown]
    assert rows[0].decision == "accepted" and rows[0].label == rows[0].suggestion
    assert rows[1].decision == "corrected" and rows[1].label != rows[1].suggestion
    assert rows[2].decision == "skipped" and rows[2].label is None
    assert (tmp_path / "label-tab.png").stat().st_size > 10_000


def test_keys_while_the_next_photo_loads_label_nothing(labeller, page):  # noqa: F811
    """300 ms latency, 60 KB/s, and the next photo's download held back: the item's text reaches
    the page long before its photo. Keys and clicks then must record nothing, the item panel must
    say it is loading, and once the photo is in, everything on the page is that one item."""
    from storage import db
    from storage.versions import serving_prediction

    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 300,
                                                  "downloadThroughput": 60 * 1024, "uploadThroughput": 60 * 1024})
    x = current_item(page)
    held: list = []
    photo_url = re.compile(r"item-\d+\.jpg")

    def hold(route) -> None:  # noqa: ANN001
        held.append(route)

    page.route(photo_url, hold)  # hold every photo download until released below
    page.keyboard.press("s")
    page.wait_for_function(f"() => Number(document.querySelector('#item-id input')?.value) !== {x}",
                           timeout=30_000)
    y = int(page.locator("#item-id input").input_value())
    # The server's answer (the next item's text) is in; its photo is not. Keys and a click now:
    for key in ("Enter", "1", "2", "u", "s", "Backspace", "Enter"):
        page.keyboard.press(key)
        page.wait_for_timeout(60)
    page.locator("#btn-accept").click(force=True)
    page.wait_for_timeout(1500)  # room for any decision that got through to reach the server
    assert [(r.item_id, r.decision) for r in human_labels(labeller.project, "ann")] == [(x, "skipped")]
    assert page.evaluate("document.body.classList.contains('al-loading-label')")
    assert page.locator("#loading-label").is_visible()
    assert not page.locator("#suggestions").is_visible() or page.evaluate(
        "getComputedStyle(document.querySelector('#suggestions')).visibility") == "hidden"
    # Let the photo through: the page shows item y whole, and only now does a key label it.
    for route in held:
        route.continue_()
    page.unroute(photo_url)
    page.wait_for_function(PHOTO_READY, timeout=30_000)
    assert current_item(page) == y and int(page.locator("#item-id input").input_value()) == y
    with db.session(labeller.project.engine) as s:
        pred, version = serving_prediction(s, y)
    top = version.classes[max(range(len(pred.probs)), key=pred.probs.__getitem__)]
    assert top in page.locator("#suggestions").inner_text()
    assert top in page.locator("#pick-1").inner_text()
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => Number(document.querySelector('#item-id input')?.value) !== {y}",
                           timeout=30_000)
    page.wait_for_function(PHOTO_READY, timeout=30_000)
    rows = human_labels(labeller.project, "ann")
    assert [(r.item_id, r.decision) for r in rows] == [(x, "skipped"), (y, "accepted")]
    assert rows[1].label == top
    # The page ends consistent: why-line, item id and photo are the same (next) item.
    z = current_item(page)
    assert z not in (x, y) and int(page.locator("#item-id input").input_value()) == z
    assert f"item-{z}.jpg" in page.evaluate("decodeURIComponent(document.querySelector('#photo img').src)")


def test_an_empty_sign_in_names_what_is_missing(labeller):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            pg = browser.new_page()
            pg.goto(labeller.url)
            pg.get_by_label(re.compile("username", re.I)).fill("ann")
            pg.get_by_role("button", name=re.compile("log ?in", re.I)).click()
            note = pg.locator("#active-sign-in-missing")
            note.wait_for(timeout=10_000)
            assert note.inner_text() == "Enter your password to sign in."
            pg.get_by_label(re.compile("password", re.I)).fill(PASSWORD)
            pg.get_by_role("button", name=re.compile("log ?in", re.I)).click()
            pg.wait_for_function("() => /item #\\d+/.test(document.querySelector('#why')?.innerText || '')",
                                 timeout=30_000)
        finally:
            browser.close()
