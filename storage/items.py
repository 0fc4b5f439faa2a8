"""Repository functions for items. Each takes a `Session`; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from storage.tables import SPLITS, Item


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def by_sha(session: Session, hashes: Iterable[str]) -> dict[str, Item]:
    """Items whose sha256 is in ``hashes``, keyed by hash."""
    hashes = list(set(hashes))
    found: dict[str, Item] = {}
    for start in range(0, len(hashes), 500):  # stay under SQLite's bound-parameter limit
        chunk = hashes[start : start + 500]
        for item in session.exec(select(Item).where(Item.sha256.in_(chunk))):
            found[item.sha256] = item
    return found


def add(session: Session, items: Sequence[Item]) -> list[Item]:
    for item in items:
        check_split(item.split)
    session.add_all(items)
    session.flush()
    return list(items)


def get(session: Session, item_id: int) -> Item | None:
    return session.get(Item, item_id)


def ids(session: Session, *, split: str | None = None, readable_only: bool = True) -> list[int]:
    query = select(Item.id).order_by(Item.id)
    if split is not None:
        query = query.where(Item.split == check_split(split))
    if readable_only:
        query = query.where(Item.error.is_(None))
    return list(session.exec(query))


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
