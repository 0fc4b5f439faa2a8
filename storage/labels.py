"""Append-only labels and the derived current label of an item.

The current label is: the latest ``review`` label, else the majority of the humans' labels
(a tie goes to the latest of the tied classes), else the latest ``imported`` label. Undone labels
(those an ``undo`` row points at) and rows without a class (skipped, unsure) do not count. Each
rule is per label field (`storage.fields`; the default field unless one is named).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, select

from storage import meaning
from storage.aliases import all_aliases
from storage.db import in_chunks
from storage.enums import CLASS_DECISIONS, Decision, Kind
from storage.fields import DEFAULT_FIELD, check_field_name
from storage.meaning import (
    CurrentLabel,
    derive,
    effective,
    label_table,
    resolve_class,
    sql_done,
    sql_effective,
    sql_human_class,
    sql_labelled,
)
from storage.tables import DECISIONS, LABEL_KINDS, Item, Label

__all__ = [
    "CurrentLabel", "append", "append_many", "count_done", "count_human_class", "count_labelled", "current",
    "current_by_field", "decisions_by_annotator",
    "derive", "effective", "for_items", "open_fields", "item_rows", "human_ratings", "item_ids_since", "last_human", "latest_given",
    "labelled_by_split", "passes_by_item", "snapshot", "through_aliases", "uses_by_class",
]


def append(session: Session, label: Label) -> Label:
    """Validate and insert one label row; returns it with its id."""
    return append_many(session, [label])[0]


def append_many(session: Session, rows: Sequence[Label]) -> list[Label]:
    """Validate and insert label rows in one flush (an import's batch); returns them with ids.
    An undo row is about the field of the row it undoes, whatever its caller set."""
    for label in rows:
        _validate(label)
        if label.decision == Decision.UNDO:
            undone = session.get(Label, label.undoes_id)
            if undone is None:
                raise ValueError(f"an undo label names label {label.undoes_id}, which does not exist")
            label.field = undone.field
    session.add_all(rows)
    session.flush()
    return list(rows)


def _validate(label: Label) -> None:
    # Store plain strings: enum members would otherwise reach drivers that adapt by exact type.
    label.kind = str(label.kind)
    label.decision = str(label.decision)
    label.field = check_field_name(label.field or DEFAULT_FIELD)
    if label.kind not in LABEL_KINDS:
        raise ValueError(f"unknown label kind {label.kind!r}: use one of {', '.join(LABEL_KINDS)}")
    if label.decision not in DECISIONS:
        raise ValueError(f"unknown decision {label.decision!r}: use one of {', '.join(DECISIONS)}")
    needs_class = label.decision in (Decision.GIVEN, *CLASS_DECISIONS, Decision.RESOLVED)
    if needs_class and not label.label:
        raise ValueError(f"a {label.decision!r} label needs a class")
    if label.decision == Decision.UNDO and label.undoes_id is None:
        raise ValueError("an undo label must name the label it undoes (undoes_id)")


def for_items(session: Session, item_ids: Iterable[int] | None = None, *, upto_label_id: int | None = None,
              upto_alias_id: int | None = None) -> dict[int, list[Label]]:
    """Every label row, oldest first, grouped by item (all items when ``item_ids`` is None), with
    classes read through the aliases. ``upto_*`` read the store as it was: only label rows and
    aliases with ids up to those (how an old version's label snapshot is reproduced)."""
    grouped: dict[int, list[Label]] = defaultdict(list)
    query = select(Label).order_by(Label.id)
    if upto_label_id is not None:
        query = query.where(Label.id <= upto_label_id)
    if item_ids is None:
        rows = list(session.exec(query))
    else:
        rows = sorted(in_chunks(session, query, Label.item_id, item_ids), key=lambda r: r.id or 0)
    for row in through_aliases(session, rows, upto_alias_id=upto_alias_id):
        grouped[row.item_id].append(row)
    return grouped


def through_aliases(session: Session, rows: Sequence[Label], *, upto_alias_id: int | None = None) -> list[Label]:
    """``rows`` with their classes (label, suggestion) read through the class aliases: a row a
    rename applies to comes back as a detached copy, so nothing is ever written back."""
    aliases = [a for a in all_aliases(session) if upto_alias_id is None or (a.id or 0) <= upto_alias_id]
    if not aliases:
        return list(rows)
    out = []
    for r in rows:
        label = resolve_class(r.label, aliases, label_id=r.id, field=r.field)
        suggestion = resolve_class(r.suggestion, aliases, label_id=r.id, field=r.field)
        if (label, suggestion) == (r.label, r.suggestion):
            out.append(r)
        else:
            out.append(Label(**{**r.model_dump(), "label": label, "suggestion": suggestion}))
    return out


def current(session: Session, item_ids: Iterable[int] | None = None, *,
            field: str = DEFAULT_FIELD) -> dict[int, CurrentLabel]:
    """Current labels of ``field`` keyed by item id (items without one are absent)."""
    out: dict[int, CurrentLabel] = {}
    for item_id, rows in for_items(session, item_ids).items():
        cur = derive(rows, field)
        if cur is not None:
            out[item_id] = cur
    return out


def latest_given(session: Session, item_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """item -> {field: its latest effective imported (given) label}, read through the aliases: what
    a re-import compares a manifest's labels with."""
    out: dict[int, dict[str, str]] = {}
    for item_id, rows in for_items(session, item_ids).items():
        for r in effective(rows):
            if r.kind == Kind.IMPORTED and r.label:
                out.setdefault(item_id, {})[r.field] = r.label
    return out


def last_human(session: Session, annotator: str, *, kind: str = Kind.HUMAN) -> Label | None:
    """The annotator's latest label of ``kind`` (`human`, or `review` for a reviewer) that is not
    undone: what Backspace would undo."""
    rows = session.exec(
        select(Label).where(Label.annotator == annotator, Label.kind == kind)
        .order_by(Label.id.desc()).limit(200)
    ).all()
    kept = effective(list(reversed(rows)))
    return kept[-1] if kept else None


def open_fields(session: Session, annotator: str, item_id: int, fields: Sequence[str], *, overlap: int,
                rows: list[Label] | None = None) -> list[str]:
    """The fields of ``item_id`` still open for ``annotator`` (`storage.meaning.open_fields`; the
    leases on the item are not counted: they hold it themselves); ``rows``: the item's label rows
    when the caller has read them already."""
    rows = item_rows(session, item_id) if rows is None else rows
    return meaning.open_fields(rows, annotator, fields, overlap=overlap)


def item_rows(session: Session, item_id: int) -> list[Label]:
    """Every label row of one item, oldest first (what the item-level rules of `storage.meaning` read)."""
    return list(session.exec(select(Label).where(Label.item_id == item_id).order_by(Label.id)))


def _effective_rows():  # noqa: ANN202
    lab = label_table()
    return lab, sql_effective(lab)


def count_human_class(session: Session, *, after_id: int = 0, field: str | None = None) -> int:
    """Effective human class labels (accepted or corrected, not undone) with an id above ``after_id``,
    of ``field`` (every field when None: each one is a label a retrain learns from)."""
    lab, eff = _effective_rows()
    query = select(func.count()).select_from(lab).where(lab.c.id > after_id, sql_human_class(lab, field), eff)
    return int(session.execute(query).scalar_one())


def count_rows(session: Session, *, field: str = DEFAULT_FIELD, upto_label_id: int | None = None) -> int:
    """Label rows of ``field`` of any kind and decision with ids up to ``upto_label_id`` (all when
    None): between two snapshots, how far that field's labels moved. An undo row counts under the
    field written on it."""
    query = select(func.count()).select_from(Label).where(Label.field == field)
    if upto_label_id is not None:
        query = query.where(Label.id <= upto_label_id)
    return int(session.execute(query).scalar_one())


def count_labelled(session: Session, field: str = DEFAULT_FIELD) -> int:
    """Items labelled in ``field`` (`storage.meaning.is_labelled`): a person's class label that still counts."""
    return int(session.execute(select(func.count()).select_from(Item).where(sql_labelled(Item.id, field)))
               .scalar_one())


def count_done(session: Session, fields: Sequence[str]) -> int:
    """Items labelled in every one of ``fields`` (`storage.meaning.is_done`)."""
    return int(session.execute(select(func.count()).select_from(Item).where(sql_done(Item.id, fields))).scalar_one())


def labelled_by_split(session: Session, field: str = DEFAULT_FIELD) -> dict[str, int]:
    """Items labelled in ``field`` per split."""
    rows = session.execute(select(Item.split, func.count()).where(sql_labelled(Item.id, field))
                           .group_by(Item.split))
    return {split: int(n) for split, n in rows}


def decisions_by_annotator(session: Session, annotator: str | None = None, *,
                           field: str | None = None) -> dict[str, Counter]:
    """annotator -> Counter(decision) of their effective human and review rows about ``field``
    (every field when None: a decision per field of an item; undone decisions and the undo rows
    themselves are not counted)."""
    lab, eff = _effective_rows()
    query = (select(lab.c.annotator, lab.c.decision, func.count()).select_from(lab)
             .where(lab.c.kind != Kind.IMPORTED.value, eff).group_by(lab.c.annotator, lab.c.decision))
    if annotator is not None:
        query = query.where(lab.c.annotator == annotator)
    if field is not None:
        query = query.where(lab.c.field == field)
    out: dict[str, Counter] = {}
    for name, decision, n in session.execute(query):
        out.setdefault(name, Counter())[decision] += int(n)
    return out


def passes_by_item(session: Session) -> dict[int, Counter]:
    """item -> Counter of its effective skipped and unsure human decisions (the export's columns)."""
    lab, eff = _effective_rows()
    passes = [Decision.SKIPPED.value, Decision.UNSURE.value]
    query = (select(lab.c.item_id, lab.c.decision, func.count()).select_from(lab)
             .where(lab.c.kind == Kind.HUMAN.value, lab.c.decision.in_(passes), eff)
             .group_by(lab.c.item_id, lab.c.decision))
    out: dict[int, Counter] = {}
    for item_id, decision, n in session.execute(query):
        out.setdefault(item_id, Counter())[decision] += int(n)
    return out


def human_ratings(session: Session, field: str = DEFAULT_FIELD) -> dict[int, dict[str, str]]:
    """item -> {annotator: class} from effective human class labels of ``field`` (the latest per
    annotator). Reads every human label (for the dashboard and agreement, not the labelling hot path)."""
    lab, eff = _effective_rows()
    query = (select(lab.c.id, lab.c.item_id, lab.c.annotator, lab.c.label).select_from(lab)
             .where(sql_human_class(lab, field), eff).order_by(lab.c.id))
    aliases = all_aliases(session)
    out: dict[int, dict[str, str]] = {}
    for label_id, item_id, annotator, label in session.execute(query):
        out.setdefault(item_id, {})[annotator] = resolve_class(label, aliases, label_id=label_id, field=field)
    return out


def item_ids_since(session: Session, since: datetime) -> set[int]:
    """Items with a label row written at or after ``since``."""
    return set(session.exec(select(Label.item_id).where(Label.created_at >= since)))


def uses_by_class(session: Session, field: str = DEFAULT_FIELD) -> dict[str, int]:
    """Label rows of ``field`` per class name read through the aliases (all kinds, undone ones included)."""
    aliases = all_aliases(session, field)
    named = (Label.label.is_not(None), Label.field == field)
    if not aliases:
        rows = session.exec(select(Label.label, func.count()).where(*named).group_by(Label.label))
        return {name: int(n) for name, n in rows}
    out: Counter = Counter()
    for label_id, name in session.exec(select(Label.id, Label.label).where(*named)):
        out[resolve_class(name, aliases, label_id=label_id, field=field)] += 1
    return dict(out)


def current_by_field(session: Session, fields: Sequence[str]) -> tuple[int, dict[str, dict[int, CurrentLabel]]]:
    """(highest label id, field -> current labels keyed by item id) for every item, the label
    rows read once for all ``fields``."""
    rows = for_items(session)
    top = max((r.id or 0 for group in rows.values() for r in group), default=0)
    out: dict[str, dict[int, CurrentLabel]] = {f: {} for f in fields}
    for item_id, group in rows.items():
        for f in fields:
            cur = derive(group, f)
            if cur is not None:
                out[f][item_id] = cur
    return top, out


def snapshot(session: Session, *, upto_label_id: int | None = None, upto_alias_id: int | None = None,
             field: str = DEFAULT_FIELD) -> tuple[int, dict[int, CurrentLabel]]:
    """(highest label id, current labels of ``field``): the label snapshot a retrain starts from;
    with ``upto_*`` the one it started from back then (see `for_items`)."""
    rows = for_items(session, upto_label_id=upto_label_id, upto_alias_id=upto_alias_id)
    top = max((r.id or 0 for group in rows.values() for r in group), default=0)
    out = {}
    for item_id, group in rows.items():
        cur = derive(group, field)
        if cur is not None:
            out[item_id] = cur
    return top, out
