"""Pages: many items shown at once and labelled with one decision (the labeller's Grid tab).

A page is a `Round` of strategy ``page``: its queue entries are the thumbnails shown, in order,
with the score that put each there (the model's confidence in the page's class, or the cosine to
the item a "more like this" page started from). The round is closed when it is made, so the
single-item queue never serves it; labels given on the page carry its id as their ``round_id``,
which is how `history`, `status` and the export tell a label given on a page. The items on a page
are leased to its annotator (leases whose round is a page, see `storage.work`), within the same
hand-out lock as single items, so two annotators never get the same thumbnail.

Thumbnails marked "does not belong" go to a round of strategy ``page-marked`` (open, so the
single-item queue serves them), with a note as the score name.

A page is about one label field (`storage.fields`; the default unless one is named): its items
are those not labelled in that field, sorted by that field's prediction. The page's field is
the caller's (the labels given on it carry it), not stored with the round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, literal, select
from sqlmodel import Session

from storage import work
from storage.enums import Split
from storage.fields import DEFAULT_FIELD
from storage.meaning import label_table, sql_effective, sql_human_class, sql_labelled
from storage.tables import Item, Label, Lease, Prediction, QueueEntry, Round, utcnow

PAGE_STRATEGY = work.PAGE_STRATEGY
MARKED_STRATEGY = "page-marked"


@dataclass(frozen=True)
class Thumb:
    item_id: int
    path: str
    score: float  # confidence in the page's class, or cosine to the seed item
    pred: str | None  # the serving version's top class for the item


def _pred_of(field: str) -> tuple[Any, Any]:
    """(top class, confidence) of ``field`` in a Prediction row, as SQL (what
    `storage.fields.field_prediction` reads): the default field's own columns, another field's
    under ``Prediction.fields``."""
    if field == DEFAULT_FIELD:
        return Prediction.pred, Prediction.confidence
    return Prediction.fields[(field, "pred")].as_string(), Prediction.fields[(field, "confidence")].as_float()


def _free(item_col, now: datetime, field: str = DEFAULT_FIELD):  # noqa: ANN001, ANN202
    """The item is readable, in the pool, not labelled in ``field`` (`storage.meaning`), nobody holds a lease
    on it, and it is not waiting in the Label tab's queue after someone marked it on a page (a
    person said it does not belong where the model puts it: it must not come back on a page)."""
    item = Item.__table__.alias("fi")
    lease = Lease.__table__.alias("fl")
    queued = QueueEntry.__table__.alias("fq")
    marked = Round.__table__.alias("fr")
    return and_(
        exists(select(literal(1)).where(item.c.id == item_col, item.c.error.is_(None), item.c.split == Split.POOL.value)),
        ~exists(select(literal(1)).where(lease.c.item_id == item_col, lease.c.expires_at >= now)),
        ~sql_labelled(item_col, field),
        ~exists(select(literal(1)).select_from(queued.join(marked, marked.c.id == queued.c.round_id))
                .where(queued.c.item_id == item_col, marked.c.strategy == MARKED_STRATEGY,
                       marked.c.closed_at.is_(None))),
    )


def class_counts(session: Session, version_id: int, *, field: str = DEFAULT_FIELD,
                 now: datetime | None = None) -> dict[str, int]:
    """class of ``field`` -> items the version puts in it that could go on a page now."""
    now = now or utcnow()
    pred, _conf = _pred_of(field)
    rows = session.execute(
        select(pred, func.count())
        .where(Prediction.model_version_id == version_id, pred.is_not(None), _free(Prediction.item_id, now, field))
        .group_by(pred)
    ).all()
    return {str(c): int(n) for c, n in rows}


def _open_page(session: Session, annotator: str, version_id: int | None, chosen: Sequence[tuple[int, float]],
               score_name: str, ttl: timedelta, now: datetime) -> Round | None:
    if not chosen:
        return None
    rnd = Round(strategy=PAGE_STRATEGY, batch_size=len(chosen), model_version_id=version_id, closed_at=now)
    session.add(rnd)
    session.flush()
    session.add_all(QueueEntry(round_id=rnd.id, item_id=i, priority=p, score=float(s), score_name=score_name)
                    for p, (i, s) in enumerate(chosen))
    session.add_all(Lease(item_id=i, annotator=annotator, round_id=rnd.id, expires_at=now + ttl) for i, _ in chosen)
    session.flush()
    return rnd


def _class_page(version_id: int, cls: str, size: int, now: datetime, field: str):  # noqa: ANN202
    """SELECT item_id, confidence, path of the ``size`` free items the version is most confident
    are ``cls`` in ``field``."""
    pred, conf = _pred_of(field)
    return (select(Prediction.item_id, conf, Item.path)
            .join(Item, Item.id == Prediction.item_id)
            .where(Prediction.model_version_id == version_id, pred == cls, _free(Prediction.item_id, now, field))
            .order_by(conf.desc(), Prediction.item_id)
            .limit(size))


def peek_class_page(session: Session, version_id: int, cls: str, *, size: int, field: str = DEFAULT_FIELD,
                    now: datetime | None = None) -> list[tuple[int, str]]:
    """[(item_id, path)] of the page `lease_class_page` would lease now (read-only)."""
    rows = session.execute(_class_page(version_id, cls, size, now or utcnow(), field)).all()
    return [(int(i), str(p)) for i, _, p in rows]


def lease_class_page(session: Session, annotator: str, version_id: int, cls: str, *, size: int, ttl: timedelta,
                     field: str = DEFAULT_FIELD, now: datetime | None = None) -> Round | None:
    """Lease the ``size`` free items the version is most confident are ``cls`` in ``field`` as a
    new page (one transaction, under the hand-out lock). The annotator's earlier pages are released first."""
    now = now or utcnow()
    work.begin_handout(session, now)
    release_pages(session, annotator)
    rows = session.execute(_class_page(version_id, cls, size, now, field)).all()
    return _open_page(session, annotator, version_id, [(int(i), float(c or 0.0)) for i, c, _ in rows], "confidence",
                      ttl, now)


