"""Repository functions for items. Each takes a `Session`; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from storage.db import in_chunks
from storage.tables import SPLITS, Item


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def by_sha(session: Session, hashes: Iterable[str]) -> dict[str, Item]:
    """Items whose sha256 is in ``hashes``, keyed by hash."""
    return {item.sha256: item for item in in_chunks(session, select(Item), Item.sha256, hashes)}


def all_items(session: Session) -> list[Item]:
    return list(session.exec(select(Item).order_by(Item.id)))


def by_sha_prefix(session: Session, prefix: str, *, limit: int = 2) -> list[Item]:
    """Up to ``limit`` items whose sha256 starts with ``prefix`` (lower-case hex)."""
    return list(session.exec(select(Item).where(Item.sha256.startswith(prefix)).order_by(Item.id).limit(limit)))


def by_path(session: Session, path: str) -> Item | None:
    return session.exec(select(Item).where(Item.path == path).order_by(Item.id)).first()


def paths(session: Session, item_ids: Iterable[int] | None = None) -> dict[int, str]:
    """item id -> file path (all items when ``item_ids`` is None)."""
    query = select(Item.id, Item.path)
    rows = session.exec(query).all() if item_ids is None else in_chunks(session, query, Item.id, item_ids)
    return {int(i): p for i, p in rows}


def splits(session: Session) -> dict[int, str]:
    """item id -> split, for every item."""
    return {int(i): s for i, s in session.exec(select(Item.id, Item.split)).all()}


def count_unreadable(session: Session) -> int:
    return int(session.exec(select(func.count()).where(Item.error.is_not(None))).one())


def add(session: Session, items: Sequence[Item]) -> list[Item]:
    for item in items:
        check_split(item.split)
    session.add_all(items)
    session.flush()
    return list(items)


def get(session: Session, item_id: int) -> Item | None:
    return session.get(Item, item_id)


def many(session: Session, item_ids: Iterable[int]) -> dict[int, Item]:
    """Items by id, in one query per chunk (ids not in the store are left out)."""
    return {i.id: i for i in in_chunks(session, select(Item), Item.id, list(item_ids))}


def ids(session: Session, *, split: str | None = None, readable_only: bool = True) -> list[int]:
    query = select(Item.id).order_by(Item.id)
    if split is not None:
        query = query.where(Item.split == check_split(split))
    if readable_only:
        query = query.where(Item.error.is_(None))
    return list(session.exec(query))


def count(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(Item)).one())


def count_by_split(session: Session) -> dict[str, int]:
    rows = session.exec(select(Item.split, func.count()).group_by(Item.split))
    return {split: n for split, n in rows}


def mark_unreadable(session: Session, item_id: int, reason: str) -> None:
    """Record that an item's file cannot be decoded (scoring stops retrying it)."""
    item = session.get(Item, item_id)
    if item is not None:
        item.error = reason[:500]
        session.add(item)


def clear_unreadable(session: Session) -> int:
    """Forget every unreadable mark (the files are tried again); returns how many were cleared."""
    marked = list(session.exec(select(Item).where(Item.error.is_not(None))))
    for item in marked:
        item.error = None
        session.add(item)
    return len(marked)
