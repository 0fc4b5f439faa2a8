"""Pages of the Grid tab: leasing, confirming with marks, undo, and how the rest of the tool sees
a label given on a page (history, status, export)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from active import grid, labeling
from active.commands import status
from active.errors import UserError
from active.export import ExportOptions, export
from active.history import history
from storage import db, labels, pages, work
from storage.tables import Label
from tests.active.activefixtures import add_items, add_label, add_labels, publish_version

N_DRESS, N_SHIRT = 30, 6


@pytest.fixture
def scored(project):  # noqa: ANN001, ANN201
    """40 pool items: 30 the model calls dress (item k the k-th most confident), 6 shirt, 4 shoes."""
    ids = add_items(project, N_DRESS + N_SHIRT + 4)
    probs = np.zeros((len(ids), 3))
    for k in range(len(ids)):
        c = 0 if k < N_DRESS else 1 if k < N_DRESS + N_SHIRT else 2
        probs[k, c] = 0.99 - k * 0.01
        probs[k, (c + 1) % 3] = 1 - probs[k, c]
    rng = np.random.default_rng(0)
    vid = publish_version(project, ids, rng.normal(size=(len(ids), 8)), probs, mode="head")
    add_labels(project, [(i, "shirt") for i in ids[:5]])  # imported labels do not keep items off pages
    return ids, vid


def human_rows(project) -> list[Label]:  # noqa: ANN001
    with db.session(project.engine) as s:
        rows = [r for g in labels.for_items(s).values() for r in g if r.kind == "human"]
    return sorted(rows, key=lambda r: r.id)


def test_a_page_is_the_most_confident_of_its_class_and_not_shared(project, scored):  # noqa: ANN001
    ids, vid = scored
    page = grid.open_class_page(project, "ann", "dress", size=24)
    assert page is not None and page.version_id == vid and page.score_name == "confidence"
    assert page.item_ids == ids[:24]
    assert [t.score for t in page.thumbs] == sorted((t.score for t in page.thumbs), reverse=True)
    other = grid.open_class_page(project, "bob", "dress", size=24)
    assert other is not None and other.item_ids == ids[24:N_DRESS]  # never ann's thumbnails
    # A page lease is not the annotator's single item: the Label tab still hands out work.
    assert grid.class_counts(project)[1] == {"shirt": N_SHIRT, "shoes": 4}
    # Taking the next class after dress skips the empty one and wraps around.
    assert grid.next_class({"dress": 0, "shirt": 2, "shoes": 1}, "shoes") == "shirt"


def test_confirm_labels_the_rest_and_queues_the_marked(project, scored):  # noqa: ANN001
    ids, vid = scored
    page = grid.open_class_page(project, "ann", "dress", size=24)
    wrong = page.item_ids[3]
    done = grid.confirm(project, "ann", page.page_id, page.item_ids, [wrong])
    assert (len(done.labelled), done.queued, done.lost) == (23, [wrong], [])
    rows = human_rows(project)
    assert len(rows) == 23 and {r.label for r in rows} == {"dress"} and {r.decision for r in rows} == {"accepted"}
    assert {r.round_id for r in rows} == {page.page_id} and rows[0].model_version_id == vid
    assert rows[0].confidence == pytest.approx(0.99)
    with db.session(project.engine) as s:
        assert not work.active_leases(s)  # the page's leases are released
    # A page label counts like any other: those items are not on the next page of dress, nor is
    # the marked one (it waits for a single look, and must not come back on a page meanwhile).
    nxt = grid.open_class_page(project, "ann", "dress", size=24)
    assert nxt.item_ids == ids[24:N_DRESS]
    grid.release(project, "ann")
    # The marked thumbnail is served on the Label tab, with the note as the reason.
    task = labeling.next_task(project, "cat")
    assert task is not None and task.item_id == wrong
    assert f"marked not dress on page {page.page_id}" in task.why()


def test_only_thumbnails_still_leased_are_recorded(project, scored):  # noqa: ANN001
    ids, _ = scored
    page = grid.open_class_page(project, "ann", "dress", size=10)
    bob = grid.open_class_page(project, "bob", "dress", size=5)
    done = grid.confirm(project, "ann", page.page_id, page.item_ids + bob.item_ids[:2], [])
    assert len(done.labelled) == 10 and done.lost == bob.item_ids[:2]
    again = grid.confirm(project, "ann", page.page_id, page.item_ids, [])  # a second tab's confirm
    assert again.labelled == [] and len(again.lost) == 10
    assert len(human_rows(project)) == 10
    with pytest.raises(UserError, match="among those shown"):
        grid.confirm(project, "bob", bob.page_id, bob.item_ids[:2], [ids[0]])
    with pytest.raises(UserError, match="no page"):
        grid.confirm(project, "bob", 9999, [], [])


def test_a_page_may_be_recorded_as_another_class(project, scored):  # noqa: ANN001
    page = grid.open_class_page(project, "ann", "shirt", size=6)
    grid.confirm(project, "ann", page.page_id, page.item_ids, [], cls="shoes")
    rows = human_rows(project)
    assert {r.label for r in rows} == {"shoes"} and {r.decision for r in rows} == {"corrected"}
    assert {r.suggestion for r in rows} == {"shirt"}
    with pytest.raises(UserError):
        grid.open_class_page(project, "ann", "hat")


def test_undo_takes_back_the_whole_latest_page(project, scored):  # noqa: ANN001
    first = grid.open_class_page(project, "ann", "dress", size=4)
    grid.confirm(project, "ann", first.page_id, first.item_ids, [])
    labeling_task = labeling.next_task(project, "ann")  # a single label between pages is not a page
    assert labeling_task is None  # (nothing queued for the Label tab here)
    second = grid.open_class_page(project, "ann", "dress", size=5)
    grid.confirm(project, "ann", second.page_id, second.item_ids, [second.item_ids[0]])
    undone = grid.undo_page(project, "ann")
    assert undone == (second.page_id, second.item_ids[1:])
    with db.session(project.engine) as s:
        current = labels.current(s, first.item_ids + second.item_ids)
    assert all(current[i].label == "dress" for i in first.item_ids)
    assert all(i not in current or current[i].source == "imported" for i in second.item_ids)
    assert grid.undo_page(project, "ann") == (first.page_id, first.item_ids)
    assert grid.undo_page(project, "ann") is None
    assert grid.undo_page(project, "bob") is None


def test_history_status_and_export_show_a_label_given_on_a_page(project, scored, tmp_path):  # noqa: ANN001
    ids, _ = scored
    add_label(project, ids[30], "shirt", kind="human", annotator="ann")  # one label given on the Label tab
    page = grid.open_class_page(project, "ann", "dress", size=3)
    grid.confirm(project, "ann", page.page_id, page.item_ids, [])
    item = page.item_ids[0]
    h = history(project, str(item))
    human = [r for r in h["labels"] if r["kind"] == "human"]
    assert human[0]["page"] == page.page_id and human[0]["decision"] == "accepted"
    assert h["current"]["label"] == "dress" and h["current"]["source"] == "single"
    assert all(r["page"] is None for r in history(project, str(ids[30]))["labels"])

    st = status.collect(project)
    assert st["on_page"] == {"ann": 3} and st["annotators"]["ann"]["accepted"] == 3
    assert "on a page" in status.render(st)
    grid.undo_page(project, "ann")
    assert status.collect(project)["on_page"] == {}
    page = grid.open_class_page(project, "ann", "dress", size=3)
    grid.confirm(project, "ann", page.page_id, page.item_ids, [])

    out = tmp_path / "out"
    export(project, ExportOptions(format="csv", out=out, only_human=True, progress=False))
    with (out / "labels.csv").open(newline="") as fh:
        rows = {int(r["item_id"]): r for r in csv.DictReader(fh)}
    assert {i: rows[i]["page"] for i in page.item_ids} == {i: str(page.page_id) for i in page.item_ids}
    assert rows[page.item_ids[0]]["source"] == "single" and rows[ids[30]]["page"] == ""


def test_more_like_this_page_takes_only_free_items(project, scored):  # noqa: ANN001
    ids, _ = scored
    held = grid.open_class_page(project, "bob", "dress", size=2)
    scored_items = [(i, 1.0 - k / 100) for k, i in enumerate(ids[:8])]
    page = grid.open_items_page(project, "ann", scored_items, cls="dress", seed_item=ids[0], size=4)
    assert page.item_ids == ids[2:6] and page.score_name == "cosine" and page.seed_item == ids[0]
    allow = grid.unlabelled_filter(project)
    grid.confirm(project, "ann", page.page_id, page.item_ids, [])
    assert allow(np.array(ids[:8])).tolist() == [True, True, False, False, False, False, True, True]
    assert held.item_ids == ids[:2]
    with db.session(project.engine) as s:
        assert pages.page_ids(s, [page.page_id, held.page_id, None]) == {page.page_id, held.page_id}


def test_the_upcoming_page_is_what_is_leased_next(project, scored):  # noqa: ANN001
    ids, vid = scored
    first = grid.open_class_page(project, "ann", "dress", size=10)
    upcoming = grid.upcoming_class_page(project, vid, "dress", size=10)
    assert [i for i, _ in upcoming] == ids[10:20] and upcoming[0][1].endswith(".jpg")
    grid.confirm(project, "ann", first.page_id, first.item_ids, [])
    assert grid.open_class_page(project, "ann", "dress", size=10).item_ids == [i for i, _ in upcoming]


def test_a_field_without_a_head_has_no_pages(project, scored):  # noqa: ANN001
    project.add_field("colour", ["black", "white"])
    with pytest.raises(UserError, match="no model with a head for field 'colour' yet"):
        grid.open_class_page(project, "ann", field="colour")
    with pytest.raises(UserError, match="no label field 'season'"):
        grid.open_class_page(project, "ann", field="season")
    with pytest.raises(UserError, match="is not in field 'colour'"):
        grid.open_class_page(project, "ann", "dress", field="colour")
    assert grid.class_counts(project, "colour") == (None, {})
    assert grid.open_class_page(project, "ann").field == "category"  # the default field's pages as before
