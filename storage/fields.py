"""Label fields: what a field is, the one default, and the per-field predictions of a version.

A project labels one or more named *fields* of each photo (``category``, ``colour``...), each
with its own class list (kept in the project's ``active.toml``). Every label row and dispute
names its field (`Label.field`, `Dispute.field`); rows written before fields existed read as
the default field ``category`` (schema 4), so a single-field project is the default field alone.

A model version has one head per field on the shared embeddings. Its `Prediction` row per item
keeps the default field's prediction in its own columns (the grid and attribution query them in
SQL) and the other fields' under ``Prediction.fields`` as ``{field: {pred, confidence, margin,
entropy, probs}}`` (`field_prediction` reads either the same way). One row per item and version
because the embedding row it indexes is shared by every field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_FIELD = "category"
# Field names travel in CLI flags, TOML keys, export column names and file names (head-colour.npz).
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_field_name(name: str) -> str:
    """``name`` when it can name a field, else ValueError saying what a name may hold."""
    name = name.strip()
    if not _NAME.match(name):
        raise ValueError(f"field name {name!r}: use 1-64 lowercase letters, digits or '_', starting with a letter")
    return name


class PredictionLike(Protocol):
    pred: str | None
    confidence: float | None
    margin: float | None
    entropy: float | None
    probs: list[float] | None
    fields: dict[str, Any] | None


@dataclass(frozen=True)
class FieldPrediction:
    """One field's prediction for one item by one version (None values: no head for the field)."""

    pred: str | None
    confidence: float | None
    margin: float | None
    entropy: float | None
    probs: list[float] | None


def field_metrics(metrics: dict | None, field: str) -> dict:
    """A version's metrics for one label field: the default field's are the top level, the other
    fields' under ``metrics["fields"][field]`` (`active.retrain`; empty when it has none)."""
    metrics = metrics or {}
    return metrics if field == DEFAULT_FIELD else ((metrics.get("fields") or {}).get(field) or {})


def field_classes(version: Any, field: str = DEFAULT_FIELD) -> list[str]:  # noqa: ANN401 - a ModelVersion
    """The classes a version's head for ``field`` predicts, in output order ([] without one): the
    default field's in ``ModelVersion.classes``, the others' in ``artifacts["fields"][field]``."""
    if field == DEFAULT_FIELD:
        return list(version.classes or [])
    return list((((version.artifacts or {}).get("fields") or {}).get(field) or {}).get("classes") or [])


def field_prediction(row: PredictionLike, field: str = DEFAULT_FIELD) -> FieldPrediction | None:
    """The prediction of ``field`` in a Prediction row; None when the version has no head for it."""
    if field == DEFAULT_FIELD:
        if row.probs is None and row.pred is None:
            return None
        return FieldPrediction(row.pred, row.confidence, row.margin, row.entropy, row.probs)
    got = (row.fields or {}).get(field)
    if not got:
        return None
    return FieldPrediction(got.get("pred"), got.get("confidence"), got.get("margin"), got.get("entropy"),
                           got.get("probs"))
