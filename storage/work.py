"""Rounds, their queues, and leases: how work is handed to annotators.

`lease_next` hands out one item with a single INSERT ... SELECT inside a write transaction
(SQLite: BEGIN IMMEDIATE, which takes the write lock first), so two annotators never get the
same item unless the project asks for overlap. What is still to hand out is per label field
(`storage.meaning.open_fields`): an item is served while one of the project's fields is open for
the annotator, so an item left midway by one annotator goes to the next who asks. On PostgreSQL a transaction-scoped advisory lock
serialises the hand-out in the same way (READ COMMITTED alone would let two INSERT ... SELECTs
pick the same row).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlmodel import Session

from storage.enums import RoundState
from storage.fields import DEFAULT_FIELD
from storage.meaning import sql_labelled, sql_open_for, sql_round_state, sql_seen_by
from storage.tables import Item, Lease, QueueEntry, Round, utcnow

DEFAULT_LEASE_TTL = timedelta(minutes=10)
LEASE_LOCK_KEY = 0x6C656173  # any constant; names the lease hand-out lock on PostgreSQL
ANNOTATOR_LOCK_KEY = 0x616E6E6F  # names the per-annotator locks on PostgreSQL (with hashtext(name))
# The strategy of the rounds that are pages of the Grid tab (`storage.pages`); their leases are
# not the annotator's single item.
PAGE_STRATEGY = "page"


@dataclass(frozen=True)
class RoundProgress:
    """What became of a round's queued items (`storage.meaning.round_state`): each item counts
    once, in ``labelled`` (in every field of the project), ``unsure``, ``skipped``, ``unreadable``
    or neither (still open). ``by_field``: with several fields, the items labelled in each."""

    labelled: int
    skipped: int
    unsure: int
    unreadable: int
    total: int
    by_field: dict[str, int] = field(default_factory=dict)

    @property
    def handled(self) -> int:
        """Items nobody needs to see again in this round (a skipped item counts: otherwise a
        skip would keep its round open forever)."""
        return self.labelled + self.skipped + self.unsure + self.unreadable

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"labelled": self.labelled, "skipped": self.skipped, "unsure": self.unsure,
                               "unreadable": self.unreadable, "total": self.total}
        if self.by_field:
            out["by_field"] = dict(self.by_field)
        return out


@dataclass(frozen=True)
class Queued:
    item_id: int
    round_id: int
    priority: int
    score: float
    score_name: str
    strategy: str


def open_round(
    session: Session,
    *,
    strategy: str,
    model_version_id: int | None,
    item_ids: Sequence[int],
    scores: Sequence[float],
    score_name: str,
) -> Round:
    """Open a round that queues ``item_ids`` in that order (priority 0 first)."""
    if len(item_ids) != len(scores):
        raise ValueError("item_ids and scores must have the same length")
    rnd = Round(strategy=strategy, batch_size=len(item_ids), model_version_id=model_version_id)
    session.add(rnd)
    session.flush()
    session.add_all(
        QueueEntry(round_id=rnd.id, item_id=i, priority=p, score=float(s), score_name=score_name)
        for p, (i, s) in enumerate(zip(item_ids, scores, strict=True))
    )
    session.flush()
    return rnd


def open_rounds(session: Session) -> list[Round]:
    return list(session.scalars(select(Round).where(Round.closed_at.is_(None)).order_by(Round.id)))


def close_round(session: Session, round_id: int) -> None:
    rnd = session.get(Round, round_id)
    if rnd is not None and rnd.closed_at is None:
        rnd.closed_at = utcnow()
        session.add(rnd)


def last_round_closed_at(session: Session) -> datetime | None:
    """When the most recently closed round closed (None when none has)."""
    return session.execute(select(func.max(Round.closed_at))).scalar_one()


def lock_annotator(session: Session, annotator: str) -> None:
    """Serialise this annotator's write transactions (labels, undo) until this one ends.

    A read-then-write such as "append unless already labelled" must not race a second tab of the
    same annotator. SQLite needs nothing: a write transaction holds the database's write lock from
    BEGIN IMMEDIATE. PostgreSQL (READ COMMITTED) would let both see "not labelled yet" and both
    append, so a transaction-scoped advisory lock per annotator is taken here (before the lease
    hand-out lock, always in that order).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key, hashtext(:name))"),
                        {"key": ANNOTATOR_LOCK_KEY, "name": annotator})


