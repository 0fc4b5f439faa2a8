"""One real-browser run of the Grid tab: a page of 24, one thumbnail marked with the keyboard,
Enter confirms: 23 labels of the class and one item queued for the Label tab."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select

from active.importer import import_candidates, scan_folder
from storage import db, versions
from storage.tables import Item, ModelVersion, Prediction, QueueEntry, Round
from tests.conftest import draw_image
from tests.e2e.browser import CHROMIUM, signed_in_page
from tests.labeler.conftest import CLASSES, EMB_DIM, PASSWORD, labeller  # noqa: F401  (the running-app fixture)
from tests.labeler.test_label_tab import human_labels

pytestmark = pytest.mark.e2e
PAGE = 24


def add_dress_page(labeller, tmp_path: Path) -> list[int]:  # noqa: ANN001, F811
    """24 more photos and a newer version that calls exactly those dress, most confident first."""
    photos = tmp_path / "more"
    for n in range(PAGE):
        draw_image(photos / f"d{n:02d}.png", 0, seed=500 + n, size=(96, 128))
    cands, _, _ = scan_folder(photos)
    import_candidates(labeller.project, cands, progress=False)

    def fn(s):  # noqa: ANN001, ANN202
        all_ids = list(s.exec(select(Item.id).order_by(Item.id)))
        new = all_ids[-PAGE:]
        v = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="IMAGENET1K_V1", mode="head",
                                             classes=CLASSES))
        rows = []
        for row, i in enumerate(all_ids):
            if i in new:
                p = 0.98 - 0.01 * new.index(i)
                probs = [p, 1 - p, 0.0]
            else:
                probs = [0.0, 0.7, 0.3]
            rows.append(Prediction(item_id=i, model_version_id=v.id, pred=CLASSES[probs.index(max(probs))],
                                   confidence=max(probs), probs=probs, row=row))
        versions.add_predictions(s, rows)
        return v.id, all_ids, new

    vid, all_ids, new = db.write(labeller.project.engine, fn)
    rng = np.random.default_rng(0)
    labeller.fakes.embeddings[vid] = (np.asarray(all_ids, dtype=np.int64),
                                      rng.normal(size=(len(all_ids), EMB_DIM)).astype(np.float32))
    return new


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                                                   "(apt-get install chromium)")
def test_confirm_a_page_with_one_thumbnail_marked(labeller, tmp_path):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright python package")
    dresses = add_dress_page(labeller, tmp_path)
    with sync_api.sync_playwright() as pw:
        browser, page = signed_in_page(pw, labeller.url, "ann", PASSWORD)
        try:
            page.get_by_role("tab", name="Grid").click()
            page.locator("#grid-head").wait_for(state="attached")
            page.locator("body").click(position={"x": 5, "y": 5})
            page.keyboard.press("n")  # the next class with items: dress
            page.wait_for_function(f"() => document.querySelectorAll('#grid-page .grid-thumb').length === {PAGE}",
                                   timeout=30_000)
            for key in ("ArrowRight", "ArrowRight", "ArrowRight", "Space"):
                page.keyboard.press(key)
            marked = page.locator("#grid-page .grid-thumb.marked")
            assert marked.count() == 1
            wrong = int(marked.get_attribute("data-item"))
            page.keyboard.press("Enter")
            page.wait_for_function("() => /23 labelled/.test(document.querySelector('#grid-note')?.innerText || '')",
                                   timeout=30_000)
            page.screenshot(path=str(tmp_path / "grid-tab.png"), full_page=True)
        finally:
            browser.close()
    assert wrong == dresses[3]  # three steps right from the most confident thumbnail
    rows = human_labels(labeller.project, "ann")
    assert len(rows) == PAGE - 1 and {r.label for r in rows} == {"dress"}
    assert sorted(r.item_id for r in rows) == sorted(i for i in dresses if i != wrong)
    assert {r.decision for r in rows} == {"accepted"} and len({r.round_id for r in rows}) == 1
    with db.session(labeller.project.engine) as s:
        queued = s.exec(select(QueueEntry.item_id, QueueEntry.score_name).join(Round)
                        .where(Round.strategy == "page-marked", Round.closed_at.is_(None))).all()
    assert [q[0] for q in queued] == [wrong] and "marked not dress" in queued[0][1]
    assert (tmp_path / "grid-tab.png").stat().st_size > 10_000
