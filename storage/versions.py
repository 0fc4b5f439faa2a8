"""Model versions and their per-item predictions."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, insert, literal
from sqlmodel import Session, select

from storage.aliases import all_aliases
from storage.db import in_chunks
from storage.fields import DEFAULT_FIELD, field_prediction
from storage.meaning import resolve_class, sql_covers_pool
from storage.tables import Item, ModelVersion, Prediction


def _named(session: Session, rows: list) -> list:
    """Versions (the classes of every field's head) or predictions (every field's ``pred``) with
    class names read through each field's aliases (`storage.meaning.resolve_class`). A row an
    alias applies to is detached from the session first, so it is never written back."""
    aliases = all_aliases(session)
    if not aliases:
        return rows
    for row in rows:
        if isinstance(row, ModelVersion):
            names = [resolve_class(c, aliases, version_id=row.id) for c in row.classes]
            heads = (row.artifacts or {}).get("fields") or {}
            other = {f: {**head, "classes": [resolve_class(c, aliases, version_id=row.id, field=f)
                                             for c in head.get("classes") or []]}
                     for f, head in heads.items() if isinstance(head, dict)}
            if names != row.classes or any(other[f] != heads[f] for f in other):
                session.expunge(row)
                row.classes = names
                if other:
                    row.artifacts = {**row.artifacts, "fields": {**heads, **other}}
        else:
            name = resolve_class(row.pred, aliases, version_id=row.model_version_id)
            preds = {f: {**got, "pred": resolve_class(got.get("pred"), aliases, version_id=row.model_version_id,
                                                      field=f)}
                     for f, got in (row.fields or {}).items() if isinstance(got, dict)}
            if name != row.pred or any(preds[f] != row.fields[f] for f in preds):
                session.expunge(row)
                row.pred = name
                if preds:
                    row.fields = {**row.fields, **preds}
    return rows


def _one(session: Session, row: ModelVersion | None) -> ModelVersion | None:
    return None if row is None else _named(session, [row])[0]


def publish(session: Session, version: ModelVersion) -> ModelVersion:
    """Insert a version row. Call only after its artifact files are written (row last)."""
    session.add(version)
    session.flush()
    return version


def latest(session: Session) -> ModelVersion | None:
    """The newest published version (what scoring works on; it may not serve yet, see `serving`)."""
    return _one(session, session.exec(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1)).first())


# pool (of the engine) -> (state of the store, serving version id). The coverage check reads every
# pool item; the answer can only change when a version, a prediction or an item is added or an
# item is found unreadable, so it is recomputed only then (the labeller asks on every item).
_serving_cache: weakref.WeakKeyDictionary[Any, tuple[tuple, int | None]] = weakref.WeakKeyDictionary()
_serving_lock = threading.Lock()


def _store_state(session: Session) -> tuple:
    return tuple(session.execute(select(
        select(func.max(ModelVersion.id)).scalar_subquery(),
        select(func.max(Prediction.id)).scalar_subquery(),
        select(func.max(Item.id)).scalar_subquery(),
        select(func.count()).select_from(Item).where(Item.error.is_not(None)).scalar_subquery(),
    )).one())


def serving(session: Session) -> ModelVersion | None:
    """The version that serves suggestions, selection and the UI (`storage.meaning.serving_id`):
    the newest one whose predictions cover every readable pool item, else the newest."""
    pool = session.get_bind().pool
    state = _store_state(session)
    with _serving_lock:
        hit = _serving_cache.get(pool)
    if hit is not None and hit[0] == state:
        return None if hit[1] is None else get(session, hit[1])
    covering = select(ModelVersion.id).where(sql_covers_pool(ModelVersion.id)).order_by(ModelVersion.id.desc()).limit(1)
    found = session.exec(covering).first()
    version_id = found if found is not None else state[0]  # no version covers the pool: the newest
    with _serving_lock:
        _serving_cache[pool] = (state, version_id)
    return None if version_id is None else get(session, version_id)


def covers_pool(session: Session, version_id: int) -> bool:
    """Whether the version has predicted every readable pool item (`storage.meaning.covers`)."""
    return bool(session.execute(select(sql_covers_pool(literal(version_id)))).scalar_one())


def serving_predictions(session: Session, item_ids: Iterable[int], *,
                        field: str = DEFAULT_FIELD) -> tuple[ModelVersion | None, dict[int, Prediction]]:
    """The serving version, and its predictions with probabilities for ``field`` of those items
    that have one (none: no version, or one without a head for that field's classes; read the
    field's part with `storage.fields.field_prediction`). The version is looked up once."""
    version = serving(session)
    if version is None:
        return None, {}
    found = predictions(session, version.id, item_ids)
    return version, {i: p for i, p in found.items()
                     if (part := field_prediction(p, field)) is not None and part.probs is not None}


def serving_prediction(session: Session, item_id: int, *,
                       field: str = DEFAULT_FIELD) -> tuple[Prediction, ModelVersion] | None:
    """`serving_predictions` of one item: (prediction, version), or None."""
    version, found = serving_predictions(session, [item_id], field=field)
    return None if item_id not in found else (found[item_id], version)


def get(session: Session, version_id: int, *, as_stored: bool = False) -> ModelVersion | None:
    """One version, its classes read through the aliases (``as_stored``: as published)."""
    row = session.get(ModelVersion, version_id)
    return row if as_stored else _one(session, row)


def all_versions(session: Session) -> list[ModelVersion]:
    return _named(session, list(session.exec(select(ModelVersion).order_by(ModelVersion.id))))


def add_predictions(session: Session, rows: Sequence[Prediction | Mapping[str, Any]]) -> None:
    """Insert predictions (rows or their column values) in one executemany: a head refresh
    writes one per pool item, and building ORM objects for them cost more than the SQL."""
    values = [r if isinstance(r, Mapping) else r.model_dump(exclude={"id"}) for r in rows]
    if values:
        session.execute(insert(Prediction), values)


def predictions(
    session: Session, version_id: int, item_ids: Iterable[int] | None = None
) -> dict[int, Prediction]:
    """Predictions of one version keyed by item id."""
    query = select(Prediction).where(Prediction.model_version_id == version_id)
    rows = session.exec(query) if item_ids is None else in_chunks(session, query, Prediction.item_id, item_ids)
    return {p.item_id: p for p in _named(session, list(rows))}


def scored_ids(session: Session, version_id: int, item_ids: Iterable[int]) -> set[int]:
    """Those of ``item_ids`` that this version has scored (without loading their rows)."""
    query = select(Prediction.item_id).where(Prediction.model_version_id == version_id)
    return set(in_chunks(session, query, Prediction.item_id, item_ids))


def embedding_rows(session: Session, version_id: int) -> dict[int, int]:
    """item id -> its row in the version's embedding array."""
    query = select(Prediction.item_id, Prediction.row).where(Prediction.model_version_id == version_id)
    return {int(i): int(r) for i, r in session.execute(query)}


def unscored_ids(session: Session, version_id: int) -> list[int]:
    """Readable items that this version has not scored yet (what a resumed scoring run does)."""
    scored = select(Prediction.item_id).where(Prediction.model_version_id == version_id)
    query = select(Item.id).where(Item.error.is_(None), Item.id.not_in(scored)).order_by(Item.id)
    return list(session.exec(query))


def next_row(session: Session, version_id: int) -> int:
    """The next free row index in a version's embedding array."""
    top = session.exec(select(func.max(Prediction.row)).where(Prediction.model_version_id == version_id)).one()
    return 0 if top is None else int(top) + 1
