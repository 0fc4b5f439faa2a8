"""The SQL tables of DESIGN.md. Plain SQLModel classes: no torch, no gradio.

Labels are append-only: nothing in this package updates or deletes a ``Label`` row
(``storage.labels`` only inserts); the current label of an item is derived.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint, false, text
from sqlmodel import Field, SQLModel

from storage.enums import Decision, DisputeReason, DisputeStatus, JobState, Kind, Role, Split
from storage.fields import DEFAULT_FIELD

# Bump when a table changes, with a step in `storage.db.MIGRATIONS` that upgrades the previous
# version in place; `storage.db.open_engine` refuses versions it cannot upgrade.
SCHEMA_VERSION = 7
APP_ID = "active-labeler"

# The columns below hold these enums' values as plain strings (see storage.enums).
SPLITS = tuple(Split)
LABEL_KINDS = tuple(Kind)
# `undo` appends a row that cancels an earlier human label (its id in `undoes_id`).
DECISIONS = tuple(Decision)
ROLES = tuple(Role)
DISPUTE_REASONS = tuple(DisputeReason)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Meta(SQLModel, table=True):
    """Key/value facts about the database itself (app id, schema version)."""

    key: str = Field(primary_key=True, max_length=64)
    value: str


# The few unreadable items, found without a scan (`storage.versions.serving` counts them per call).
UNREADABLE_INDEX = Index("ix_item_unreadable", "id", sqlite_where=text("error IS NOT NULL"),
                         postgresql_where=text("error IS NOT NULL"))


# The hand-out's order (`storage.work`): the first queued item still open is found by walking
# this index, not by testing every queued item and sorting them (PostgreSQL did that: 32 ms a label
# on a 2,000-item round).
QUEUE_ORDER_INDEX = Index("ix_queueentry_round_priority", "round_id", "priority")


class Item(SQLModel, table=True):
    __table_args__ = (UNREADABLE_INDEX,)

    id: int | None = Field(default=None, primary_key=True)
    sha256: str = Field(max_length=64, unique=True, index=True)
    path: str
    width: int
    height: int
    mode: str = Field(max_length=16)
    source: str = Field(default="", max_length=512, index=True)
    split: str = Field(default=Split.POOL.value, max_length=16, index=True)
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Set when scoring could not decode the file, so it is not retried forever.
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


def field_column() -> Any:  # noqa: ANN401 - a sqlmodel Field
    """The label field a row is about (`storage.fields`); rows older than schema 4 read as the default."""
    return Field(default=DEFAULT_FIELD, max_length=64, sa_column_kwargs={"server_default": DEFAULT_FIELD})


class Label(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    field: str = field_column()
    annotator: str = Field(max_length=128, index=True)
    label: str | None = Field(default=None, max_length=256)  # None for skipped/unsure/undo
    kind: str = Field(max_length=16)
    decision: str = Field(max_length=16)
    suggestion: str | None = Field(default=None, max_length=256)
    confidence: float | None = None
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    round_id: int | None = Field(default=None, foreign_key="round.id")
    undoes_id: int | None = Field(default=None, foreign_key="label.id")
    # The import batch an imported label came in with (schema 4; None before, and for other kinds).
    source: str | None = Field(default=None, max_length=512)
    created_at: datetime = Field(default_factory=utcnow, index=True)


class ModelVersion(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    backbone: str = Field(max_length=64)
    weights: str = Field(max_length=512)  # origin: torchvision enum name, a .pth path, or "none"
    parent_id: int | None = Field(default=None, foreign_key="modelversion.id")
    mode: str = Field(max_length=16)  # "pretrained" | "head" | "full"
    classes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    snapshot: str = Field(default="", max_length=64)  # sha256 of the label snapshot
    n_labels: int = 0
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    artifacts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Prediction(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("item_id", "model_version_id"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    model_version_id: int = Field(foreign_key="modelversion.id", index=True)
    pred: str | None = Field(default=None, max_length=256)  # None where the version has no head
    confidence: float | None = None
    margin: float | None = None
    entropy: float | None = None
    probs: list[float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # The other fields' predictions, {field: {pred, confidence, margin, entropy, probs}} (schema 4;
    # read them with `storage.fields.field_prediction`).
    fields: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    row: int  # row of this item in the version's embedding array


class Round(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    strategy: str = Field(max_length=64)
    batch_size: int
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    created_at: datetime = Field(default_factory=utcnow)
    closed_at: datetime | None = None


class QueueEntry(SQLModel, table=True):
    """An item queued by a round, with the score that put it there."""

    __table_args__ = (UniqueConstraint("round_id", "item_id"), QUEUE_ORDER_INDEX)

    id: int | None = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    priority: int  # 0 = first
    score: float
    score_name: str = Field(max_length=64)


class Lease(SQLModel, table=True):
    __table_args__ = (Index("ix_lease_item_annotator", "item_id", "annotator"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    annotator: str = Field(max_length=128)
    round_id: int | None = Field(default=None, foreign_key="round.id")
    expires_at: datetime = Field(index=True)


class Dispute(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    field: str = field_column()
    reason: str = Field(max_length=32)
    score: float
    status: str = Field(default=DisputeStatus.OPEN.value, max_length=16, index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    resolution_label_id: int | None = Field(default=None, foreign_key="label.id")
    created_at: datetime = Field(default_factory=utcnow)


class ClassAlias(SQLModel, table=True):
    """A class of label field ``field`` renamed or merged: ``old`` reads as ``new`` in that field's
    label rows up to ``label_upto`` and its classes in the model versions up to ``version_upto``
    (added in schema 2; per field since schema 6, older aliases are the default field's). Rows are
    never rewritten: the alias is applied when they are read (`storage.meaning.resolve_class`)."""

    id: int | None = Field(default=None, primary_key=True)
    field: str = field_column()
    old: str = Field(max_length=256)
    new: str = Field(max_length=256)
    label_upto: int = 0
    version_upto: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class User(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=128)
    role: str = Field(max_length=16)
    salt: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    password_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    # A disabled user cannot sign in and loses open sessions; `generation` grows on every password
    # change or disable, and a session granted under an older generation ends (labeler.security).
    disabled: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    generation: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Job(SQLModel, table=True):
    """Background work recorded in the store (added in schema 4): scoring, retrains, disputes,
    exports... (`active.jobs.KINDS`). Workers anywhere that see this database and the project's
    files claim queued jobs (`storage.jobs.claim`), heartbeat while they run them, and leave the
    outcome here; a job whose worker stops heartbeating is queued again or failed
    (`storage.jobs.reclaim`)."""

    __table_args__ = (Index("ix_job_state_kind", "state", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default=JobState.QUEUED.value, max_length=16)
    gpu: bool = False  # better run on a GPU worker (`active worker --gpu` takes only these)
    # A unique job (e.g. "head"): no second one is enqueued while one is queued or running.
    unique_key: str | None = Field(default=None, max_length=128, index=True)
    progress: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    worker: str | None = Field(default=None, max_length=256)
    attempts: int = 0  # claims so far
    max_attempts: int = 3
    cancel_requested: bool = False  # a running job stops at its next progress report
    reason: str | None = None  # why it failed or was cancelled, or why it was retried
    log_tail: str = ""
    requested_by: str = Field(default="", max_length=128)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
