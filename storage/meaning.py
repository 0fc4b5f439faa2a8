"""What the store's rows mean, each rule defined once: a Python predicate over rows and the SQL
expression that selects the same rows. Every count, queue and view asks these; nothing else
says what "labelled" or "current" is.

- field: every label row is about one label field of the photo (`storage.fields`; ``category``
  by default). The rules below are per field: "labelled", "current label" and the class labels
  take a ``field`` (default ``category``), so a single-field project reads as it always did.
- effective: a label row that counts (not an ``undo`` row, and no ``undo`` row names it).
- human class label: an effective human row that gives a class (accepted or corrected).
- person class label: a human class label or a review label; an item with one for a field is
  *labelled* in that field. An imported (given) label alone does not make an item labelled: it is
  what the tool checks. An item is *done* when it is labelled in every field of the project.
- seen by an annotator in a field: an effective human decision of theirs about that field (any
  of ``SEEN_DECISIONS``); they are not asked about that field of the item again.
- done in a field for the hand-out: an effective human decision in ``DONE_DECISIONS`` about it
  (a skip leaves the field to others); a review label settles the field.
- open for an annotator (the hand-out, `open_fields`): the fields of an item they have not seen,
  that no reviewer settled, and that fewer than ``overlap`` annotators are done with (the leases
  held on the item count against every field). An item is served while one of its fields is open
  for the annotator, and they are asked about those fields only: an item left midway goes to
  whoever asks next (its own annotator first), and an item is finished when every field is.
- round state of a queued item: labelled (in every field of the project: done), else unsure,
  else skipped (in any field), else unreadable, else open.
- current label: the latest review label, else the majority of human class labels (a tie goes
  to the latest of the tied classes), else the latest imported label (``derive``).
- class aliases: a renamed or merged class of a field reads under its new name in that field's
  rows stored before the rename (`resolve_class`); no row is rewritten.
- serving version: the newest model version whose predictions cover every readable pool item;
  until a version covers the pool the one before it serves (the newest of all when none does).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, exists, func, literal, or_, select, true

from storage.enums import (
    CLASS_DECISIONS,
    DONE_DECISIONS,
    SEEN_DECISIONS,
    Decision,
    DisputeReason,
    DisputeStatus,
    Kind,
    Role,
    RoundState,
    Source,
    Split,
)
from storage.fields import DEFAULT_FIELD
from storage.tables import Item, Label, Prediction

__all__ = [
    "CLASS_DECISIONS", "DEFAULT_FIELD", "DONE_DECISIONS", "SEEN_DECISIONS", "SOURCE_PRECEDENCE", "CurrentLabel",
    "Decision", "DisputeReason", "DisputeStatus", "Kind", "Role", "RoundState", "Source", "Split", "derive",
    "done_by", "effective", "in_field", "is_done", "is_human_class", "is_labelled", "is_person_class", "is_reviewed",
    "label_table", "open_fields", "resolve_class", "round_state", "serving_id", "sql_covers_pool", "sql_done",
    "sql_done_count", "sql_effective", "sql_human_class", "sql_labelled", "sql_open_for", "sql_person_class",
    "sql_reviewed",
    "sql_round_state", "sql_seen_by", "seen_by",
]

SOURCE_PRECEDENCE = (Source.REVIEW, Source.CONSENSUS, Source.SINGLE, Source.IMPORTED)


class LabelLike(Protocol):
    id: int | None
    item_id: int
    field: str
    annotator: str
    label: str | None
    kind: str
    decision: str
    undoes_id: int | None


@functools.cache
def label_table(name: str = "lab") -> Any:  # noqa: ANN401 - an Alias of the label table
    """The alias ``name`` of the label table, for the ``sql_*`` expressions below. One object per
    name: an alias is immutable and reusable across statements, and building a fresh one (with
    its column proxies) on every query cost the labeller a large share of each request."""
    return Label.__table__.alias(name)


# ---------------------------------------------------------------- effective

def effective(rows: Sequence[Label]) -> list[Label]:
    """The rows that still count: undo rows and the rows they undo removed (order kept)."""
    undone = {r.undoes_id for r in rows if r.decision == Decision.UNDO}
    return [r for r in rows if r.decision != Decision.UNDO and r.id not in undone]


def sql_effective(lab: Any) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `effective` for rows of the label alias ``lab``."""
    undo = label_table("undo_of_" + lab.name)
    # item_id first so the lookup uses its index (an undo row always names a label of its own item).
    undone = exists(select(literal(1)).where(undo.c.item_id == lab.c.item_id, undo.c.undoes_id == lab.c.id))
    return and_(lab.c.decision != Decision.UNDO.value, ~undone)


