"""Queries the attribution views need (class-average maps)."""

from __future__ import annotations

from sqlmodel import Session, select

from storage.tables import Item, Prediction


def top_predicted(session: Session, version_id: int, cls: str, limit: int) -> list[Prediction]:
    """Up to ``limit`` predictions of one version whose top class is ``cls``, most confident
    first (ties by item id), on readable items only."""
    query = (
        select(Prediction)
        .join(Item, Item.id == Prediction.item_id)
        .where(Prediction.model_version_id == version_id, Prediction.pred == cls, Item.error.is_(None))
        .order_by(Prediction.confidence.desc(), Prediction.item_id)
        .limit(limit)
    )
    return list(session.exec(query))
