"""Class aliases: renaming or merging a class appends an alias, never rewrites a row.
Repository functions; each takes a `Session`, the caller owns the transaction."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from storage.tables import ClassAlias, Label, ModelVersion


def add(session: Session, old: str, new: str) -> ClassAlias:
    """Make ``old`` read as ``new`` in every label row and model version stored so far."""
    if not old or not new or old == new:
        raise ValueError("an alias needs two different class names")
    alias = ClassAlias(old=old, new=new,
                       label_upto=int(session.exec(select(func.coalesce(func.max(Label.id), 0))).one()),
                       version_upto=int(session.exec(select(func.coalesce(func.max(ModelVersion.id), 0))).one()))
    session.add(alias)
    session.flush()
    return alias


def max_id(session: Session) -> int:
    """The newest alias id (0 without any): with a label id, it pins a label snapshot."""
    return int(session.exec(select(func.coalesce(func.max(ClassAlias.id), 0))).one())


def all_aliases(session: Session) -> list[ClassAlias]:
    """Every alias, oldest first (the order they apply in)."""
    return list(session.exec(select(ClassAlias).order_by(ClassAlias.id)))
