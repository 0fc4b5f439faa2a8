"""Taxonomy changes that touch the store: counting and rewriting a class name."""

from __future__ import annotations

from sqlalchemy import func, update
from sqlmodel import select

from active.project import Project
from storage import db
from storage.tables import Label, ModelVersion, Prediction


def count_uses(project: Project) -> dict[str, int]:
    """Label rows per class name (all kinds)."""
    with db.session(project.engine) as s:
        rows = s.exec(select(Label.label, func.count()).where(Label.label.is_not(None)).group_by(Label.label))
        return {name: n for name, n in rows}


def rewrite_class(project: Project, old: str, new: str) -> dict[str, int]:
    """Rename ``old`` to ``new`` in labels, suggestions, predictions and version class lists,
    in one transaction. Returns rows changed per kind."""

    def tx(s) -> dict[str, int]:  # noqa: ANN001
        changed = {
            "labels": s.execute(update(Label).where(Label.label == old).values(label=new)).rowcount,
            "suggestions": s.execute(update(Label).where(Label.suggestion == old).values(suggestion=new)).rowcount,
            "predictions": s.execute(update(Prediction).where(Prediction.pred == old).values(pred=new)).rowcount,
        }
        n_versions = 0
        for v in s.exec(select(ModelVersion)):
            if old in v.classes:
                v.classes = [new if c == old else c for c in v.classes]
                s.add(v)
                n_versions += 1
        changed["model_versions"] = n_versions
        return changed

    return db.write(project.engine, tx)
