"""Model versions and their per-item predictions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from storage.tables import Item, ModelVersion, Prediction


def publish(session: Session, version: ModelVersion) -> ModelVersion:
    """Insert a version row. Call only after its artifact files are written (row last)."""
    session.add(version)
    session.flush()
    return version


def latest(session: Session) -> ModelVersion | None:
    """The current model version: the newest published one."""
    return session.exec(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1)).first()


def get(session: Session, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def all_versions(session: Session) -> list[ModelVersion]:
    return list(session.exec(select(ModelVersion).order_by(ModelVersion.id)))


def add_predictions(session: Session, rows: Sequence[Prediction]) -> None:
    session.add_all(rows)
    session.flush()


def predictions(
    session: Session, version_id: int, item_ids: Iterable[int] | None = None
) -> dict[int, Prediction]:
    """Predictions of one version keyed by item id."""
    query = select(Prediction).where(Prediction.model_version_id == version_id)
    if item_ids is None:
        return {p.item_id: p for p in session.exec(query)}
    wanted = sorted(set(item_ids))
    out: dict[int, Prediction] = {}
    for i in range(0, len(wanted), 500):
        for p in session.exec(query.where(Prediction.item_id.in_(wanted[i : i + 500]))):
            out[p.item_id] = p
    return out


def unscored_ids(session: Session, version_id: int) -> list[int]:
    """Readable items that this version has not scored yet (what a resumed scoring run does)."""
    scored = select(Prediction.item_id).where(Prediction.model_version_id == version_id)
    query = select(Item.id).where(Item.error.is_(None), Item.id.not_in(scored)).order_by(Item.id)
    return list(session.exec(query))


def next_row(session: Session, version_id: int) -> int:
    """The next free row index in a version's embedding array."""
    top = session.exec(select(func.max(Prediction.row)).where(Prediction.model_version_id == version_id)).one()
    return 0 if top is None else int(top) + 1
