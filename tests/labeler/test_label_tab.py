"""The Label tab through its public client: sign in, accept, correct, skip, unsure, undo, leases."""

from __future__ import annotations

import pytest
from sqlmodel import select

from storage import db
from storage.tables import Label


def human_labels(project, annotator=None):  # noqa: ANN001, ANN201
    with db.session(project.engine) as s:
        q = select(Label).where(Label.kind == "human").order_by(Label.id)
        if annotator:
            q = q.where(Label.annotator == annotator)
        return list(s.exec(q))


def item_of(out) -> int:  # noqa: ANN001
    """The item id from the 'why' line of an item event's outputs."""
    why = next(o for o in out if isinstance(o, str) and "item #" in o)
    return int(why.rsplit("item #", 1)[1].split()[0])


def test_sign_in_is_required(labeller):
    from gradio_client import Client

    with pytest.raises(Exception, match="(?i)login|auth|credentials|401"):
        Client(labeller.url, auth=("ann", "wrong password"), verbose=False)


def test_accept_correct_skip_unsure_undo(labeller):
    c = labeller.client("ann")
    first = c.predict(api_name="/start")
    shown = item_of(first)
    # Accept: the label is the top suggestion, decision accepted, with the suggestion's confidence.
    out = c.predict(api_name="/accept")
    rows = human_labels(labeller.project, "ann")
    assert [(r.item_id, r.decision) for r in rows] == [(shown, "accepted")]
    assert rows[0].label == rows[0].suggestion and 0 < rows[0].confidence <= 1
    assert rows[0].model_version_id == labeller.version_id and rows[0].round_id is not None
    second = item_of(out)
    assert second != shown
    # Correct with the class picker to a class that is not the top suggestion.
    top = rows[0].suggestion
    with db.session(labeller.project.engine) as s:
        from storage.versions import serving_prediction

        pred, version = serving_prediction(s, second)
    other = next(c_ for c_ in version.classes if c_ != pred.pred)
    out = c.predict(other, api_name="/correct")
    third = item_of(out)
    # Pick the 2nd suggestion with key 2's endpoint: a correction to that class.
    out = c.predict(api_name="/pick_2")
    fourth = item_of(out)
    out = c.predict(api_name="/skip")
    fifth = item_of(out)
    out = c.predict(api_name="/unsure")
    rows = human_labels(labeller.project, "ann")
    got = [(r.item_id, r.decision, r.label) for r in rows]
    assert got[1] == (second, "corrected", other)
    assert got[2][0:2] == (third, "corrected") and got[2][2] != rows[2].suggestion
    assert got[3] == (fourth, "skipped", None)
    assert got[4] == (fifth, "unsure", None)
    assert top  # the first label had a suggestion
    # Undo appends an undo row for the unsure label and serves that item again.
    out = c.predict(api_name="/undo")
    assert item_of(out) == fifth
    rows = human_labels(labeller.project, "ann")
    assert len(rows) == 6 and rows[-1].decision == "undo" and rows[-1].undoes_id == rows[4].id
    out = c.predict(api_name="/accept")
    rows = human_labels(labeller.project, "ann")
    assert (rows[-1].item_id, rows[-1].decision) == (fifth, "accepted")


def test_attribution_and_side_panel(labeller):
    c = labeller.client("ann")
    out = c.predict(api_name="/start")
    item = item_of(out)
    overlay, text = c.predict(True, "gradcam", api_name="/attribution")
    assert overlay and "Grad-CAM" in text
    assert any(e[0] == item and e[2] == "gradcam" for e in labeller.fakes.explained)
    _, text = c.predict(True, "occlusion", api_name="/attribution")
    assert "Occlusion" in text
    assert c.predict(False, "gradcam", api_name="/attribution")[0] is None
    c.predict(api_name="/accept")
    progress, gallery = c.predict(api_name="/side")
    assert "labelled of 12" in progress and "in this round" in progress
    # The one labelled item (imported labels count too) is among the neighbours with its label.
    assert gallery and all(" · " in g["caption"] for g in gallery)


def test_two_annotators_never_share_an_item(labeller):
    from concurrent.futures import ThreadPoolExecutor

    a, b = labeller.client("ann"), labeller.client("bob")
    cur_a, cur_b = item_of(a.predict(api_name="/start")), item_of(b.predict(api_name="/start"))
    assert cur_a != cur_b
    with ThreadPoolExecutor(2) as pool:
        for _ in range(4):  # both label at the same moment; the leases still never overlap
            fa, fb = pool.submit(a.predict, api_name="/accept"), pool.submit(b.predict, api_name="/accept")
            cur_a, cur_b = item_of(fa.result()), item_of(fb.result())
            assert cur_a != cur_b
    rows = human_labels(labeller.project)
    assert len(rows) == 8 and len({r.item_id for r in rows}) == 8  # nobody labelled an item twice


def test_abandoned_lease_expires(labeller):
    from datetime import timedelta

    from storage import work
    from storage.tables import utcnow

    a = labeller.client("ann")
    held = item_of(a.predict(api_name="/start"))
    with db.session(labeller.project.engine, write=True) as s:  # ann walks away; time passes
        got = work.lease_next(s, "bob", now=utcnow() + timedelta(minutes=11))
    assert got is not None and got.item_id == held


def test_double_submission_is_recorded_once(project):
    """Two keys pressed before the page showed the next item label the first item only once."""
    from active import labeling
    from storage import work
    from storage.tables import Item  # noqa: I001
    from tests.conftest import draw_image

    path = draw_image(project.root / "a.png", 0)

    def setup(s):  # noqa: ANN001, ANN202
        s.add(Item(sha256="a" * 64, path=str(path), width=64, height=48, mode="RGB"))
        s.flush()
        work.open_round(s, strategy="margin", model_version_id=None, item_ids=[1], scores=[0.1], score_name="margin")

    db.write(project.engine, setup)
    task = labeling.next_task(project, "ann")
    row, nxt = labeling.record(project, "ann", task, decision="corrected", label="dress")
    assert row is not None and nxt is None
    again, _ = labeling.record(project, "ann", task, decision="skipped")
    assert again is None
    assert [r.decision for r in human_labels(project)] == ["corrected"]


def test_a_photo_that_cannot_be_read_is_set_aside(labeller):
    from pathlib import Path

    from storage.tables import Item

    c = labeller.client("ann")
    # Break the file of the item the annotator will get, after it was imported and leased.
    from active.labeling import next_task

    task = next_task(labeller.project, "ann")
    Path(task.path).write_bytes(b"not a jpeg any more")
    out = c.predict(api_name="/start")
    note = next(o for o in out if isinstance(o, str) and "set aside" in o)
    assert f"#{task.item_id}" in note
    with db.session(labeller.project.engine) as s:
        assert s.get(Item, task.item_id).error
    # The annotator is not stuck: the next event serves another item.
    nxt = item_of(c.predict(api_name="/accept"))
    assert nxt != task.item_id
