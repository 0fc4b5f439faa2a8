"""The Grid tab of a project with two label fields, through its public client: `/grid_field`
picks the field the pages label; its classes, suggestions, labels, undo and "more like this"
follow it, and an item labelled in one field still comes on the other field's pages."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_grid_tab import page_of, shown_ids
from test_label_tab import human_labels

from storage import db, labels, pages, versions
from storage.tables import ModelVersion, Prediction
from tests.labeler.conftest import CLASSES, EMB_DIM

COLOURS = ["dark", "light"]


@pytest.fixture
def project(project):  # noqa: ANN001, ANN201 - the conftest project with a second field
    project.add_field("colour", COLOURS)
    return project


@pytest.fixture
def two_heads(labeller):  # noqa: ANN001, ANN201
    """The labeller serving a version with a head per field: item k's colour is dark for even k."""
    ids = labeller.item_ids
    rng = np.random.default_rng(7)

    def fn(s):  # noqa: ANN001, ANN202
        v = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="IMAGENET1K_V1", mode="head",
                                             classes=CLASSES, artifacts={"fields": {"colour": {"classes": COLOURS}}}))
        rows = []
        for k, i in enumerate(ids):
            dark = 0.9 - 0.01 * k if k % 2 == 0 else 0.1 + 0.01 * k
            colour = {"pred": COLOURS[0] if dark > 0.5 else COLOURS[1], "confidence": max(dark, 1 - dark),
                      "margin": abs(2 * dark - 1), "entropy": 0.5, "probs": [dark, 1 - dark]}
            rows.append(Prediction(item_id=i, model_version_id=v.id, row=k, pred=CLASSES[k % 3], confidence=0.8,
                                   margin=0.6, entropy=0.5, probs=np.roll([0.8, 0.1, 0.1], k % 3).tolist(),
                                   fields={"colour": colour}))
        versions.add_predictions(s, rows)
        return v.id

    vid = db.write(labeller.project.engine, fn)
    labeller.fakes.embeddings[vid] = (np.asarray(ids, dtype=np.int64),
                                      rng.normal(size=(len(ids), EMB_DIM)).astype(np.float32))
    labeller.version_id = vid
    return labeller


def test_a_page_of_another_field(two_heads) -> None:  # noqa: ANN001
    labeller = two_heads
    ids = labeller.item_ids
    c = labeller.client("ann")
    out = c.predict("colour", api_name="/grid_field")
    page_html, head = out[0], out[1]
    assert 'data-field="colour"' in page_html and "(colour)" in head
    assert re.search(r'data-cls="([^"]+)"', page_html).group(1) == "dark"  # the field's first class with items
    shown = shown_ids(page_html)
    assert shown == [ids[k] for k in range(0, len(ids), 2)]  # the dark ones, most confident first
    # The field stays chosen for this browser: the class picker names colour classes.
    with pytest.raises(Exception, match="not in the list of choices"):
        c.predict("dress", api_name="/grid_open")
    payload = {"page": page_of(page_html), "cls": "dark", "field": "colour", "shown": shown, "marked": shown[:1]}
    out = c.predict(json.dumps(payload), api_name="/grid_confirm")
    rows = human_labels(labeller.project, "ann")
    assert {(r.field, r.label) for r in rows} == {("colour", "dark")}
    assert sorted(r.item_id for r in rows) == sorted(shown[1:])
    assert all(r.suggestion == "dark" and r.decision == "accepted" and r.confidence > 0.5 for r in rows)
    # Labelled in colour, those items are still free for a page of the category.
    with db.session(labeller.project.engine) as s:
        assert set(pages.free_items(s, shown)) == set(shown) - set(shown[:1])  # the marked one waits in the queue
        assert pages.free_items(s, shown, field="colour") == []
    # bob's category page: the model's dress items, those labelled in colour among them.
    # After the confirm ann holds the next colour page (the light ones: odd k); ids[0] was marked,
    # it waits in the Label tab's queue. Left of the dress items (k = 0, 3, 6, 9): ids[6].
    assert 'data-cls="light"' in out[0]
    cat_ids = shown_ids(labeller.client("bob").predict("(next class)", api_name="/grid_open")[0])
    assert cat_ids == [ids[6]]
    out = c.predict(api_name="/grid_undo")
    assert f"undid page {payload['page']}" in out[2] and 'data-field="colour"' in out[0]
    with db.session(labeller.project.engine) as s:
        assert labels.count_labelled(s, "colour") == 0 and pages.page_label_counts(s) == {}

def test_more_like_this_follows_the_field_on_screen(two_heads) -> None:  # noqa: ANN001
    c = two_heads.client("ann")
    first = c.predict(api_name="/start")
    item = int(next(o for o in first if isinstance(o, str) and "item #" in o).rsplit("item #", 1)[1].split()[0])
    c.predict(item_id=item, api_name="/next_field")  # the Label tab shows the item's colour
    out = c.predict(api_name="/more_like")
    assert 'data-field="colour"' in out[0] and re.search(r'data-cls="([^"]+)"', out[0]).group(1) in COLOURS
    assert item not in shown_ids(out[0])
