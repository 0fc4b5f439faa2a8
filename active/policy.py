"""The retrain policy of active.toml: background head refreshes and full fine-tunes.

`maybe_refresh(project)` is cheap enough to call after every label. It *enqueues* a job
(`active.jobs`) and returns at once; a worker (`active worker`, or the one `active serve`
starts) runs it:

- a head refresh (job kind ``head``) when ``[retrain] head_every`` human labels have arrived
  since the newest version's label snapshot;
- a full fine-tune (kind ``full``) when ``full_every`` human labels have arrived since the
  newest fine-tuned version's snapshot, or (``full_at_round_close``) a round closed after it was
  made. The fine-tune reports where it stands (`ProgressWriter`) into its job's progress, which
  `fine_tune_progress` reads, so `active status` and the labeller show epoch and ETA; it scores
  the pool with the new network before that version serves (`storage.versions.serving`).

The UI never waits for training. One job per mode at a time, across processes and machines (a
head refresh may run while a fine-tune does): both kinds are unique in the store
(`storage.jobs.enqueue`), so while one is queued or running no second one is queued.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from active import jobs

if TYPE_CHECKING:
    from active.project import Project

MODES = ("head", "full")
# Background work runs at a lower CPU priority (read by active.cli; `active serve` starts its
# local worker with it): on a small machine a CPU fine-tune takes hours and a cross-validated head
# refresh a minute of both cores, and the labeller's requests must not queue behind them.
NICE_ENV = "ACTIVE_NICE"
BACKGROUND_NICE = 10


def new_human_labels(project: Project, mode: str = "head") -> int:
    """Human labels (with a class, not undone) newer than the label snapshot of the newest
    version (``mode="full"``: of the newest fine-tuned one, served or held back); all of them
    when there is none or it was not trained on labels."""
    from storage import db, labels

    with db.session(project.engine) as s:
        version = _newest(s, mode)
        since = int((version.metrics or {}).get("label_snapshot_max_id", 0)) if version is not None else 0
        return labels.count_human_class(s, after_id=since)


def _newest(session, mode: str):  # noqa: ANN001, ANN202
    from storage import versions

    if mode == "head":
        return versions.latest(session)
    return next((v for v in reversed(versions.all_versions(session)) if v.mode == "full"), None)


def round_closed_since_fine_tune(project: Project) -> bool:
    """Whether a round closed after the newest fine-tuned version was made (or ever, before any)."""
    from storage import db, work

    with db.session(project.engine) as s:
        closed = work.last_round_closed_at(s)
        full = _newest(s, "full")
    if closed is None:
        return False
    return full is None or _utc(closed) > _utc(full.created_at)


def _utc(t):  # noqa: ANN001, ANN202 - SQLite hands datetimes back without their zone
    from datetime import UTC

    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def queued_or_running(project: Project, mode: str = "head") -> Any:  # noqa: ANN401 - a storage Job row
    """The ``mode`` job queued or running now, or None."""
    from storage import db
    from storage import jobs as store

    with db.session(project.engine) as s:
        active = store.active(s, kinds=[mode])
    return active[0] if active else None


def start_refresh(project: Project, mode: str = "head", *, requested_by: str = "policy") -> int | None:
    """Queue a ``mode`` retrain unless one is queued or running; returns the new job's id or None."""
    if mode not in MODES:
        raise ValueError(f"unknown retrain mode {mode!r}: use one of {', '.join(MODES)}")
    job, new = jobs.enqueue(project, mode, requested_by=requested_by)
    return int(job.id) if new else None


def maybe_refresh(project: Project) -> bool:
    """Queue a head refresh and/or full fine-tune when the policy says so; True when it queued
    one. Never blocks on training and never raises for a job already queued or running."""
    policy = project.config.retrain
    started = False
    every = int(policy.head_every)
    if every > 0 and queued_or_running(project, "head") is None and new_human_labels(project, "head") >= every:
        started = start_refresh(project, "head") is not None
    if queued_or_running(project, "full") is None and _fine_tune_due(project):
        started = start_refresh(project, "full") is not None or started
    return started


def _fine_tune_due(project: Project) -> bool:
    policy = project.config.retrain
    every = int(policy.full_every)
    if every > 0 and new_human_labels(project, "full") >= every:
        return True
    return bool(policy.full_at_round_close) and round_closed_since_fine_tune(project)


# ---------------------------------------------------------------- fine-tune progress

class ProgressWriter:
    """``on_progress`` for `models.train.fine_tune`: where the fine-tune stands (epoch, batch,
    images/s, ETA, phase), reported to the job that runs it (`active.jobs.report`; its heartbeat
    writes it to the job's row every few seconds). Raises `active.jobs.Cancelled` in the
    training loop once the job was cancelled."""

    def __init__(self, project: Project, *, resume: bool = False) -> None:
        """``resume``: carry on the figures of this job so far (a later phase of one run)."""
        del project  # where the figures go is the running job's row
        ctx = jobs.current()
        self.info: dict = dict(ctx.info) if resume and ctx is not None else {}
        self.info.setdefault("started", time.time())
        self.info["phase"] = "training"

    def __call__(self, info: dict) -> None:
        self.info.update(info)
        jobs.report(**self.info)

    def phase(self, name: str, **extra: object) -> None:
        self.info.update(phase=name, **extra)
        jobs.report(**self.info)


def fine_tune_progress(project: Project) -> dict | None:
    """Where the newest fine-tune job stands, for display: its progress figures (epoch, epochs,
    batch, batches, images_per_s, eta_s, phase, note...) with ``running`` and ``job`` (its id),
    or None when no fine-tune ever ran. One small query; never waits for anything."""
    from storage import db
    from storage import jobs as store
    from storage.enums import JobState

    with db.session(project.engine) as s:
        job = store.latest(s, "full")
    if job is None:
        return None
    info = dict(job.progress or {})
    info["job"] = job.id
    info["running"] = job.state == JobState.RUNNING
    if job.state == JobState.QUEUED:
        info["phase"] = "queued"
    elif job.state in (JobState.FAILED, JobState.CANCELLED):
        info["phase"], info["note"] = str(job.state), job.reason or ""
    return info


def describe_progress(info: dict | None) -> str:
    """One line for people: "fine-tune: epoch 2/5, batch 40/96, 12.3 img/s, about 14 min left"."""
    if not info:
        return ""
    if info.get("phase") == "queued":
        return "fine-tune: queued, waiting for a worker"
    if not info.get("running"):
        return f"last fine-tune: {info.get('phase', 'stopped')}" + (f" ({info['note']})" if info.get("note") else "")
    if info.get("phase") != "training":
        done = f" {info['scored']}/{info['to_score']}" if info.get("to_score") else ""
        return f"fine-tune: {info.get('phase')}{done}"
    eta = info.get("eta_s")
    left = "" if eta is None else f", about {max(1, round(eta / 60))} min left"
    return (f"fine-tune: epoch {info.get('epoch')}/{info.get('epochs')}, batch {info.get('batch')}/{info.get('batches')}, "
            f"{info.get('images_per_s', 0):.1f} img/s{left}")
