"""The Label tab through its public client: sign in, accept, correct, skip, unsure, undo, leases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from storage import db
from storage.tables import Label
from tests.labeler.conftest import PASSWORD


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


def note_of(out) -> str:  # noqa: ANN001
    """The note under the buttons from an item event's outputs (..., note, picker, map, map note)."""
    return out[-4]


def decide(c, api: str, item: int | None, *args):  # noqa: ANN001, ANN201
    """A decision through the client, naming the item on screen (as the page does)."""
    return c.predict(item, *args, api_name=api)


def test_sign_in_is_required(labeller):
    from gradio_client import Client

    with pytest.raises(Exception, match="(?i)login|auth|credentials|401"):
        Client(labeller.url, auth=("ann", "wrong password"), verbose=False)


def test_accept_correct_skip_unsure_undo(labeller):
    c = labeller.client("ann")
    first = c.predict(api_name="/start")
    shown = item_of(first)
    # Accept: the label is the top suggestion, decision accepted, with the suggestion's confidence.
    out = c.predict(item_id=shown, api_name="/accept")
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
    out = c.predict(item_id=second, cls=other, api_name="/correct")
    third = item_of(out)
    # Pick the 2nd suggestion with key 2's endpoint: a correction to that class.
    out = decide(c, "/pick_2", third)
    fourth = item_of(out)
    out = decide(c, "/skip", fourth)
    assert note_of(out) == f"#{fourth}: skipped"
    fifth = item_of(out)
    out = decide(c, "/unsure", fifth)
    assert note_of(out) == f"#{fifth}: unsure"
    rows = human_labels(labeller.project, "ann")
    got = [(r.item_id, r.decision, r.label) for r in rows]
    assert got[1] == (second, "corrected", other)
    assert got[2][0:2] == (third, "corrected") and got[2][2] != rows[2].suggestion
    assert got[3] == (fourth, "skipped", None)
    assert got[4] == (fifth, "unsure", None)
    assert top  # the first label had a suggestion
    # Undo appends an undo row for the unsure label and serves that item again.
    out = decide(c, "/undo", item_of(out))
    assert item_of(out) == fifth
    rows = human_labels(labeller.project, "ann")
    assert len(rows) == 6 and rows[-1].decision == "undo" and rows[-1].undoes_id == rows[4].id
    out = decide(c, "/accept", fifth)
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
    decide(c, "/accept", item)
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
            fa, fb = pool.submit(decide, a, "/accept", cur_a), pool.submit(decide, b, "/accept", cur_b)
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
    # The annotator is not stuck: the next event (the page names no item) serves another item.
    nxt = item_of(decide(c, "/accept", None))
    assert nxt != task.item_id


def test_a_decision_names_the_item_on_screen(labeller):
    """start -> X; accept naming X -> Y; a second accept naming X is refused; X has one label."""
    c = labeller.client("ann")
    x = item_of(c.predict(api_name="/start"))
    out = c.predict(item_id=x, api_name="/accept")
    y = item_of(out)
    assert y != x
    again = c.predict(item_id=x, api_name="/accept")
    assert "not recorded" in note_of(again) and f"#{x}" in note_of(again)
    assert item_of(again) == y  # the page is sent the current item, unchanged
    rows = human_labels(labeller.project, "ann")
    assert [r.item_id for r in rows if r.item_id == x] == [x] and len(rows) == 1
    # Skip, unsure, pick, correct and undo naming a stale item record nothing either.
    for api, args in (("/skip", ()), ("/unsure", ()), ("/pick_1", ()), ("/undo", ())):
        assert "not" in note_of(decide(c, api, x, *args))
    assert "not recorded" in note_of(c.predict(item_id=x, cls="dress", api_name="/correct"))
    # An old script that names no item: the client asks for it; an empty name records nothing.
    with pytest.raises(TypeError, match="item_id"):
        c.predict(api_name="/skip")
    assert "not recorded" in note_of(c.predict(item_id=None, api_name="/skip"))
    assert len(human_labels(labeller.project, "ann")) == 1
    # The item on screen is still labelled normally.
    assert item_of(decide(c, "/skip", y)) not in (x, y)
    assert [r.item_id for r in human_labels(labeller.project, "ann")] == [x, y]


