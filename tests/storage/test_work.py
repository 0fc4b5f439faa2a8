"""Rounds and leases: who gets which item, for how long, and never twice."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage import db, items, labels, work
from storage.fields import DEFAULT_FIELD
from storage.tables import QUEUE_ORDER_INDEX, Label, utcnow


@pytest.fixture
def queued(engine, add_items) -> list[int]:  # noqa: ANN001
    """Five items queued in one round, in id order (priority 0 = first)."""
    ids = add_items(engine, 5)
    db.write(engine, lambda s: work.open_round(s, strategy="margin", model_version_id=None, item_ids=ids,
                                               scores=[0.5, 0.4, 0.3, 0.2, 0.1], score_name="margin"))
    return ids


def lease(engine, who: str, **kw):  # noqa: ANN001, ANN201
    got = db.write(engine, lambda s: work.lease_next(s, who, **kw))
    return None if got is None else got.item_id


def label(engine, item_id: int, who: str, decision: str = "accepted") -> int:  # noqa: ANN001
    cls = "dress" if decision in ("accepted", "corrected") else None

    def tx(s) -> int:  # noqa: ANN001
        row = labels.append(s, Label(item_id=item_id, annotator=who, label=cls, kind="human", decision=decision))
        work.release(s, who, item_id)
        return row.id

    return db.write(engine, tx)


def test_exclusive_in_priority_order(engine, queued: list[int]) -> None:  # noqa: ANN001
    assert [lease(engine, w) for w in ("alice", "bob", "carol")] == queued[:3]
    got = db.write(engine, lambda s: work.lease_next(s, "dave"))
    assert (got.item_id, got.priority, got.score, got.score_name, got.strategy) == (queued[3], 3, 0.2, "margin", "margin")
    assert lease(engine, "erin") == queued[4]
    assert lease(engine, "frank") is None


def test_annotator_keeps_their_own_lease(engine, queued: list[int]) -> None:  # noqa: ANN001
    t0 = utcnow()
    assert lease(engine, "alice", now=t0, ttl=timedelta(minutes=1)) == queued[0]
    # A reload 50 s later shows the same item and renews the lease...
    assert lease(engine, "alice", now=t0 + timedelta(seconds=50), ttl=timedelta(minutes=1)) == queued[0]
    # ...so at t0 + 90 s it has not expired and bob gets the next one.
    assert lease(engine, "bob", now=t0 + timedelta(seconds=90)) == queued[1]
    with db.session(engine) as s:
        assert len(work.active_leases(s, now=t0 + timedelta(seconds=90))) == 2


def test_expired_lease_is_served_again(engine, queued: list[int]) -> None:  # noqa: ANN001
    t0 = utcnow()
    assert lease(engine, "alice", now=t0, ttl=timedelta(minutes=1)) == queued[0]
    assert lease(engine, "bob", now=t0 + timedelta(seconds=30)) == queued[1]
    assert lease(engine, "carol", now=t0 + timedelta(minutes=2)) == queued[0]


def test_overlap_serves_an_item_to_that_many_annotators(engine, queued: list[int]) -> None:  # noqa: ANN001
    assert lease(engine, "alice", overlap=2) == queued[0]
    assert lease(engine, "bob", overlap=2) == queued[0]
    assert lease(engine, "carol", overlap=2) == queued[1]
    label(engine, queued[0], "alice")
    label(engine, queued[0], "bob")
    assert lease(engine, "dave", overlap=2) == queued[1]  # item 0 is done by two people
    with pytest.raises(ValueError, match="overlap must be at least 1"):
        db.write(engine, lambda s: work.lease_next(s, "x", overlap=0))


def test_never_served_again_after_label_or_skip(engine, queued: list[int]) -> None:  # noqa: ANN001
    assert lease(engine, "alice") == queued[0]
    label(engine, queued[0], "alice", "skipped")
    assert lease(engine, "alice") == queued[1]  # not the skipped one
    assert lease(engine, "bob") == queued[0]  # a skip does not make the item done for others
    label(engine, queued[1], "alice", "corrected")
    label(engine, queued[0], "bob", "accepted")
    assert lease(engine, "alice") == queued[2]
    assert lease(engine, "carol") == queued[3]  # items 0 and 1 are done, 2 is alice's


def test_undo_gives_the_item_back(engine, queued: list[int]) -> None:  # noqa: ANN001
    assert lease(engine, "alice") == queued[0]
    lid = label(engine, queued[0], "alice")
    assert lease(engine, "alice") == queued[1]
    db.write(engine, lambda s: work.release(s, "alice"))
    db.write(engine, lambda s: labels.append(s, Label(item_id=queued[0], annotator="alice", kind="human",
                                                      decision="undo", undoes_id=lid)))
    assert lease(engine, "alice") == queued[0]


def test_closed_rounds_and_reviewed_items_are_not_served(engine, queued: list[int], add_items) -> None:  # noqa: ANN001
    db.write(engine, lambda s: labels.append(s, Label(item_id=queued[0], annotator="rita", label="dress",
                                                      kind="review", decision="resolved")))
    assert lease(engine, "alice") == queued[1]
    with db.session(engine) as s:
        (rnd,) = work.open_rounds(s)
    db.write(engine, lambda s: work.close_round(s, rnd.id))
    assert lease(engine, "bob") is None
    assert lease(engine, "alice") == queued[1]  # a lease already held is kept until released
    more = add_items(engine, 2, start=100)
    db.write(engine, lambda s: work.open_round(s, strategy="random", model_version_id=None, item_ids=more,
                                               scores=[0.0, 0.0], score_name="random"))
    assert lease(engine, "bob") == more[0]


def test_round_progress(engine, queued: list[int]) -> None:  # noqa: ANN001
    with db.session(engine) as s:
        (rnd,) = work.open_rounds(s)
    label(engine, queued[0], "alice")
    label(engine, queued[0], "bob")
    label(engine, queued[1], "alice", "skipped")
    with db.session(engine) as s:
        # A skip deals with the item for this round (else a skipped item would keep it open forever).
        p = work.round_progress(s, rnd.id)
        assert (p.labelled, p.skipped, p.unsure, p.handled, p.total) == (1, 1, 0, 2, 5)
    db.write(engine, lambda s: items.mark_unreadable(s, queued[2], "truncated"))
    with db.session(engine) as s:
        p = work.round_progress(s, rnd.id)
        assert (p.labelled, p.skipped, p.unreadable, p.handled, p.total) == (1, 1, 1, 3, 5)
        assert queued[2] not in work.peek_next(s, "carol", n=5)  # unreadable: never served
    with pytest.raises(ValueError, match="same length"):
        db.write(engine, lambda s: work.open_round(s, strategy="x", model_version_id=None, item_ids=[1],
                                                   scores=[], score_name="x"))


def test_undoing_a_skip_does_not_re_serve_an_item_someone_else_labelled(engine, queued: list[int]) -> None:  # noqa: ANN001
    # Found by bench/load.py: alice skips, bob labels the item, alice undoes her skip.
    first = lease(engine, "alice")
    skip = label(engine, first, "alice", "skipped")
    assert lease(engine, "bob") == first
    label(engine, first, "bob", "accepted")

    def undo(s):  # noqa: ANN001, ANN202
        labels.append(s, Label(item_id=first, annotator="alice", kind="human", decision="undo", undoes_id=skip))
        return work.lease_item(s, "alice", first)

    assert db.write(engine, undo) is None  # not hers to label any more
    # Without bob's label it would have been: a plain undo gives the item back.
    second = lease(engine, "carol")
    skip2 = label(engine, second, "carol", "skipped")
    got = db.write(engine, lambda s: (labels.append(s, Label(item_id=second, annotator="carol", kind="human",
                                                              decision="undo", undoes_id=skip2)),
                                      work.lease_item(s, "carol", second))[1])
    assert got is not None and got.item_id == second


def test_the_hand_out_walks_the_open_rounds_queue_only(engine, add_items) -> None:  # noqa: ANN001
    """Closed rounds pile up over a project's life; the hand-out must not step through their
    entries (it did, testing each, when it joined the rounds instead of listing the open ones)."""
    ids = add_items(engine, 6)

    def rounds(s) -> None:  # noqa: ANN001
        old = work.open_round(s, strategy="margin", model_version_id=None, item_ids=ids[:3], scores=[0.1] * 3,
                              score_name="margin")
        work.close_round(s, old.id)
        work.open_round(s, strategy="margin", model_version_id=None, item_ids=ids[3:], scores=[0.1] * 3,
                        score_name="margin")

    db.write(engine, rounds)
    assert lease(engine, "alice") == ids[3]  # the closed round's unlabelled items are not served
    if engine.dialect.name != "sqlite":
        return
    stmt = work._candidates((DEFAULT_FIELD,)).limit(1).params(who="alice", overlap=1)
    sql = stmt.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert f"SEARCH q USING INDEX {QUEUE_ORDER_INDEX.name} (round_id=?)" in plan, plan