def begin_handout(session: Session, now: datetime) -> None:
    """Take the lease hand-out lock (PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the
    write lock) and drop expired leases."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LEASE_LOCK_KEY})
    session.execute(delete(Lease).where(Lease.expires_at < now))


def lease_next(
    session: Session,
    annotator: str,
    *,
    fields: Sequence[str] = (DEFAULT_FIELD,),
    ttl: timedelta = DEFAULT_LEASE_TTL,
    overlap: int = 1,
    now: datetime | None = None,
) -> Queued | None:
    """Lease the next queued item for ``annotator`` and return it, or None when nothing is left.

    An annotator keeps their own unexpired lease (a reload shows the same item). An item is
    served while one of ``fields`` (the project's label fields) is open for the annotator
    (`storage.meaning.open_fields`: not decided by them, not settled by review, and fewer than
    ``overlap`` annotators done with it or holding the item). With several fields, an item the
    annotator left midway comes first.
    """
    if overlap < 1:
        raise ValueError("overlap must be at least 1")
    now = now or utcnow()
    begin_handout(session, now)

    params = {"who": annotator, "overlap": overlap, "expires": now + ttl}
    own = session.execute(_own_lease(), params).first()
    if own is not None:
        session.execute(_renew_own_lease(), params)
        return _queued(session, own.item_id, own.round_id)
    session.execute(_lease_first_candidate(tuple(fields)), params)
    got = session.execute(_own_lease(), params).first()
    return None if got is None else _queued(session, got.item_id, got.round_id)


# The hand-out's statements are built once per tuple of fields, with bound parameters (:who,
# :overlap, :expires, :n), and reused: building and cache-keying these nested selects anew cost
# several times the SQL itself on every label.
_ANNOTATOR = bindparam("who", type_=String)  # not "annotator": a column of lease
_EXPIRES = bindparam("expires", type_=Lease.__table__.c.expires_at.type)


@functools.cache
def _candidates(fields: tuple[str, ...]):  # noqa: ANN202
    """SELECT item_id, round_id of the items annotator :who may be served next, best first: those
    with a field open for them (`storage.meaning.sql_open_for`, :overlap)."""
    q = QueueEntry.__table__.alias("q")
    # The open rounds as a list of ids the queue's (round, priority) index is walked for: as a
    # join, the closed rounds' entries (every past round's) were walked too, each tested before
    # its round was: 7.5 ms against 0.09 ms per hand-out with five closed rounds of 400 (SQLite).
    open_ids = select(Round.id).where(Round.closed_at.is_(None))
    lease = Lease.__table__.alias("l")
    lease_count = select(func.count()).where(lease.c.item_id == q.c.item_id).scalar_subquery()
    item = Item.__table__.alias("i")
    order = [q.c.round_id, q.c.priority]  # the queue's own columns: its index gives this order
    if len(fields) > 1:  # an item this annotator left midway first (its other fields are open for them)
        order.insert(0, case((sql_seen_by(q.c.item_id, _ANNOTATOR), 0), else_=1))
    return (
        select(q.c.item_id, q.c.round_id)
        .select_from(q.join(item, item.c.id == q.c.item_id))
        .where(
            q.c.round_id.in_(open_ids),
            item.c.error.is_(None),  # unreadable files are never served
            sql_open_for(q.c.item_id, _ANNOTATOR, fields, overlap=bindparam("overlap", type_=Integer),
                         leases=lease_count),
        )
        .order_by(*order)
    )


@functools.cache
def _lease_first_candidate(fields: tuple[str, ...]):  # noqa: ANN202
    base = _candidates(fields)
    item_col, round_col = base.selected_columns
    candidate = base.with_only_columns(item_col, _ANNOTATOR, round_col, _EXPIRES).limit(1)
    # The Table, not the class: with parameters, an ORM insert would mean "these rows, in bulk".
    return insert(Lease.__table__).from_select(["item_id", "annotator", "round_id", "expires_at"], candidate)


@functools.cache
def _own_lease():  # noqa: ANN202
    return (select(Lease.item_id, Lease.round_id).where(Lease.annotator == _ANNOTATOR, _single_lease())
            .order_by(Lease.id.desc()).limit(1))


@functools.cache
def _renew_own_lease():  # noqa: ANN202
    return Lease.__table__.update().where(Lease.annotator == _ANNOTATOR, _single_lease()).values(expires_at=_EXPIRES)


@functools.cache
def _peek(fields: tuple[str, ...]):  # noqa: ANN202
    return _candidates(fields).limit(bindparam("n", type_=Integer))


def peek_next(session: Session, annotator: str, *, n: int = 1, overlap: int = 1,
              fields: Sequence[str] = (DEFAULT_FIELD,)) -> list[int]:
    """The items ``annotator`` would be leased next (read-only; nothing is leased).

    Items leased by anyone (including the annotator's own current lease) are not counted, so
    with overlap 1 this is what comes after the current item. Used to prefetch.
    """
    rows = session.execute(_peek(tuple(fields)), {"who": annotator, "overlap": overlap, "n": n}).all()
    return [int(r.item_id) for r in rows]


def lease_item(session: Session, annotator: str, item_id: int, *, ttl: timedelta = DEFAULT_LEASE_TTL,
               overlap: int = 1, fields: Sequence[str] = (DEFAULT_FIELD,),
               now: datetime | None = None) -> Queued | None:
    """Give ``annotator`` a lease on one given item (undo re-serves the undone item this way),
    dropping their other leases, if the item is still theirs to take under `lease_next`'s rules.

    None when it is not: e.g. another annotator labelled it after this one skipped it, and undoing
    the skip must not make a second label possible.
    """
    now = now or utcnow()
    begin_handout(session, now)
    release(session, annotator)
    cand = _candidates(tuple(fields)).subquery()
    row = session.execute(select(cand.c.item_id, cand.c.round_id).where(cand.c.item_id == item_id).limit(1),
                          {"who": annotator, "overlap": overlap}).first()
    if row is None:
        return None
    session.add(Lease(item_id=item_id, annotator=annotator, round_id=row.round_id, expires_at=now + ttl))
    session.flush()
    return _queued(session, item_id, row.round_id)


def _queued(session: Session, item_id: int, round_id: int | None) -> Queued:
    row = session.execute(
        select(QueueEntry, Round.strategy)
        .join(Round, Round.id == QueueEntry.round_id)
        .where(QueueEntry.item_id == item_id, QueueEntry.round_id == round_id)
    ).first()
    if row is None:
        return Queued(item_id, round_id or 0, 0, 0.0, "", "")
    qe, strategy = row
    return Queued(item_id, qe.round_id, qe.priority, qe.score, qe.score_name, strategy)


def _single_lease():  # noqa: ANN202
    """The lease is a single item's, not a thumbnail's on a page (those are `storage.pages`')."""
    pages = select(Round.id).where(Round.strategy == PAGE_STRATEGY)
    return or_(Lease.round_id.is_(None), Lease.round_id.not_in(pages))


def release(session: Session, annotator: str, item_id: int | None = None) -> None:
    """Drop the annotator's single-item lease (after a label, or when they leave); their page
    leases stay."""
    if item_id is None:  # after every label: the prebuilt statement
        session.execute(_release_own(), {"who": annotator})
        return
    session.execute(delete(Lease).where(Lease.annotator == annotator, _single_lease(), Lease.item_id == item_id))


def current_item(session: Session, annotator: str, *, now: datetime | None = None) -> int | None:
    """The item of the annotator's unexpired single-item lease, or None. Read-only: the check a
    decision makes first, which in the common case (the item on screen is still theirs) spares
    it the whole hand-out (`lease_next`)."""
    row = session.execute(_own_unexpired(), {"who": annotator, "expires": now or utcnow()}).first()
    return None if row is None else int(row.item_id)


@functools.cache
def _release_own():  # noqa: ANN202
    return delete(Lease).where(Lease.annotator == _ANNOTATOR, _single_lease())


@functools.cache
def _own_unexpired():  # noqa: ANN202
    return _own_lease().where(Lease.expires_at >= _EXPIRES)


def active_leases(session: Session, *, now: datetime | None = None) -> list[Lease]:
    now = now or utcnow()
    return list(session.scalars(select(Lease).where(Lease.expires_at >= now)))


def round_progress(session: Session, round_id: int, fields: Sequence[str] = (DEFAULT_FIELD,), *,
                   per_field: bool = False) -> RoundProgress:
    """How far a round is: its queued items by `storage.meaning.round_state` over ``fields`` (the
    project's label fields); with ``per_field`` and several fields also the items labelled in each
    (``by_field``: one more subquery per field and item, which only `status` shows)."""
    q = QueueEntry.__table__.alias("q")
    item = Item.__table__.alias("i")
    states = sql_round_state(q.c.item_id, item.c.error, fields)
    each = list(fields) if per_field and len(fields) > 1 else []
    counts = [func.count(case((cond, 1))) for cond in states.values()]
    counts += [func.count(case((sql_labelled(q.c.item_id, f), 1))) for f in each]
    row = session.execute(
        select(func.count(), *counts).select_from(q.join(item, item.c.id == q.c.item_id)).where(q.c.round_id == round_id)
    ).one()
    got = dict(zip(states, row[1:1 + len(states)], strict=True))
    by_field = {f: int(n or 0) for f, n in zip(each, row[1 + len(states):], strict=True)}
    return RoundProgress(labelled=int(got[RoundState.LABELLED] or 0), skipped=int(got[RoundState.SKIPPED] or 0),
                         unsure=int(got[RoundState.UNSURE] or 0), unreadable=int(got[RoundState.UNREADABLE] or 0),
                         total=int(row[0]), by_field=by_field)


def queued_in_open_rounds(session: Session) -> set[int]:
    """Items queued by a round that is still open."""
    query = select(QueueEntry.item_id).join(Round, Round.id == QueueEntry.round_id).where(Round.closed_at.is_(None))
    return {int(i) for i in session.execute(query).scalars()}


def queue(session: Session, round_id: int) -> list[QueueEntry]:
    """A round's queue in priority order."""
    query = select(QueueEntry).where(QueueEntry.round_id == round_id).order_by(QueueEntry.priority)
    return list(session.scalars(query))


def drop_leases(session: Session, item_id: int) -> None:
    """Drop every annotator's lease on one item (its photo cannot be shown)."""
    session.execute(delete(Lease).where(Lease.item_id == item_id))
