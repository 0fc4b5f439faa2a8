"""Class aliases: renaming or merging a class of a label field appends an alias, never rewrites
a row. Repository functions; each takes a `Session`, the caller owns the transaction."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from storage.fields import DEFAULT_FIELD, check_field_name
from storage.tables import ClassAlias, Label, ModelVersion


def add(session: Session, old: str, new: str, *, field: str = DEFAULT_FIELD) -> ClassAlias:
    """Make ``old`` read as ``new`` in the label rows of ``field`` and that field's classes in the
    model versions stored so far."""
    if not old or not new or old == new:
        raise ValueError("an alias needs two different class names")
    alias = ClassAlias(field=check_field_name(field), old=old, new=new,
                       label_upto=int(session.exec(select(func.coalesce(func.max(Label.id), 0))).one()),
                       version_upto=int(session.exec(select(func.coalesce(func.max(ModelVersion.id), 0))).one()))
    session.add(alias)
    session.flush()
    return alias


def max_id(session: Session) -> int:
    """The newest alias id (0 without any): with a label id, it pins a label snapshot."""
    return int(session.exec(select(func.coalesce(func.max(ClassAlias.id), 0))).one())


def all_aliases(session: Session, field: str | None = None) -> list[ClassAlias]:
    """Every alias (of ``field``, when given), oldest first (the order they apply in)."""
    query = select(ClassAlias).order_by(ClassAlias.id)
    if field is not None:
        query = query.where(ClassAlias.field == field)
    return list(session.exec(query))
