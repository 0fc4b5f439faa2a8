"""The Grid tab through its public client: open a page, confirm it with a mark, undo, more like this."""

from __future__ import annotations

import json
import re

from storage import db, pages
from tests.labeler.test_label_tab import human_labels


def shown_ids(page_html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-item="(\d+)"', page_html)]


def page_of(page_html: str) -> int:
    return int(re.search(r'data-page="(\d+)"', page_html).group(1))


def test_confirm_a_page_with_one_mark_then_undo_it(labeller):
    c = labeller.client("ann")
    out = c.predict("(next class)", api_name="/grid_open")
    page_html, head = out[0], out[1]
    ids = shown_ids(page_html)
    assert ids and "data:image/jpeg;base64," in page_html and "Page" in head
    cls = re.search(r'data-cls="([^"]+)"', page_html).group(1)
    # Another annotator asking for the same class gets none of these thumbnails.
    other = shown_ids(labeller.client("bob").predict(cls, api_name="/grid_open")[0])
    assert set(other).isdisjoint(ids)
    payload = {"page": page_of(page_html), "cls": cls, "shown": ids, "marked": ids[:1]}
    out = c.predict(json.dumps(payload), api_name="/grid_confirm")
    rows = human_labels(labeller.project, "ann")
    assert sorted(r.item_id for r in rows) == sorted(ids[1:])
    assert {r.label for r in rows} == {cls} and {r.round_id for r in rows} == {payload["page"]}
    assert f"{len(ids) - 1} labelled" in out[2]
    # The marked thumbnail is what the Label tab serves next to a third annotator... after the round's own items.
    with db.session(labeller.project.engine) as s:
        assert pages.page_label_counts(s) == {"ann": len(ids) - 1}
    out = c.predict(api_name="/grid_undo")
    assert f"undid page {payload['page']}" in out[2]
    with db.session(labeller.project.engine) as s:
        assert pages.page_label_counts(s) == {}


def test_a_forged_confirm_records_only_what_was_leased(labeller):
    c = labeller.client("ann")
    ids = shown_ids(c.predict("(next class)", api_name="/grid_open")[0])
    other = [i for i in labeller.item_ids if i not in ids][:2]
    page_html = c.predict("(next class)", api_name="/grid_open")[0]  # a new page releases the first
    payload = {"page": page_of(page_html), "cls": re.search(r'data-cls="([^"]+)"', page_html).group(1),
               "shown": shown_ids(page_html) + other, "marked": []}
    c.predict(json.dumps(payload), api_name="/grid_confirm")
    assert {r.item_id for r in human_labels(labeller.project, "ann")} == set(shown_ids(page_html))


def test_more_like_this_from_the_label_tab(labeller):
    c = labeller.client("ann")
    c.predict(api_name="/start")
    out = c.predict(api_name="/more_like")
    ids = shown_ids(out[0])
    assert ids and "nearest unlabelled items to #" in out[1]
    seed = int(re.search(r"items to #(\d+)", out[1]).group(1))
    assert seed not in ids


def test_find_by_photo_pages_the_nearest_unlabelled_items(labeller, tmp_path):
    from gradio_client import handle_file
    from PIL import Image

    ids, emb = labeller.fakes.embeddings[labeller.version_id]
    target = int(ids[5])

    def embed_photo(project, version_id, path):  # noqa: ANN001, ANN202
        assert version_id == labeller.version_id and path.endswith(".png")
        return emb[5] * 3.0, "shirt"  # the photo looks like item ids[5]; scale does not matter

    labeller.app.services.embed_photo = embed_photo
    photo = tmp_path / "query.png"
    Image.new("RGB", (40, 40), (10, 200, 30)).save(photo)
    out = labeller.client("ann").predict(handle_file(str(photo)), api_name="/grid_photo")
    found = shown_ids(out[0])
    assert found[0] == target and 'data-cls="shirt"' in out[0]
    assert "nearest to your photo" in out[1] and "calls it **shirt**" in out[2]
