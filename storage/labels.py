"""Append-only labels and the derived current label of an item.

The current label is: the latest ``review`` label, else the majority of the humans' labels
(a tie goes to the latest of the tied classes), else the latest ``imported`` label. Undone labels
(those an ``undo`` row points at) and rows without a class (skipped, unsure) do not count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, select

from storage.tables import DECISIONS, LABEL_KINDS, Label

# Where a current label comes from (also the export's provenance column).
SOURCES = ("review", "consensus", "single", "imported")
HUMAN_DECISIONS = ("accepted", "corrected")


@dataclass(frozen=True)
class CurrentLabel:
    item_id: int
    label: str
    source: str  # one of SOURCES
    label_id: int  # the row that decided it (the latest agreeing one for consensus)
    n_human: int  # human labels with a class
    agreement: float | None  # share of those that agree with `label`; None without human labels
    imported: str | None  # the latest imported (catalogue) label, if any
    annotator: str
    created_at: datetime
    round_id: int | None
    model_version_id: int | None


def append(session: Session, label: Label) -> Label:
    """Validate and insert one label row; returns it with its id."""
    return append_many(session, [label])[0]


def append_many(session: Session, rows: Sequence[Label]) -> list[Label]:
    """Validate and insert label rows in one flush (an import's batch); returns them with ids."""
    for label in rows:
        _validate(label)
    session.add_all(rows)
    session.flush()
    return list(rows)


def _validate(label: Label) -> None:
    if label.kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {label.kind!r}: use one of {', '.join(LABEL_KINDS)}")
    if label.decision not in DECISIONS:
        raise ValueError(f"unknown decision {label.decision!r}: use one of {', '.join(DECISIONS)}")
    needs_class = label.decision in ("given", "accepted", "corrected", "resolved")
    if needs_class and not label.label:
        raise ValueError(f"a {label.decision!r} label needs a class")
    if label.decision == "undo" and label.undoes_id is None:
        raise ValueError("an undo label must name the label it undoes (undoes_id)")


def for_items(session: Session, item_ids: Iterable[int] | None = None) -> dict[int, list[Label]]:
    """Every label row, oldest first, grouped by item (all items when ``item_ids`` is None)."""
    grouped: dict[int, list[Label]] = defaultdict(list)
    if item_ids is None:
        chunks: list[list[int] | None] = [None]
    else:
        wanted = sorted(set(item_ids))
        chunks = [wanted[i : i + 500] for i in range(0, len(wanted), 500)]
    for chunk in chunks:
        query = select(Label).order_by(Label.id)
        if chunk is not None:
            query = query.where(Label.item_id.in_(chunk))
        for row in session.exec(query):
            grouped[row.item_id].append(row)
    return grouped


def effective(rows: Sequence[Label]) -> list[Label]:
    """The rows that still count: undo rows and the rows they undo removed."""
    undone = {r.undoes_id for r in rows if r.decision == "undo"}
    return [r for r in rows if r.decision != "undo" and r.id not in undone]


def derive(rows: Sequence[Label]) -> CurrentLabel | None:
    """The current label from one item's rows (oldest first), or None when it has none."""
    rows = effective(rows)
    imported = [r for r in rows if r.kind == "imported" and r.label]
    last_imported = imported[-1].label if imported else None
    humans = [r for r in rows if r.kind == "human" and r.label and r.decision in HUMAN_DECISIONS]
    reviews = [r for r in rows if r.kind == "review" and r.label]

    def make(row: Label, source: str, agreement: float | None) -> CurrentLabel:
        return CurrentLabel(
            item_id=row.item_id,
            label=row.label or "",
            source=source,
            label_id=row.id or 0,
            n_human=len(humans),
            agreement=agreement,
            imported=last_imported,
            annotator=row.annotator,
            created_at=row.created_at,
            round_id=row.round_id,
            model_version_id=row.model_version_id,
        )

    def agreement_with(label: str) -> float | None:
        if not humans:
            return None
        return sum(r.label == label for r in humans) / len(humans)

    if reviews:
        row = reviews[-1]
        return make(row, "review", agreement_with(row.label or ""))
    if humans:
        counts = Counter(r.label for r in humans)
        top = max(counts.values())
        tied = {c for c, n in counts.items() if n == top}
        row = next(r for r in reversed(humans) if r.label in tied)
        return make(row, "single" if len(humans) == 1 else "consensus", top / len(humans))
    if imported:
        return make(imported[-1], "imported", None)
    return None


def current(session: Session, item_ids: Iterable[int] | None = None) -> dict[int, CurrentLabel]:
    """Current labels keyed by item id (items without one are absent)."""
    out: dict[int, CurrentLabel] = {}
    for item_id, rows in for_items(session, item_ids).items():
        cur = derive(rows)
        if cur is not None:
            out[item_id] = cur
    return out


def last_human(session: Session, annotator: str, *, kind: str = "human") -> Label | None:
    """The annotator's latest label of ``kind`` (`human`, or `review` for a reviewer) that is not
    undone: what Backspace would undo."""
    rows = session.exec(
        select(Label).where(Label.annotator == annotator, Label.kind == kind).order_by(Label.id.desc()).limit(200)
    ).all()
    undone = {r.undoes_id for r in rows if r.decision == "undo"}
    for row in rows:
        if row.decision != "undo" and row.id not in undone:
            return row
    return None


def snapshot(session: Session) -> tuple[int, dict[int, CurrentLabel]]:
    """(highest label id, current labels): the label snapshot a retrain starts from."""
    rows = for_items(session)
    top = max((r.id or 0 for group in rows.values() for r in group), default=0)
    out = {}
    for item_id, group in rows.items():
        cur = derive(group)
        if cur is not None:
            out[item_id] = cur
    return top, out
