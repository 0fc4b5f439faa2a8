"""Taxonomy changes that touch the store: counting class uses and renaming or merging a class.

A rename or merge of a class of one label field appends a class alias of that field
(`storage.aliases`): every label row, suggestion,
prediction and published version keeps its bytes and reads under the new name, so labels stay
append-only and the label snapshots of old versions can be recomputed."""

from __future__ import annotations

from active.project import Project
from storage import aliases, db, labels
from storage.fields import DEFAULT_FIELD


def count_uses(project: Project, field: str = DEFAULT_FIELD) -> dict[str, int]:
    """Label rows of ``field`` per class name as read today (all kinds)."""
    with db.session(project.engine) as s:
        return labels.uses_by_class(s, field)


def alias_class(project: Project, old: str, new: str, field: str = DEFAULT_FIELD) -> int:
    """Make class ``old`` of ``field`` read as ``new`` from now on (in that field only); returns how
    many label rows read differently."""

    def tx(s) -> int:  # noqa: ANN001
        n = labels.uses_by_class(s, field).get(old, 0)
        aliases.add(s, old, new, field=field)
        return n

    return db.write(project.engine, tx)