# ---------------------------------------------------------------- fields

def in_field(rows: Sequence[Label], field: str | None = DEFAULT_FIELD) -> list[Label]:
    """The rows about ``field`` (every row when None), order kept. Apply after `effective`: an
    undo row is about the field of the row it undoes, but filtering first would be harmless too."""
    return list(rows) if field is None else [r for r in rows if r.field == field]


def _sql_in_field(lab: Any, field: str | None) -> ColumnElement[bool]:  # noqa: ANN401
    return true() if field is None else lab.c.field == field


# ---------------------------------------------------------------- class labels

def is_human_class(row: LabelLike) -> bool:
    """A human row that gives a class (apply to effective rows)."""
    return row.kind == Kind.HUMAN and row.decision in CLASS_DECISIONS and bool(row.label)


def sql_human_class(lab: Any, field: str | None = DEFAULT_FIELD) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `is_human_class` for rows of ``field`` (any field when None)."""
    return and_(lab.c.kind == Kind.HUMAN.value, lab.c.decision.in_([d.value for d in CLASS_DECISIONS]),
                lab.c.label.is_not(None), _sql_in_field(lab, field))


def is_person_class(row: LabelLike) -> bool:
    """A class given by a person: a human class label or a review label."""
    return is_human_class(row) or (row.kind == Kind.REVIEW and bool(row.label))


def sql_person_class(lab: Any, field: str | None = DEFAULT_FIELD) -> ColumnElement[bool]:  # noqa: ANN401
    return and_(or_(sql_human_class(lab, None), and_(lab.c.kind == Kind.REVIEW.value, lab.c.label.is_not(None))),
                _sql_in_field(lab, field))


def is_labelled(rows: Sequence[Label], field: str = DEFAULT_FIELD) -> bool:
    """Whether an item with these label rows is labelled in ``field`` (an effective person class label)."""
    return any(is_person_class(r) for r in in_field(effective(rows), field))


def sql_labelled(item_id: Any, field: str = DEFAULT_FIELD) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `is_labelled` for the item whose id is the column ``item_id``."""
    lab = label_table("labelled")
    return exists(select(literal(1)).where(lab.c.item_id == item_id, sql_person_class(lab, field), sql_effective(lab)))


def is_done(rows: Sequence[Label], fields: Sequence[str]) -> bool:
    """Whether an item is decided in every one of ``fields`` (the project's fields)."""
    return all(is_labelled(rows, f) for f in fields)


def sql_done(item_id: Any, fields: Sequence[str]) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `is_done`."""
    return and_(true(), *[sql_labelled(item_id, f) for f in fields])


def is_reviewed(rows: Sequence[Label], field: str | None = None) -> bool:
    """Whether a reviewer has settled the item in ``field`` (in any field when None; review rows
    are never undone)."""
    return any(r.kind == Kind.REVIEW for r in in_field(rows, field))


def sql_reviewed(item_id: Any, field: str | None = None) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `is_reviewed`."""
    lab = label_table("reviewed")
    return exists(select(literal(1)).where(lab.c.item_id == item_id, lab.c.kind == Kind.REVIEW.value,
                                           _sql_in_field(lab, field)))


# ---------------------------------------------------------------- the hand-out

def seen_by(rows: Sequence[Label], annotator: str, field: str | None = None) -> bool:
    """Whether ``annotator`` has dealt with ``field`` of the item of these rows (any field when
    None): the hand-out does not ask them about that field again (`open_fields`)."""
    return any(r.annotator == annotator and r.kind == Kind.HUMAN and r.decision in SEEN_DECISIONS
               for r in in_field(effective(rows), field))