def lease_items_page(session: Session, annotator: str, version_id: int | None, scored: Sequence[tuple[int, float]],
                     *, score_name: str, size: int, ttl: timedelta, field: str = DEFAULT_FIELD,
                     now: datetime | None = None) -> Round | None:
    """Lease the first ``size`` of ``scored`` [(item_id, score)] that are still free (in ``field``) as a new page."""
    now = now or utcnow()
    work.begin_handout(session, now)
    release_pages(session, annotator)
    wanted = [int(i) for i, _ in scored]
    free = set(free_items(session, wanted, field=field, now=now))
    chosen = [(int(i), float(s)) for i, s in scored if int(i) in free][:size]
    return _open_page(session, annotator, version_id, chosen, score_name, ttl, now)


def free_items(session: Session, item_ids: Iterable[int], *, field: str = DEFAULT_FIELD,
               now: datetime | None = None) -> list[int]:
    """Those of ``item_ids`` that could go on a page of ``field`` now (readable pool items nobody
    labelled in it or leased)."""
    now = now or utcnow()
    wanted = sorted({int(i) for i in item_ids})
    out: list[int] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        out += [int(i) for i in session.scalars(select(Item.id).where(Item.id.in_(chunk), _free(Item.id, now, field)))]
    return out


def unlabelled(session: Session, item_ids: Iterable[int], *, field: str = DEFAULT_FIELD) -> set[int]:
    """Those of ``item_ids`` that are not labelled in ``field`` (`storage.meaning.sql_labelled`)."""
    wanted = sorted({int(i) for i in item_ids})
    out: set[int] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start:start + 500]
        out |= {int(i) for i in session.scalars(
            select(Item.id).where(Item.id.in_(chunk), ~sql_labelled(Item.id, field)))}
    return out


