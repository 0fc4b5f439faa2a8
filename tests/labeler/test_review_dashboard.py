"""Review resolution, dashboard rendering, and a retrain publishing a new version mid-session."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlmodel import select

from active import jobs
from storage import db
from storage import jobs as store_jobs
from storage.tables import Dispute, Label
from tests.labeler.conftest import add_version
from tests.labeler.test_label_tab import human_labels, item_of


def test_review_resolves_with_one_key(labeller):
    items = labeller.item_ids

    def add(s):  # noqa: ANN001, ANN202
        for i in (items[3], items[5]):
            s.add(Label(item_id=i, annotator="import", label="dress", kind="imported", decision="given"))
        s.add(Dispute(item_id=items[3], reason="model_disagrees", score=0.4))
        s.add(Dispute(item_id=items[5], reason="imported_label_suspect", score=0.9))

    db.write(labeller.project.engine, add)
    with pytest.raises(Exception, match="reviewers"):
        labeller.client("ann").predict(api_name="/review_next")
    rev = labeller.client("rev")
    out = rev.predict(api_name="/review_next")
    info = next(o for o in out if isinstance(o, str) and "Dispute" in o)
    assert f"item #{items[5]}" in info and "given label" in info  # highest score first
    assert out[0] == items[5]  # the item id the page names in its decisions
    given_map, suggested_map = out[4], out[5]
    assert given_map and suggested_map  # attribution for the given and the suggested class
    out = rev.predict(item_id=items[5], api_name="/resolve_model")
    assert "resolved" in out[-1] and f"#{items[5]}" in out[-1]
    with db.session(labeller.project.engine) as s:
        review = s.exec(select(Label).where(Label.kind == "review")).one()
        d = s.exec(select(Dispute).where(Dispute.item_id == items[5])).one()
    assert (review.item_id, review.decision, review.annotator) == (items[5], "resolved", "rev")
    assert review.label == review.suggestion
    assert d.status == "resolved" and d.resolution_label_id == review.id
    # The next dispute is now shown; resolve it by keeping the given (imported) label.
    info = next(o for o in out if isinstance(o, str) and "Dispute" in o)
    assert f"item #{items[3]}" in info
    rev.predict(item_id=items[3], api_name="/resolve_given")
    with db.session(labeller.project.engine) as s:
        rows = s.exec(select(Label).where(Label.kind == "review").order_by(Label.id)).all()
    assert len(rows) == 2 and (rows[1].item_id, rows[1].label) == (items[3], "dress")
    assert "No open disputes" in rev.predict(api_name="/review_next")[3]


def test_dashboard_renders(labeller):
    a, b = labeller.client("ann"), labeller.client("bob")
    cur = item_of(a.predict(api_name="/start"))
    for _ in range(3):
        cur = item_of(a.predict(item_id=cur, api_name="/accept"))
    by_class, by_annot, agree, curve, confusion, dist, averages, note = a.predict(api_name="/dashboard")
    assert {r[0] for r in by_annot["data"]} == {"ann"}
    assert sum(r[3] for r in by_class["data"]) == 3  # three human labels
    assert "Agreement" in agree
    for img in (curve, confusion, dist):
        assert img and Path(img).stat().st_size > 1000
    # The class-average maps are computed in the background; a second look shows them.
    for _ in range(50):
        averages = a.predict(api_name="/dashboard")[6]
        if len(averages) == 3:
            break
        time.sleep(0.1)
    assert sorted(g["caption"] for g in averages) == ["dress", "shirt", "shoes"]
    del b


def test_new_version_switches_mid_session(labeller):
    labeller.fakes.refresh_starts = True
    c = labeller.client("ann")
    cur = item_of(c.predict(api_name="/start"))
    cur = item_of(c.predict(item_id=cur, api_name="/accept"))
    for _ in range(50):  # the policy runs after the label, off the request
        if labeller.fakes.refresh_calls:
            break
        time.sleep(0.05)
    assert "training…" in c.predict(api_name="/status")
    job, _ = jobs.enqueue(labeller.project, "full")  # jobs in the store, from any process, are shown
    db.write(labeller.project.engine, lambda s: store_jobs.claim(s, "gpu-box"))
    db.write(labeller.project.engine, lambda s: store_jobs.heartbeat(s, job.id, "gpu-box", progress={
        "phase": "training", "epoch": 2, "epochs": 5, "batch": 4, "batches": 8, "images_per_s": 9.0}))
    assert "fine\\-tune: epoch 2/5, batch 4/8, 9\\.0 img/s" in c.predict(api_name="/status")
    rows = human_labels(labeller.project, "ann")
    assert rows[-1].model_version_id == labeller.version_id
    v2 = add_version(labeller.project, labeller.item_ids, seed=2, fakes=labeller.fakes, n_labels=1, accuracy=0.7)
    status = c.predict(api_name="/status")
    assert f"model v{v2}" in status and "training" not in status
    out = c.predict(item_id=cur, api_name="/accept")  # labels the item shown before: still v1's suggestion
    assert f"model v{v2}" in next(o for o in out if isinstance(o, str) and "item #" in o)
    c.predict(item_id=item_of(out), api_name="/accept")
    rows = human_labels(labeller.project, "ann")
    assert [r.model_version_id for r in rows] == [labeller.version_id, labeller.version_id, v2]
    assert item_of(out) != rows[0].item_id


def test_review_tab_undo_counts_holdout_and_history(labeller):
    """Backspace undoes the last resolution (append-only); counts by reason and split; holdout
    disputes in their own list; a table row opens its dispute; the item's split and labels."""
    from types import SimpleNamespace

    from active.disputes import rule_name
    from storage.tables import Item

    items = labeller.item_ids

    def add(s):  # noqa: ANN001, ANN202
        s.get(Item, items[7]).split = "holdout"
        for i in (items[2], items[7]):
            s.add(Label(item_id=i, annotator="import", label="shirt", kind="imported", decision="given"))
        s.add(Label(item_id=items[2], annotator="ann", label="dress", kind="human", decision="corrected"))
        s.add(Dispute(item_id=items[2], reason="annotators_disagree", score=0.8))
        s.add(Dispute(item_id=items[7], reason="holdout_label_suspect", score=0.3))

    db.write(labeller.project.engine, add)
    rev = labeller.client("rev")
    out = rev.predict(api_name="/review_next")
    info, pool, holdout, counts = out[3], out[6], out[7], out[8]
    assert f"item #{items[2]} (pool)" in info
    assert "| ann | human | corrected | dress |" in info and "| import | imported | given | shirt |" in info
    assert [r[1] for r in pool["data"]] == [items[2]] and [r[1] for r in holdout["data"]] == [items[7]]
    by_reason = {r[0]: r[1:] for r in counts["data"]}
    assert by_reason[rule_name("annotators_disagree")] == [1, 0]
    assert by_reason[rule_name("holdout_label_suspect")] == [1, 0]
    assert by_reason[rule_name("model_disagrees")] == [0, 0] and by_reason["all"] == [2, 0]
    # Resolving names the item on the page; a stale name is refused and records nothing.
    out = rev.predict(item_id=items[7], api_name="/resolve_given")
    assert "not recorded" in out[-1] and out[0] == items[2]
    out = rev.predict(item_id=items[2], api_name="/resolve_given")
    assert "resolved" in out[-1] and out[0] is None  # the holdout one is in its own list, not next
    assert {r[0]: r[1:] for r in out[8]["data"]}[rule_name("annotators_disagree")] == [0, 1]
    # Backspace: an undo row, the dispute open again and shown again.
    out = rev.predict(item_id=None, api_name="/review_undo")
    assert "undid your review" in out[-1] and out[0] == items[2]
    with db.session(labeller.project.engine) as s:
        reviews = s.exec(select(Label).where(Label.kind == "review").order_by(Label.id)).all()
        d = s.exec(select(Dispute).where(Dispute.item_id == items[2])).one()
    assert [r.decision for r in reviews] == ["resolved", "undo"] and reviews[1].undoes_id == reviews[0].id
    assert d.status == "open" and d.resolution_label_id is None
    assert "nothing to undo" in rev.predict(item_id=items[2], api_name="/review_undo")[-1]
    # A click on the holdout table's row opens that dispute (the select event, called directly).
    request = SimpleNamespace(username="rev", session_hash="s1")
    app = labeller.app
    state = app.review_next(request)[0]
    hd = next(r for r in app.review_next(request)[8] if r[1] == items[7])
    opened = app.review_open(state, SimpleNamespace(row_value=hd), request)
    assert opened[1] == items[7] and "(holdout)" in opened[4]