def test_record_and_undo_check_the_current_item(project):
    """Below the app: a task that is not the annotator's current item is not recorded, and an
    undo from a page showing another item is refused, in the store itself."""
    from active import labeling
    from storage import items, work
    from storage.tables import Item

    def setup(s):  # noqa: ANN001, ANN202
        rows = items.add(s, [Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8, mode="RGB")
                             for k in range(3)])
        work.open_round(s, strategy="random", model_version_id=None, item_ids=[r.id for r in rows],
                        scores=[0.0] * 3, score_name="random")

    db.write(project.engine, setup)
    first = labeling.next_task(project, "ann")
    row, second = labeling.record(project, "ann", first, decision="skipped")
    assert row is not None and second.item_id != first.item_id
    stale, shown = labeling.record(project, "ann", first, decision="corrected", label="dress")
    assert stale is None and shown.item_id == second.item_id
    with pytest.raises(labeling.NotCurrent, match=f"#{first.item_id} is not your current item"):
        labeling.undo_last(project, "ann", shown=first.item_id)
    assert [r.decision for r in human_labels(project)] == ["skipped"]
    undone, back = labeling.undo_last(project, "ann", shown=second.item_id)
    assert undone.item_id == first.item_id and back.item_id == first.item_id


def test_cycle_method_and_noop(labeller):
    c = labeller.client("ann")
    c.predict(api_name="/start")
    method, overlay, text = c.predict(True, "gradcam", api_name="/cycle_method")
    assert method == "ig" and overlay and "Integrated Gradients" in text
    assert c.predict(True, "occlusion", api_name="/cycle_method")[0] == "gradcam"  # wraps around
    assert c.predict(api_name="/noop") == "ann"


def test_pick_buttons_change_visibility_only_when_the_number_of_suggestions_does(labeller):
    """Replies send the buttons plain texts while the page already shows as many of them (a
    gr.update makes Gradio build a new component); an update whenever that number changes, so
    buttons hidden on the "nothing left" page come back."""
    from types import SimpleNamespace

    from active import labeling

    app, req = labeller.app, SimpleNamespace(username="ann", session_hash="page-1")
    task = labeling.next_task(labeller.project, "ann")
    n = len(task.ranked)  # 3 classes

    def picks(out):  # noqa: ANN001, ANN202
        return out[6:15]

    first = picks(app.show(task, request=req))  # a page not seen yet: updates
    assert [p.get("visible") for p in first] == [True] * n + ["hidden"] * (9 - n)
    again = picks(app.show(task, request=req))  # same number of suggestions: plain texts
    assert again[0] == f"1 · {task.ranked[0][0]} {task.ranked[0][1]:.0%}" and again[n] == f"{n + 1}"
    nothing = picks(app.show(None, request=req))
    assert all(p.get("visible") == "hidden" for p in nothing)
    back = picks(app.show(task, request=req))  # shown again after the empty page
    assert [p.get("visible") for p in back[:n]] == [True] * n
    other = picks(app.show(task, request=SimpleNamespace(username="ann", session_hash="page-2")))
    assert isinstance(other[0], dict)  # another page gets its own updates


def test_photos_and_maps_are_served_from_the_prefetch_folder_behind_sign_in(labeller):
    import httpx
    from gradio_client import Client

    c = Client(labeller.url, auth=("ann", PASSWORD), verbose=False, download_files=False)
    out = c.predict(api_name="/start")
    photo = next(o for o in out if isinstance(o, dict) and o.get("path", "").endswith(".jpg"))
    overlay, _text = c.predict(True, "gradcam", api_name="/attribution")
    folder = labeller.app.prefetch.folder.resolve()
    for f in (photo, overlay):  # as they are: no copy into Gradio's cache per reply
        assert Path(f["path"]).resolve().parent == folder
    signed_in = httpx.get(photo["url"], cookies=c.cookies, headers=c.headers)
    assert signed_in.status_code == 200 and signed_in.content[:2] == b"\xff\xd8"  # the JPEG display copy
    assert httpx.get(photo["url"]).status_code in (401, 403)  # no session, no photo


def test_the_benches_page_client_speaks_the_pages_protocol(labeller, monkeypatch):
    """bench/_common.PageClient (the UI benches' client: the page's own event protocol, no 50 ms
    polling) gets the same answers gradio_client does, its photos fetched, and sends two events
    at once on one stream."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    from _common import PageClient

    c = PageClient(labeller.url, "ann", PASSWORD)
    try:
        out = c.predict(True, "gradcam", api_name="/start")
        item, photo = out[0], out[2]
        assert item in labeller.item_ids and photo[:2] == b"\xff\xd8"  # the JPEG, fetched
        assert c.predict(api_name="/noop") == "ann"  # who signed in
        answers = c.predict_many([((item, True, "gradcam"), "/accept")] * 2)
        notes = sorted(a[5] for a in answers)
        # the second is refused: as not current any more, or as not this page's item (when it
        # started after the first had sent the next item), depending on timing
        assert notes[0].startswith(f"#{item}: accepted")
        assert notes[1].startswith(f"not recorded: #{item} is ") and (
            "is no longer your current item" in notes[1] or "is not the item on this page" in notes[1])
    finally:
        c.close()
    with db.session(labeller.project.engine) as s:
        assert len(s.exec(select(Label).where(Label.item_id == item, Label.annotator == "ann")).all()) == 1