def sql_seen_by(item_id: Any, annotator: str, field: str | None = None) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `seen_by`."""
    lab = label_table("seen")
    return exists(select(literal(1)).where(
        lab.c.item_id == item_id, lab.c.annotator == annotator, lab.c.kind == Kind.HUMAN.value,
        lab.c.decision.in_([d.value for d in SEEN_DECISIONS]), _sql_in_field(lab, field), sql_effective(lab)))


def done_by(rows: Sequence[Label], field: str | None = None) -> set[str]:
    """The annotators who are done with ``field`` of the item of these rows (any field when None)."""
    return {r.annotator for r in in_field(effective(rows), field)
            if r.kind == Kind.HUMAN and r.decision in DONE_DECISIONS}


def sql_done_count(item_id: Any, field: str | None = None) -> Any:  # noqa: ANN401 - a scalar subquery
    """SQL twin of ``len(done_by(rows, field))``."""
    lab = label_table("done")
    return (select(func.count(func.distinct(lab.c.annotator)))
            .where(lab.c.item_id == item_id, lab.c.kind == Kind.HUMAN.value,
                   lab.c.decision.in_([d.value for d in DONE_DECISIONS]), _sql_in_field(lab, field), sql_effective(lab))
            .scalar_subquery())


def open_fields(rows: Sequence[Label], annotator: str, fields: Sequence[str], *, overlap: int,
                leases: int = 0) -> list[str]:
    """The fields (of ``fields``, the project's, in order) of the item of these rows that the
    hand-out still asks ``annotator`` about: not seen by them, not settled by a reviewer, and done
    by fewer than ``overlap`` annotators, counting the ``leases`` held on the item against every
    field (the hand-out counts them all; an annotator choosing the next field of the item they
    hold passes 0). The item is served to them while this is not empty."""
    return [f for f in fields if not seen_by(rows, annotator, f) and not is_reviewed(rows, f)
            and len(done_by(rows, f)) + leases < overlap]


def sql_open_for(item_id: Any, annotator: Any, fields: Sequence[str], *, overlap: Any,  # noqa: ANN401
                 leases: Any = 0) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of ``bool(open_fields(...))``; ``annotator``, ``overlap`` and ``leases`` may be
    values, bound parameters or (scalar) column expressions."""
    if not fields:
        raise ValueError("a project has at least one label field")
    return or_(*[and_(~sql_seen_by(item_id, annotator, f), ~sql_reviewed(item_id, f),
                      sql_done_count(item_id, f) + leases < overlap) for f in fields])


# ---------------------------------------------------------------- round progress

def round_state(rows: Sequence[Label], fields: Sequence[str] = (DEFAULT_FIELD,), *,
                unreadable: bool = False) -> RoundState:
    """What became of a queued item: labelled (in every one of ``fields``, the project's: `is_done`),
    else unsure, else skipped (in any field), else unreadable, else open."""
    eff = effective(rows)
    if is_done(eff, fields):
        return RoundState.LABELLED
    human = {r.decision for r in eff if r.kind == Kind.HUMAN}
    if Decision.UNSURE in human:
        return RoundState.UNSURE
    if Decision.SKIPPED in human:
        return RoundState.SKIPPED
    return RoundState.UNREADABLE if unreadable else RoundState.OPEN


def _sql_human_decision(item_id: Any, decision: Decision) -> ColumnElement[bool]:  # noqa: ANN401
    lab = label_table(f"d_{decision.value}")
    return exists(select(literal(1)).where(lab.c.item_id == item_id, lab.c.kind == Kind.HUMAN.value,
                                           lab.c.decision == decision.value, sql_effective(lab)))


def sql_round_state(item_id: Any, item_error: Any,  # noqa: ANN401
                    fields: Sequence[str] = (DEFAULT_FIELD,)) -> dict[RoundState, ColumnElement[bool]]:
    """SQL twin of `round_state`: one mutually exclusive condition per state but OPEN."""
    labelled = sql_done(item_id, fields)
    unsure = _sql_human_decision(item_id, Decision.UNSURE)
    skipped = _sql_human_decision(item_id, Decision.SKIPPED)
    return {
        RoundState.LABELLED: labelled,
        RoundState.UNSURE: and_(~labelled, unsure),
        RoundState.SKIPPED: and_(~labelled, ~unsure, skipped),
        RoundState.UNREADABLE: and_(~labelled, ~unsure, ~skipped, item_error.is_not(None)),
    }


# ---------------------------------------------------------------- the current label

@dataclass(frozen=True)
class CurrentLabel:
    item_id: int
    label: str
    source: Source
    label_id: int  # the row that decided it (the latest agreeing one for consensus)
    n_human: int  # human labels with a class
    agreement: float | None  # share of those that agree with `label`; None without human labels
    imported: str | None  # the latest imported (catalogue) label, if any
    annotator: str
    created_at: datetime
    round_id: int | None
    model_version_id: int | None


def derive(rows: Sequence[Label], field: str = DEFAULT_FIELD) -> CurrentLabel | None:
    """The current label of ``field`` from one item's rows (oldest first), or None when it has
    none; precedence review > consensus > single > imported (`SOURCE_PRECEDENCE`)."""
    rows = in_field(effective(rows), field)
    imported = [r for r in rows if r.kind == Kind.IMPORTED and r.label]
    last_imported = imported[-1].label if imported else None
    humans = [r for r in rows if is_human_class(r)]
    reviews = [r for r in rows if r.kind == Kind.REVIEW and r.label]

    def make(row: Label, source: Source, agreement: float | None) -> CurrentLabel:
        return CurrentLabel(item_id=row.item_id, label=row.label or "", source=source, label_id=row.id or 0,
                            n_human=len(humans), agreement=agreement, imported=last_imported,
                            annotator=row.annotator, created_at=row.created_at, round_id=row.round_id,
                            model_version_id=row.model_version_id)

    def agreement_with(label: str) -> float | None:
        if not humans:
            return None
        return sum(r.label == label for r in humans) / len(humans)

    if reviews:
        row = reviews[-1]
        return make(row, Source.REVIEW, agreement_with(row.label or ""))
    if humans:
        counts = Counter(r.label for r in humans)
        top = max(counts.values())
        tied = {c for c, n in counts.items() if n == top}
        row = next(r for r in reversed(humans) if r.label in tied)
        return make(row, Source.SINGLE if len(humans) == 1 else Source.CONSENSUS, top / len(humans))
    if imported:
        return make(imported[-1], Source.IMPORTED, None)
    return None


def contradicts_import(cur: CurrentLabel | None) -> bool | None:
    """Whether the people who labelled an item contradict its imported (given) label: None when
    there is no imported label or no person's label yet, else whether their class differs."""
    if cur is None or cur.imported is None or cur.source == Source.IMPORTED:
        return None
    return cur.label != cur.imported


# ---------------------------------------------------------------- class aliases

class AliasLike(Protocol):
    field: str
    old: str
    new: str
    label_upto: int
    version_upto: int


def resolve_class(name: str | None, aliases: Sequence[AliasLike], *, label_id: int | None = None,
                  version_id: int | None = None, field: str = DEFAULT_FIELD) -> str | None:
    """The name today of a class of ``field`` stored as ``name`` in label row ``label_id`` (or in
    model version ``version_id``): that field's aliases recorded after that row apply in order (a
    rename of a rename follows the chain; a class added again later under an old name is not
    touched; a class of the same name in another field is another class)."""
    if name is None:
        return None
    for a in aliases:
        if a.field != field:
            continue
        applies = (label_id is not None and label_id <= a.label_upto) or (
            version_id is not None and version_id <= a.version_upto)
        if applies and name == a.old:
            name = a.new
    return name


# ---------------------------------------------------------------- the serving version

def covers(predicted: Iterable[int], pool: Iterable[int]) -> bool:
    """Whether a version that predicted the items ``predicted`` covers the (readable) ``pool``."""
    return set(pool) <= set(predicted)


def serving_id(version_ids: Sequence[int], covering: Iterable[int]) -> int | None:
    """The serving version among ``version_ids`` given the ids of those that cover the pool:
    the newest covering one, else the newest of all (None without versions)."""
    cover = set(covering)
    newest_first = sorted(version_ids, reverse=True)
    return next((v for v in newest_first if v in cover), newest_first[0] if newest_first else None)


def sql_covers_pool(version_id: Any) -> ColumnElement[bool]:  # noqa: ANN401
    """SQL twin of `covers` for the version whose id is the column ``version_id``."""
    item = Item.__table__.alias("pool_item")
    pred = Prediction.__table__.alias("pool_pred")
    # correlate_except: ``version_id`` lies two levels up, beyond SQLAlchemy's auto-correlation.
    predicted = select(literal(1)).where(pred.c.item_id == item.c.id, pred.c.model_version_id == version_id)
    missing = select(literal(1)).where(item.c.split == Split.POOL.value, item.c.error.is_(None),
                                       ~exists(predicted.correlate_except(pred)))
    return ~exists(missing.correlate_except(item))

