"""Background jobs in the store: enqueue, claim, heartbeat, finish, fail, cancel, reclaim.

A job row is the whole truth about a piece of background work (`storage.tables.Job`): any
process that sees the database may enqueue one, any worker may claim it. Claiming is one write
transaction: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` (two workers never take the same
row, and neither waits for the other), on SQLite the write lock that `storage.db.write` takes at
BEGIN IMMEDIATE. A worker heartbeats while it runs a job; a running job whose heartbeat is older
than ``stale_after`` (its worker was killed, lost its machine or its database connection) is
queued again by `reclaim` until it has had ``max_attempts`` claims, then failed with the reason.

Every function takes a `Session` inside a write transaction (`storage.db.write`) unless it only
reads. Only the worker that holds a job (its name in ``worker``) may report on it: a worker whose
job was reclaimed meanwhile gets False back and stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, text
from sqlmodel import Session, select

from storage.enums import ACTIVE_JOB_STATES, JobState
from storage.tables import Job, utcnow

JOB_LOCK_KEY = 0x6A6F6273  # names the unique-enqueue locks on PostgreSQL (with hashtext(key))
LOG_TAIL_CHARS = 4000  # what a job row keeps of its log (the end of it)
FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobError(Exception):
    """A job cannot be changed as asked (unknown id, already finished)."""


def utc(t: datetime | None) -> datetime | None:
    """``t`` with its UTC zone, whichever backend read it (SQLite hands datetimes back without
    their zone; they were written in UTC)."""
    return t if t is None or t.tzinfo is not None else t.replace(tzinfo=UTC)


def enqueue(session: Session, kind: str, args: dict[str, Any] | None = None, *, gpu: bool = False,
            unique_key: str | None = None, max_attempts: int = 3, requested_by: str = "") -> tuple[Job, bool]:
    """Queue a job; returns (the job, whether it is new).

    ``unique_key``: when a job with this key is queued or running, that job is returned instead
    (e.g. one head refresh at a time, however many labels arrive meanwhile). On PostgreSQL a
    transaction-scoped advisory lock on the key makes the check-then-insert safe across
    processes; SQLite's write transaction already is.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    if unique_key is not None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k, hashtext(:key))"),
                            {"k": JOB_LOCK_KEY, "key": unique_key})
        found = session.exec(select(Job).where(Job.unique_key == unique_key, Job.state.in_(ACTIVE_JOB_STATES))
                             .order_by(Job.id).limit(1)).first()
        if found is not None:
            return found, False
    job = Job(kind=kind, args=dict(args or {}), gpu=gpu, unique_key=unique_key, max_attempts=max_attempts,
              requested_by=requested_by)
    session.add(job)
    session.flush()
    return job, True


def claim(session: Session, worker: str, *, kinds: Sequence[str] | None = None, gpu_only: bool = False,
          job_id: int | None = None) -> Job | None:
    """Take the oldest queued job this worker may run (``kinds``: only these; ``gpu_only``: only
    jobs marked ``gpu``; ``job_id``: only that one) and mark it running under ``worker``.
    None when there is none. Safe with any number of concurrent workers (see the module doc)."""
    query = select(Job).where(Job.state == JobState.QUEUED)
    if kinds is not None:
        query = query.where(Job.kind.in_(list(kinds)))
    if gpu_only:
        query = query.where(Job.gpu.is_(True))
    if job_id is not None:
        query = query.where(Job.id == job_id)
    # SQLite ignores FOR UPDATE; its transaction already holds the write lock.
    job = session.exec(query.order_by(Job.id).limit(1).with_for_update(skip_locked=True)).first()
    if job is None:
        return None
    now = utcnow()
    job.state = JobState.RUNNING
    job.worker = worker
    job.attempts += 1
    job.started_at = job.heartbeat_at = now
    job.cancel_requested = False
    session.add(job)
    session.flush()
    return job


def has_queued(session: Session, *, kinds: Sequence[str] | None = None, gpu_only: bool = False) -> bool:
    """Whether a job this worker could claim is queued: a read, so an idle worker looks without
    taking SQLite's write lock (which every label waits for)."""
    query = select(Job.id).where(Job.state == JobState.QUEUED)
    if kinds is not None:
        query = query.where(Job.kind.in_(list(kinds)))
    if gpu_only:
        query = query.where(Job.gpu.is_(True))
    return session.exec(query.limit(1)).first() is not None


