"""Disputed items: repository functions. Each takes a `Session`; the caller owns the transaction.

Open disputes of one reason and label field are replaced wholesale by a refresh (they are a
ranking, not a record); resolved ones are kept with the label that settled them. Every dispute is
about one field of its item (`Dispute.field`): a review label of that field settles it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import Session, select

from storage import labels
from storage.enums import HOLDOUT_QUEUE, POOL_QUEUE, DisputeReason, DisputeStatus, Kind
from storage.fields import DEFAULT_FIELD
from storage.meaning import contradicts_import, derive
from storage.tables import DISPUTE_REASONS, Dispute, Label, utcnow

OPEN = DisputeStatus.OPEN
RESOLVED = DisputeStatus.RESOLVED
QUEUES = {"pool": POOL_QUEUE, "holdout": HOLDOUT_QUEUE}
# Rank of a dispute opened because a person contradicted the given label: above any model estimate.
CONTRADICTED_SCORE = 1.0


def check_reason(reason: str) -> str:
    if reason not in DISPUTE_REASONS:
        raise ValueError(f"unknown dispute reason {reason!r}: use one of {', '.join(DISPUTE_REASONS)}")
    return reason


def replace_open(session: Session, reason: str, rows: Sequence[tuple[int, float, dict[str, Any]]], *,
                 field: str = DEFAULT_FIELD) -> int:
    """Drop the open disputes of ``reason`` about ``field`` and add ``rows`` of (item_id, score,
    detail). Returns how many are open now."""
    check_reason(reason)
    session.execute(delete(Dispute).where(Dispute.reason == reason, Dispute.status == OPEN, Dispute.field == field))
    session.add_all(
        Dispute(item_id=int(item_id), field=field, reason=reason, score=float(score), detail=dict(detail),
                status=OPEN)
        for item_id, score, detail in rows
    )
    session.flush()
    return len(rows)


def open_disputes(session: Session, *, reason: str | None = None, limit: int | None = None,
                  queue: str = "pool", field: str | None = None) -> list[Dispute]:
    """Open disputes of one list (``queue``: ``pool``, the review queue, or ``holdout``), highest
    score first (ties: oldest id first); only those of ``reason`` and of ``field`` when given."""
    if queue not in QUEUES:
        raise ValueError(f"unknown dispute list {queue!r}: use one of {', '.join(QUEUES)}")
    query = select(Dispute).where(Dispute.status == OPEN, Dispute.reason.in_([r.value for r in QUEUES[queue]]))
    if reason is not None:
        query = query.where(Dispute.reason == check_reason(reason))
    if field is not None:
        query = query.where(Dispute.field == field)
    query = query.order_by(Dispute.score.desc(), Dispute.id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.exec(query))


def count_open(session: Session) -> dict[str, int]:
    """Open disputes per reason (all fields)."""
    rows = session.exec(select(Dispute.reason, func.count()).where(Dispute.status == OPEN).group_by(Dispute.reason))
    return {reason: int(n) for reason, n in rows}


def count_open_by_field(session: Session) -> dict[str, dict[str, int]]:
    """field -> open disputes per reason."""
    rows = session.exec(select(Dispute.field, Dispute.reason, func.count()).where(Dispute.status == OPEN)
                        .group_by(Dispute.field, Dispute.reason))
    out: dict[str, dict[str, int]] = {}
    for field, reason, n in rows:
        out.setdefault(field, {})[reason] = int(n)
    return out


def open_reasons(session: Session, item_ids: Iterable[int] | None = None, *,
                 field: str | None = None) -> dict[int, list[str]]:
    """item -> its open dispute reasons (sorted, unique), for ``item_ids`` or every item; only
    those about ``field`` when given."""
    out: dict[int, set[str]] = defaultdict(set)
    query = select(Dispute.item_id, Dispute.reason).where(Dispute.status == OPEN)
    if field is not None:
        query = query.where(Dispute.field == field)
    for item_id, reason in session.exec(query):
        out[item_id].add(reason)
    wanted = None if item_ids is None else set(item_ids)
    return {i: sorted(r) for i, r in out.items() if wanted is None or i in wanted}


def get(session: Session, dispute_id: int) -> Dispute | None:
    return session.get(Dispute, dispute_id)


def for_item(session: Session, item_id: int, *, status: str | None = None) -> list[Dispute]:
    query = select(Dispute).where(Dispute.item_id == item_id)
    if status is not None:
        query = query.where(Dispute.status == status)
    return list(session.exec(query.order_by(Dispute.id)))


def follow_label(session: Session, label: Label, *, item_rows: Sequence[Label] | None = None) -> list[Dispute]:
    """Keep the item's ``imported_label_suspect`` dispute of the label's field in step with a
    person's class ``label`` just appended: agreeing with the imported label resolves the open one
    (by this label), disagreeing opens one unless one is open. Returns the disputes changed or added.
    ``item_rows``: the item's label rows, ``label`` included, when the caller has read them."""
    if label.kind == Kind.IMPORTED or not label.label:
        return []
    field = label.field or DEFAULT_FIELD
    rows = list(item_rows) if item_rows is not None else labels.item_rows(session, label.item_id)
    verdict = contradicts_import(derive(rows, field))
    if verdict is None:
        return []
    reason = DisputeReason.IMPORTED_LABEL_SUSPECT
    still = [d for d in for_item(session, label.item_id, status=OPEN) if d.reason == reason and d.field == field]
    if verdict is False:
        for d in still:
            d.status = RESOLVED
            d.resolution_label_id = label.id
            d.detail = {**d.detail, "confirmed_by": label.annotator, "resolved_at": utcnow().isoformat(timespec="seconds")}
            session.add(d)
        session.flush()
        return still
    if still:
        return []
    cur = derive(rows, field)
    added = Dispute(item_id=label.item_id, field=field, reason=reason, score=CONTRADICTED_SCORE, status=OPEN,
                    detail={"given": cur.imported if cur else None, "people_say": label.label,
                            "source": "people"})
    session.add(added)
    session.flush()
    return [added]


