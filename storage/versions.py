"""Model versions and their per-item predictions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func
from sqlmodel import Session, select

from storage.db import in_chunks
from storage.meaning import sql_covers_pool
from storage.tables import Item, ModelVersion, Prediction


def publish(session: Session, version: ModelVersion) -> ModelVersion:
    """Insert a version row. Call only after its artifact files are written (row last)."""
    session.add(version)
    session.flush()
    return version


def latest(session: Session) -> ModelVersion | None:
    """The newest published version (what scoring works on; it may not serve yet, see `serving`)."""
    return session.exec(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(1)).first()


def serving(session: Session) -> ModelVersion | None:
    """The version that serves suggestions, selection and the UI (`storage.meaning.serving_id`):
    the newest one whose predictions cover every readable pool item, else the newest."""
    covering = select(ModelVersion).where(sql_covers_pool(ModelVersion.id)).order_by(ModelVersion.id.desc()).limit(1)
    return session.exec(covering).first() or latest(session)


def serving_prediction(session: Session, item_id: int) -> tuple[Prediction, ModelVersion] | None:
    """The serving version's prediction with probabilities for one item, with that version;
    None when it has none (no version, or one without a head for our classes)."""
    version = serving(session)
    if version is None:
        return None
    pred = session.exec(select(Prediction).where(Prediction.item_id == item_id,
                                                 Prediction.model_version_id == version.id)).first()
    return None if pred is None or pred.probs is None else (pred, version)


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
    rows = session.exec(query) if item_ids is None else in_chunks(session, query, Prediction.item_id, item_ids)
    return {p.item_id: p for p in rows}


def unscored_ids(session: Session, version_id: int) -> list[int]:
    """Readable items that this version has not scored yet (what a resumed scoring run does)."""
    scored = select(Prediction.item_id).where(Prediction.model_version_id == version_id)
    query = select(Item.id).where(Item.error.is_(None), Item.id.not_in(scored)).order_by(Item.id)
    return list(session.exec(query))


def next_row(session: Session, version_id: int) -> int:
    """The next free row index in a version's embedding array."""
    top = session.exec(select(func.max(Prediction.row)).where(Prediction.model_version_id == version_id)).one()
    return 0 if top is None else int(top) + 1