def release_pages(session: Session, annotator: str, page_id: int | None = None) -> None:
    """Drop the annotator's leases on pages (one page, or all of them)."""
    pages = select(Round.id).where(Round.strategy == PAGE_STRATEGY)
    if page_id is not None:
        pages = pages.where(Round.id == page_id)
    session.execute(Lease.__table__.delete().where(Lease.annotator == annotator, Lease.round_id.in_(pages)))


def get_page(session: Session, page_id: int) -> Round | None:
    rnd = session.get(Round, page_id)
    return rnd if rnd is not None and rnd.strategy == PAGE_STRATEGY else None


def thumbs(session: Session, page_id: int, *, field: str = DEFAULT_FIELD) -> list[Thumb]:
    """The page's items in the order shown, with their score and the page version's top class of ``field``."""
    rnd = get_page(session, page_id)
    if rnd is None:
        return []
    rows = session.execute(
        select(QueueEntry.item_id, Item.path, QueueEntry.score, _pred_of(field)[0])
        .join(Item, Item.id == QueueEntry.item_id)
        .outerjoin(Prediction, and_(Prediction.item_id == QueueEntry.item_id,
                                    Prediction.model_version_id == rnd.model_version_id))
        .where(QueueEntry.round_id == page_id)
        .order_by(QueueEntry.priority)
    ).all()
    return [Thumb(int(i), str(p), float(s), c) for i, p, s, c in rows]


def leased_on_page(session: Session, annotator: str, page_id: int, *, now: datetime | None = None) -> set[int]:
    """Items of the page that the annotator's lease still holds."""
    now = now or utcnow()
    return {int(i) for i in session.scalars(
        select(Lease.item_id).where(Lease.annotator == annotator, Lease.round_id == page_id,
                                    Lease.expires_at >= now))}


def queue_marked(session: Session, version_id: int | None, marked: Sequence[tuple[int, float]], note: str) -> Round:
    """Open a round of the items marked "does not belong" on a page, served one at a time with ``note``."""
    rnd = work.open_round(session, strategy=MARKED_STRATEGY, model_version_id=version_id,
                          item_ids=[i for i, _ in marked], scores=[s for _, s in marked],
                          score_name=note[:64])
    return rnd


def page_ids(session: Session, round_ids: Iterable[int | None]) -> set[int]:
    """Those of ``round_ids`` that are pages."""
    wanted = sorted({int(r) for r in round_ids if r is not None})
    if not wanted:
        return set()
    return {int(r) for r in session.scalars(select(Round.id).where(Round.id.in_(wanted),
                                                                   Round.strategy == PAGE_STRATEGY))}


def last_page_labels(session: Session, annotator: str) -> list[Label]:
    """The annotator's labels of their latest page that still count (what undoing a page takes back)."""
    lab = label_table("ul")
    pages = select(Round.id).where(Round.strategy == PAGE_STRATEGY)
    mine = and_(lab.c.annotator == annotator, sql_human_class(lab, None), sql_effective(lab))  # a page of any field
    latest = session.execute(
        select(func.max(lab.c.round_id)).where(mine, lab.c.round_id.in_(pages))
    ).scalar_one_or_none()
    if latest is None:
        return []
    ids = select(lab.c.id).where(mine, lab.c.round_id == latest)
    return list(session.scalars(select(Label).where(Label.id.in_(ids)).order_by(Label.id)))


def page_label_counts(session: Session, field: str | None = None) -> dict[str, int]:
    """annotator -> their effective human class labels of ``field`` (any field when None) given on a page."""
    lab = label_table("cl")
    pages = select(Round.id).where(Round.strategy == PAGE_STRATEGY)
    rows = session.execute(
        select(lab.c.annotator, func.count())
        .where(sql_human_class(lab, field), sql_effective(lab), lab.c.round_id.in_(pages))
        .group_by(lab.c.annotator)
    ).all()
    return {str(a): int(n) for a, n in rows}