def stale_running(session: Session, *, stale_after: timedelta, now: datetime | None = None) -> bool:
    """Whether `reclaim` would find anything (a read, for the same reason as `has_queued`)."""
    cutoff = (now or utcnow()) - stale_after
    query = select(Job.id).where(Job.state == JobState.RUNNING,
                                 or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
    return session.exec(query.limit(1)).first() is not None


def _held(session: Session, job_id: int, worker: str) -> Job | None:
    """The job when it is running under ``worker`` (locked for this transaction), else None."""
    job = session.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is None or job.state != JobState.RUNNING or job.worker != worker:
        return None
    return job


def _tail(log: str) -> str:
    return log[-LOG_TAIL_CHARS:]


def heartbeat(session: Session, job_id: int, worker: str, *, progress: dict[str, Any] | None = None,
              log_tail: str | None = None) -> bool | None:
    """Record that ``worker`` still works on the job (and where it stands). Returns True to go on,
    False when a cancel was asked for, None when the job is no longer this worker's (reclaimed,
    cancelled before it started, finished elsewhere): then the worker must drop it."""
    job = _held(session, job_id, worker)
    if job is None:
        return None
    job.heartbeat_at = utcnow()
    if progress is not None:
        job.progress = dict(progress)
    if log_tail is not None:
        job.log_tail = _tail(log_tail)
    session.add(job)
    return not job.cancel_requested


def finish(session: Session, job_id: int, worker: str, *, state: JobState = JobState.DONE,
           result: dict[str, Any] | None = None, reason: str | None = None, log_tail: str | None = None,
           progress: dict[str, Any] | None = None) -> bool:
    """End a running job of ``worker`` as done, failed or cancelled (with ``reason``); False when
    it was not this worker's any more (nothing changed)."""
    if state not in FINISHED:
        raise ValueError(f"a job ends as one of {', '.join(FINISHED)}, not {state}")
    job = _held(session, job_id, worker)
    if job is None:
        return False
    job.state = state
    job.finished_at = job.heartbeat_at = utcnow()
    job.result = result
    if reason is not None:  # else the reason it was retried for stays on record
        job.reason = reason
    if log_tail is not None:
        job.log_tail = _tail(log_tail)
    if progress is not None:
        job.progress = dict(progress)
    session.add(job)
    return True


def fail(session: Session, job_id: int, worker: str, reason: str, *, log_tail: str | None = None,
         retry: bool = False) -> JobState | None:
    """A job of ``worker`` failed. ``retry`` (a failure that may pass, e.g. the database went
    away): queued again while it has claims left. Returns its new state (None: not this
    worker's)."""
    job = _held(session, job_id, worker)
    if job is None:
        return None
    if retry and job.attempts < job.max_attempts:
        _requeue(job, f"attempt {job.attempts} failed: {reason}")
    else:
        job.state = JobState.FAILED
        job.finished_at = utcnow()
        job.reason = reason
    if log_tail is not None:
        job.log_tail = _tail(log_tail)
    session.add(job)
    return JobState(job.state)


def _requeue(job: Job, reason: str) -> None:
    job.state = JobState.QUEUED
    job.worker = None
    job.heartbeat_at = None
    job.reason = reason


def cancel(session: Session, job_id: int) -> Job:
    """Cancel a job: a queued one at once, a running one at its next progress report (its worker
    sees ``cancel_requested``). A finished job raises `JobError`."""
    job = session.exec(select(Job).where(Job.id == job_id).with_for_update()).first()
    if job is None:
        raise JobError(f"no job {job_id}")
    if job.state in FINISHED:
        raise JobError(f"job {job_id} is already {job.state}")
    if job.state == JobState.QUEUED:
        job.state = JobState.CANCELLED
        job.finished_at = utcnow()
        job.reason = "cancelled before it started"
    else:
        job.cancel_requested = True
    session.add(job)
    session.flush()
    return job


def reclaim(session: Session, *, stale_after: timedelta, now: datetime | None = None) -> list[Job]:
    """Running jobs whose worker has not heartbeaten for ``stale_after``: queued again with the
    reason while they have claims left, else failed with it. Returns the jobs changed."""
    now = now or utcnow()
    cutoff = now - stale_after
    rows = list(session.exec(select(Job).where(Job.state == JobState.RUNNING,
                                               or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
                             .order_by(Job.id).with_for_update(skip_locked=True)))
    for job in rows:
        seen = utc(job.heartbeat_at)
        why = (f"worker {job.worker} stopped heartbeating (last {seen:%Y-%m-%d %H:%M:%S} UTC)" if seen
               else f"worker {job.worker} never heartbeat")
        if job.cancel_requested:
            job.state = JobState.CANCELLED
            job.finished_at = now
            job.reason = f"cancelled; {why}"
        elif job.attempts < job.max_attempts:
            _requeue(job, f"{why}; queued again (attempt {job.attempts + 1} of {job.max_attempts})")
        else:
            job.state = JobState.FAILED
            job.finished_at = now
            job.reason = f"{why} on attempt {job.attempts} of {job.max_attempts}"
        session.add(job)
    session.flush()
    return rows


def get(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def listing(session: Session, *, states: Sequence[str] | None = None, kinds: Sequence[str] | None = None,
            limit: int = 50) -> list[Job]:
    """Jobs, newest first (``states``/``kinds``: only those)."""
    query = select(Job)
    if states is not None:
        query = query.where(Job.state.in_(list(states)))
    if kinds is not None:
        query = query.where(Job.kind.in_(list(kinds)))
    return list(session.exec(query.order_by(Job.id.desc()).limit(limit)))


def active(session: Session, *, kinds: Sequence[str] | None = None) -> list[Job]:
    """Queued and running jobs, oldest first (what the labeller shows)."""
    query = select(Job).where(Job.state.in_(ACTIVE_JOB_STATES))
    if kinds is not None:
        query = query.where(Job.kind.in_(list(kinds)))
    return list(session.exec(query.order_by(Job.id)))


def latest(session: Session, kind: str) -> Job | None:
    """The newest job of ``kind``, whatever its state."""
    return session.exec(select(Job).where(Job.kind == kind).order_by(Job.id.desc()).limit(1)).first()
