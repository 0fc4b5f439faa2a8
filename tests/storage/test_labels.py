"""Append-only labels and the derived current label (review > consensus > imported)."""

from __future__ import annotations

import pytest
from sqlalchemy import event
from sqlmodel import select

from storage import db, labels, work
from storage.tables import Label


def _label(engine, item_id: int, annotator: str, label: str | None, *, kind: str = "human",  # noqa: ANN001
           decision: str = "corrected", undoes: int | None = None) -> int:
    row = Label(item_id=item_id, annotator=annotator, label=label, kind=kind, decision=decision, undoes_id=undoes)
    return db.write(engine, lambda s: labels.append(s, row).id)


def _current(engine, item_id: int) -> labels.CurrentLabel | None:  # noqa: ANN001
    with db.session(engine) as s:
        return labels.current(s, [item_id]).get(item_id)


def test_imported_label_is_current_until_a_human_labels(engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(engine, 1)
    assert _current(engine, i) is None
    _label(engine, i, "import", "dress", kind="imported", decision="given")
    _label(engine, i, "import", "skirt", kind="imported", decision="given")
    cur = _current(engine, i)
    assert (cur.label, cur.source, cur.imported, cur.n_human, cur.agreement) == ("skirt", "imported", "skirt", 0, None)
    _label(engine, i, "alice", "shirt")
    cur = _current(engine, i)
    assert (cur.label, cur.source, cur.imported, cur.n_human, cur.agreement) == ("shirt", "single", "skirt", 1, 1.0)
    assert cur.annotator == "alice"


def test_consensus_majority_and_ties(engine, add_items) -> None:  # noqa: ANN001
    i, j = add_items(engine, 2)
    _label(engine, i, "alice", "dress")
    _label(engine, i, "bob", "skirt")
    _label(engine, i, "carol", "dress")
    cur = _current(engine, i)
    assert (cur.label, cur.source, cur.n_human) == ("dress", "consensus", 3)
    assert cur.agreement == pytest.approx(2 / 3)
    assert cur.annotator == "carol"  # the latest agreeing row decides
    # A tie goes to the latest of the tied classes.
    _label(engine, j, "alice", "skirt")
    _label(engine, j, "bob", "dress")
    assert _current(engine, j).label == "dress"
    _label(engine, j, "carol", "skirt")
    _label(engine, j, "dave", "dress")
    cur = _current(engine, j)
    assert (cur.label, cur.agreement) == ("dress", 0.5)


def test_review_beats_consensus_and_imported(engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(engine, 1)
    _label(engine, i, "import", "dress", kind="imported", decision="given")
    _label(engine, i, "alice", "skirt")
    _label(engine, i, "bob", "skirt")
    review = _label(engine, i, "rita", "shorts", kind="review", decision="resolved")
    cur = _current(engine, i)
    assert (cur.label, cur.source, cur.label_id, cur.agreement, cur.imported) == ("shorts", "review", review, 0.0, "dress")
    _label(engine, i, "carol", "skirt")  # more humans do not overturn a review
    assert _current(engine, i).label == "shorts"


def test_undo_falls_back_and_never_deletes(engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(engine, 1)
    _label(engine, i, "import", "dress", kind="imported", decision="given")
    first = _label(engine, i, "alice", "skirt")
    review = _label(engine, i, "rita", "shorts", kind="review", decision="resolved")
    _label(engine, i, "rita", None, kind="review", decision="undo", undoes=review)
    assert (_current(engine, i).label, _current(engine, i).source) == ("skirt", "single")
    _label(engine, i, "alice", None, decision="undo", undoes=first)
    assert (_current(engine, i).label, _current(engine, i).source) == ("dress", "imported")
    with db.session(engine) as s:
        rows = s.exec(select(Label).where(Label.item_id == i).order_by(Label.id)).all()
    assert [r.decision for r in rows] == ["given", "corrected", "resolved", "undo", "undo"]


def test_skipped_and_unsure_do_not_count(engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(engine, 1)
    _label(engine, i, "alice", None, decision="skipped")
    _label(engine, i, "bob", None, decision="unsure")
    assert _current(engine, i) is None
    _label(engine, i, "carol", "dress", decision="accepted")
    cur = _current(engine, i)
    assert (cur.label, cur.n_human) == ("dress", 1)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (dict(kind="oracle", decision="corrected", label="x"), "unknown label kind 'oracle'"),
        (dict(kind="human", decision="maybe", label="x"), "unknown decision 'maybe'"),
        (dict(kind="human", decision="accepted", label=None), "needs a class"),
        (dict(kind="human", decision="corrected", label=""), "needs a class"),
        (dict(kind="human", decision="undo", label=None), "must name the label it undoes"),
    ],
)
def test_append_validates(memory_engine, add_items, row: dict, message: str) -> None:  # noqa: ANN001
    (i,) = add_items(memory_engine, 1)
    with pytest.raises(ValueError, match=message):
        db.write(memory_engine, lambda s: labels.append(s, Label(item_id=i, annotator="a", **row)))
    with db.session(memory_engine) as s:
        assert s.exec(select(Label)).all() == []


def test_last_human_skips_undone(engine, add_items) -> None:  # noqa: ANN001
    i, j = add_items(engine, 2)
    with db.session(engine) as s:
        assert labels.last_human(s, "alice") is None
    a = _label(engine, i, "alice", "dress")
    b = _label(engine, j, "alice", "skirt")
    _label(engine, j, "bob", "shirt")
    with db.session(engine) as s:
        assert labels.last_human(s, "alice").id == b
    _label(engine, j, "alice", None, decision="undo", undoes=b)
    with db.session(engine) as s:
        assert labels.last_human(s, "alice").id == a


def test_snapshot_and_many_items(engine, add_items) -> None:  # noqa: ANN001
    ids = add_items(engine, 620)  # more than one 500-id chunk

    def tx(s) -> int:  # noqa: ANN001
        last = 0
        for n, i in enumerate(ids):
            last = labels.append(s, Label(item_id=i, annotator="import", label=f"c{n % 3}", kind="imported",
                                          decision="given")).id
        return last

    last = db.write(engine, tx)
    with db.session(engine) as s:
        top, cur = labels.snapshot(s)
        some = labels.current(s, ids[::2])
    assert top == last
    assert len(cur) == 620 and cur[ids[4]].label == "c1"
    assert set(some) == set(ids[::2])


def test_labels_are_never_updated_or_deleted(engine, add_items) -> None:  # noqa: ANN001
    """Every storage call of a labelling session issues only INSERTs and SELECTs on `label`."""
    statements: list[str] = []

    def record(_conn, _cursor, statement: str, *_rest) -> None:  # noqa: ANN001
        statements.append(" ".join(statement.split()).lower())

    ids = add_items(engine, 3)
    db.write(engine, lambda s: work.open_round(s, strategy="margin", model_version_id=None, item_ids=ids,
                                               scores=[0.1, 0.2, 0.3], score_name="margin"))
    event.listen(engine, "before_cursor_execute", record)
    try:
        for who in ("alice", "bob"):
            got = db.write(engine, lambda s, who=who: work.lease_next(s, who))
            lid = _label(engine, got.item_id, who, "dress", decision="accepted")
            db.write(engine, lambda s, who=who, got=got: work.release(s, who, got.item_id))
        _label(engine, ids[0], "alice", None, decision="undo", undoes=lid)
        _label(engine, ids[1], "rita", "skirt", kind="review", decision="resolved")
        with db.session(engine) as s:
            labels.snapshot(s)
            labels.last_human(s, "alice")
            labels.current(s)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    touching = [st for st in statements if st.startswith(("update", "delete")) and " label" in st.split(" where")[0]]
    assert touching == []
    assert any(st.startswith("insert into label") for st in statements)


def test_count_rows_per_field_up_to_a_label_id(engine, add_items) -> None:  # noqa: ANN001
    (i, j) = add_items(engine, 2)
    first = _label(engine, i, "import", "dress", kind="imported", decision="given")
    db.write(engine, lambda s: labels.append(s, Label(item_id=i, field="colour", annotator="ann", label="black",
                                                      kind="human", decision="corrected")))
    last = _label(engine, j, "ann", "skirt")
    _label(engine, j, "ann", None, decision="undo", undoes=last)
    with db.session(engine) as s:
        assert labels.count_rows(s) == 3 and labels.count_rows(s, field="colour") == 1
        assert labels.count_rows(s, upto_label_id=first) == 1 and labels.count_rows(s, field="colour", upto_label_id=first) == 0
        assert labels.count_rows(s, field="season") == 0
