"""Taxonomy changes that touch the store: counting and rewriting a class name."""

from __future__ import annotations

from active.project import Project
from storage import db, labels


def count_uses(project: Project) -> dict[str, int]:
    """Label rows per class name (all kinds)."""
    with db.session(project.engine) as s:
        return labels.uses_by_class(s)


def rewrite_class(project: Project, old: str, new: str) -> dict[str, int]:
    """Rename ``old`` to ``new`` in labels, suggestions, predictions and version class lists,
    in one transaction. Returns rows changed per kind."""
    return db.write(project.engine, lambda s: labels.rewrite_class(s, old, new))