def resolve(session: Session, dispute_id: int, label: int | Label) -> list[Dispute]:
    """Mark a dispute resolved by ``label`` (a label id or row; normally the ``review`` label
    the reviewer just appended for the same item and field), together with every other open
    dispute of that item and field: one review settles the item's field. Returns the disputes resolved."""
    dispute = session.get(Dispute, dispute_id)
    if dispute is None:
        raise ValueError(f"no dispute {dispute_id}")
    label_id = label.id if isinstance(label, Label) else int(label)
    label = session.get(Label, label_id)
    if label is None or label.item_id != dispute.item_id:
        raise ValueError(f"label {label_id} is not a label of item {dispute.item_id}")
    if label.field != dispute.field:
        raise ValueError(f"label {label_id} is about field {label.field!r}, dispute {dispute_id} about {dispute.field!r}")
    done = []
    for d in for_item(session, dispute.item_id, status=OPEN):
        if d.field != dispute.field:
            continue
        d.status = RESOLVED
        d.resolution_label_id = label_id
        d.detail = {**d.detail, "resolved_at": utcnow().isoformat(timespec="seconds")}
        session.add(d)
        done.append(d)
    if not done:
        raise ValueError(f"dispute {dispute_id} is no longer open (resolved or refreshed meanwhile)")
    session.flush()
    return done


def counts(session: Session) -> dict[tuple[str, str], int]:
    """(reason, status) -> number of disputes, open and resolved: one grouped count."""
    rows = session.exec(select(Dispute.reason, Dispute.status, func.count()).group_by(Dispute.reason, Dispute.status))
    return {(reason, status): int(n) for reason, status, n in rows}


def reopen(session: Session, label_id: int) -> list[Dispute]:
    """Open again the disputes that ``label_id`` resolved (its review was undone). Returns them."""
    rows = list(session.exec(select(Dispute).where(Dispute.resolution_label_id == label_id,
                                                   Dispute.status == RESOLVED)))
    for d in rows:
        d.status = OPEN
        d.resolution_label_id = None
        d.detail = {k: v for k, v in d.detail.items() if k != "resolved_at"}
        session.add(d)
    session.flush()
    return rows
