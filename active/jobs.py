"""Background work as jobs in the store: the registry of job kinds, and the runner.

Every kind of background work (`KINDS`: scoring, head refresh, full fine-tune, rescoring after a
publish, disputes refresh, class-average maps, export) maps to the function that does it today.
The labeller and the retrain policy only *enqueue* (`enqueue`); a worker (`active worker`, started
by `active serve` on this machine, or on any machine that sees the same database and the
project's files) claims jobs (`storage.jobs.claim`) and runs them with `run_claimed`: the work
runs in the worker's main thread while a heartbeat thread writes its progress and log tail to
the job row every `HEARTBEAT_S` seconds and reads back whether a cancel was asked for.

`foreground` records work that a command runs itself (`active retrain`, `active score`) as a job
of this process, so `active jobs` and the labeller see it too; it is never retried elsewhere
(``max_attempts=1``: killed, it is failed by the next worker's `reclaim`).

Work reports where it stands with `report(...)` (a no-op outside a job). It is also where a
cancel takes effect: `report` raises `Cancelled` once the worker has seen the request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from active.errors import UserError

if TYPE_CHECKING:
    from active.project import Project

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # how often a running job's row is touched (progress, log tail, cancel check)
# A running job whose row was not touched for this long has lost its worker (killed, machine
# gone): `reclaim` queues it again. Many heartbeats, so a busy database or a long GC never trips it.
STALE_AFTER = timedelta(seconds=60)
POLL_S = 1.0  # an idle worker looks for work this often
LOG_LINES = 200  # lines of a job's log kept in memory for its row's log tail


class Cancelled(Exception):
    """The job was cancelled while it ran (raised by `report` in the job's thread)."""


class Lost(Exception):
    """The job is no longer this worker's (reclaimed meanwhile): its work must stop."""


# --------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class JobKind:
    """One kind of background work. ``run(project, args) -> result`` does it (a JSON-able dict);
    ``unique``: at most one queued or running per `unique_key` (kind and the args it names);
    ``gpu``: better on a GPU worker (`active worker --gpu` takes only these)."""

    name: str
    display: str
    run: Callable[[Project, dict[str, Any]], dict[str, Any]]
    unique_args: tuple[str, ...] | None = None  # None: not unique; (): one per kind
    gpu: bool = False
    max_attempts: int = 3

    def unique_key(self, args: dict[str, Any]) -> str | None:
        if self.unique_args is None:
            return None
        return ":".join([self.name, *(str(args.get(a)) for a in self.unique_args)])


def _device_args(args: dict[str, Any]) -> dict[str, Any]:
    return {"batch_size": args.get("batch_size"), "num_workers": args.get("num_workers"), "device": args.get("device")}


def _score(project: Project, args: dict[str, Any]) -> dict[str, Any]:
    from active.scoring import score

    return score(project, version_id=args.get("version_id"), **_device_args(args)).as_dict()


def _retrain(mode: str) -> Callable[[Project, dict[str, Any]], dict[str, Any]]:
    def run(project: Project, args: dict[str, Any]) -> dict[str, Any]:
        from active.retrain import retrain

        version = retrain(project, mode=mode, epochs=args.get("epochs"), seed=int(args.get("seed", 0)),
                          score_after=bool(args.get("score_after", True)), **_device_args(args))
        return {"version": version.id, "mode": version.mode, "n_labels": version.n_labels,
                "serving": (version.metrics or {}).get("serving")}

    return run


def _disputes(project: Project, args: dict[str, Any]) -> dict[str, Any]:
    from active.disputes import refresh

    rep = refresh(project, version_id=args.get("version_id"), seed=int(args.get("seed", 0)))
    return {"open": rep.counts, "checked": rep.checked, "version": rep.version_id}


def _class_averages(project: Project, args: dict[str, Any]) -> dict[str, Any]:
    from active.attribution_methods import DEFAULT_METHOD
    from active.explain import class_average

    classes = list(args.get("classes") or project.config.classes)
    made, failed = {}, {}
    for n, cls in enumerate(classes):
        report(phase="class-average maps", done=n, total=len(classes))
        try:
            made[cls] = str(class_average(project, cls, version_id=args.get("version_id"),
                                          method=args.get("method", DEFAULT_METHOD)))
        except UserError as exc:  # e.g. no item predicted as this class: the others are still made
            failed[cls] = str(exc)
    return {"maps": made, "failed": failed}


def _export(project: Project, args: dict[str, Any]) -> dict[str, Any]:
    from pathlib import Path

    from active.export import ExportOptions, export

    opts = ExportOptions(**{**args, "out": Path(args["out"]), "progress": False})
    opts.check()
    manifest = export(project, opts)
    return {"out": str(opts.out), "counts": manifest.get("counts")}


KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("score", "scoring the pool", _score, unique_args=("version_id",)),
    JobKind("head", "head refresh", _retrain("head"), unique_args=()),
    JobKind("full", "fine-tune", _retrain("full"), unique_args=(), gpu=True),
    JobKind("rescore", "rescoring after a publish", _score, unique_args=("version_id",)),
    JobKind("disputes", "disputes refresh", _disputes, unique_args=()),
    JobKind("class_averages", "class-average maps", _class_averages, unique_args=("version_id", "method")),
    JobKind("export", "export", _export, max_attempts=1),  # a rerun would have to --overwrite: say so instead
)}


def kind(name: str) -> JobKind:
    if name not in KINDS:
        raise UserError(f"unknown job kind {name!r}: use one of {', '.join(KINDS)}")
    return KINDS[name]


def enqueue(project: Project, name: str, args: dict[str, Any] | None = None, *,
            requested_by: str = "") -> tuple[Any, bool]:
    """Queue a job of kind ``name`` (a unique kind: the one already queued or running, if any).
    Returns (the Job row, whether it is new). Never runs it."""
    from storage import db, jobs

    k = kind(name)
    args = dict(args or {})
    return db.write(project.engine, lambda s: jobs.enqueue(s, k.name, args, gpu=k.gpu, unique_key=k.unique_key(args),
                                                           max_attempts=k.max_attempts, requested_by=requested_by))


def describe(job: Any) -> str:  # noqa: ANN401 - a storage Job row
    """One line for people: where a job stands (running), or how it ended and why."""
    from active.policy import describe_progress

    k = KINDS.get(job.kind)
    name = k.display if k else job.kind
    if job.state == "queued":
        return f"{name}: queued" + (f" ({job.reason})" if job.reason else "")
    if job.state != "running":
        return f"{name}: {job.state}" + (f" ({job.reason})" if job.reason else "")
    p = dict(job.progress or {})
    if job.kind == "full" and p.get("phase") == "training":
        return describe_progress({**p, "running": True})
    phase = p.get("phase") or "running"
    done = f" {p['scored']}/{p['to_score']}" if p.get("to_score") else (
        f" {p['done']}/{p['total']}" if p.get("total") else "")
    return f"{name}: {phase}{done}"


def status_line(project: Project) -> str:
    """The queued and running jobs in one line for the labeller (empty when there are none)."""
    from storage import db
    from storage import jobs as store

    with db.session(project.engine) as s:
        active = store.active(s)
    return " · ".join(describe(j) for j in active)


# --------------------------------------------------------------------------- the runner

class JobContext:
    """A job this process runs: what its heartbeat thread writes, and what it has heard back."""

    def __init__(self, project: Project, job_id: int, worker: str, *, heartbeat_s: float = HEARTBEAT_S,
                 stop_when_lost: bool = True) -> None:
        """``stop_when_lost``: stop the work once the job was taken from this worker (a command in
        the foreground finishes its work regardless: its row is only a record)."""
        self.project, self.job_id, self.worker = project, job_id, worker
        self.stop_when_lost = stop_when_lost
        self.heartbeat_s = heartbeat_s
        self.info: dict[str, Any] = {}
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.owner = threading.current_thread()  # the thread whose work this job is

    # -- called from the job's thread
    def report(self, info: dict[str, Any]) -> None:
        with self._lock:
            self.info.update(info)
        if self.lost.is_set() and self.stop_when_lost:
            raise Lost(f"job {self.job_id} is no longer this worker's")
        if self.cancelled.is_set():
            raise Cancelled(f"job {self.job_id} was cancelled")

    def log(self, line: str) -> None:
        with self._lock:
            self.lines.append(line.rstrip())

    def snapshot(self) -> tuple[dict[str, Any], str]:
        with self._lock:
            return {**self.info, "updated": time.time()}, "\n".join(self.lines)

    # -- the heartbeat thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"job-{self.job_id}-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def beat(self) -> None:
        from storage import db, jobs

        progress, tail = self.snapshot()
        answer = db.write(self.project.engine, lambda s: jobs.heartbeat(s, self.job_id, self.worker,
                                                                      progress=progress, log_tail=tail))
        if answer is None:
            self.lost.set()
        elif answer is False:
            self.cancelled.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
            except Exception:  # a busy or unreachable store: the next beat tries again
                log.exception("heartbeat of job %s failed", self.job_id)


_current: JobContext | None = None  # the job this process runs now (one at a time)
_current_lock = threading.Lock()


def current() -> JobContext | None:
    return _current


def report(**info: Any) -> None:
    """Where the running job stands (phase, epoch, done/total...): kept for its row's progress.
    Raises `Cancelled` once a cancel was asked for. Does nothing outside a job."""
    ctx = _current
    if ctx is not None and threading.current_thread() is ctx.owner:  # not another thread's work
        ctx.report(info)


class _LogToJob(logging.Handler):
    def __init__(self, ctx: JobContext) -> None:
        super().__init__(logging.INFO)
        self.ctx = ctx
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.ctx.log(self.format(record))


@contextlib.contextmanager
def _running(ctx: JobContext) -> Iterator[JobContext]:
    global _current
    with _current_lock:
        if _current is not None:
            raise RuntimeError(f"this process already runs job {_current.job_id}")
        _current = ctx
    handler = _LogToJob(ctx)
    logging.getLogger().addHandler(handler)
    ctx.start()
    try:
        yield ctx
    finally:
        ctx.stop()
        logging.getLogger().removeHandler(handler)
        with _current_lock:
            _current = None


def _end(ctx: JobContext, state: str, *, result: dict | None = None, reason: str | None = None,
         retry: bool = False) -> str:
    """Write how the job ended (the final progress and log tail with it). Returns its state."""
    from storage import db, jobs
    from storage.enums import JobState

    progress, tail = ctx.snapshot()
    if state == JobState.FAILED:
        got = db.write(ctx.project.engine, lambda s: jobs.fail(s, ctx.job_id, ctx.worker, reason or "failed",
                                                               log_tail=tail, retry=retry))
        return str(got) if got is not None else "lost"
    ok = db.write(ctx.project.engine, lambda s: jobs.finish(s, ctx.job_id, ctx.worker, state=JobState(state),
                                                            result=result, reason=reason, log_tail=tail,
                                                            progress=progress))
    return state if ok else "lost"


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def run_claimed(project: Project, job: Any, worker: str, *, heartbeat_s: float = HEARTBEAT_S) -> str:  # noqa: ANN401
    """Run a job ``worker`` has claimed, to its end; returns the state it ended in ("lost" when it
    was reclaimed meanwhile). A user error (bad arguments, nothing to train on) fails it for
    good; an error of the store may pass, so the job is queued again while it has attempts left;
    anything else fails it with the traceback in its log tail."""
    from storage.db import StoreError
    from storage.enums import JobState

    k = KINDS.get(job.kind)
    ctx = JobContext(project, int(job.id), worker, heartbeat_s=heartbeat_s)
    if k is None:
        return _end(ctx, JobState.FAILED, reason=f"unknown job kind {job.kind!r} (a newer active-labeler queued it?)")
    with _running(ctx):
        ctx.report({"phase": "started", "attempt": job.attempts})
        try:
            result = k.run(project, dict(job.args or {}))
        except Cancelled:
            return _end(ctx, JobState.CANCELLED, reason="cancelled while it ran")
        except Lost:
            return "lost"
        except UserError as exc:
            ctx.log(f"error: {_one_line(exc)}")
            return _end(ctx, JobState.FAILED, reason=_one_line(exc))
        except StoreError as exc:
            ctx.log(f"database error: {_one_line(exc)}")
            return _end(ctx, JobState.FAILED, reason=f"database error: {_one_line(exc)}", retry=True)
        except (KeyboardInterrupt, SystemExit):  # the worker is stopping: another one takes it over
            _end(ctx, JobState.FAILED, reason="its worker was stopped", retry=True)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the job; the worker goes on with the next
            ctx.log(traceback.format_exc())
            return _end(ctx, JobState.FAILED, reason=f"{type(exc).__name__}: {_one_line(exc)}")
        ctx.report({"phase": "done"})
        return _end(ctx, JobState.DONE, result=result)


def _foreground_name() -> str:
    return f"foreground {socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def foreground(project: Project, name: str, args: dict[str, Any] | None = None) -> Iterator[JobContext | None]:
    """Record work this process does itself (a command in the foreground) as a running job of
    kind ``name``, heartbeating while the body runs: done when it returns, failed with the
    reason when it raises, cancelled when a cancel stopped it. Inside a job already (a worker
    running a fine-tune that refits a head), the body simply runs as part of that job."""
    from storage import db, jobs
    from storage.enums import JobState

    if _current is not None:
        yield None
        return
    k = kind(name)
    worker = _foreground_name()

    def start(s):  # noqa: ANN001, ANN202
        job, _ = jobs.enqueue(s, k.name, dict(args or {}), gpu=k.gpu, max_attempts=1)
        return jobs.claim(s, worker, job_id=job.id)

    job = db.write(project.engine, start)
    ctx = JobContext(project, int(job.id), worker, stop_when_lost=False)
    with _running(ctx):
        try:
            yield ctx
        except Cancelled:
            _end(ctx, JobState.CANCELLED, reason="cancelled while it ran")
            raise UserError(f"job {job.id} ({k.display}) was cancelled (`active jobs cancel`)") from None
        except BaseException as exc:
            _end(ctx, JobState.FAILED, reason=_one_line(exc) if str(exc) else type(exc).__name__)
            raise
        _end(ctx, JobState.DONE, result=dict(ctx.info.get("result") or {}))


# --------------------------------------------------------------------------- the worker

def worker_name(suffix: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}" + (f":{suffix}" if suffix else "")


def work(project: Project, *, name: str | None = None, kinds: Sequence[str] | None = None, gpu_only: bool = False,
         once: bool = False, poll_s: float = POLL_S, stale_after: timedelta = STALE_AFTER,
         heartbeat_s: float = HEARTBEAT_S, on_job: Callable[[Any, str], None] | None = None,
         stop: threading.Event | None = None) -> list[tuple[int, str]]:
    """The worker loop: reclaim jobs of dead workers, claim the oldest queued job this worker
    may run, run it; sleep ``poll_s`` when there is none. ``once``: one job at most, then return.
    Returns (job id, state) of the jobs it ran. ``stop`` ends the loop between jobs."""
    from storage import db, jobs

    for k in kinds or ():
        kind(k)  # unknown names are an error before anything runs
    name = name or worker_name()
    done: list[tuple[int, str]] = []
    stop = stop or threading.Event()
    while not stop.is_set():
        # Reads first: an idle worker must not take the store's write lock every second.
        with db.session(project.engine) as s:
            stale = jobs.stale_running(s, stale_after=stale_after)
            queued = jobs.has_queued(s, kinds=kinds, gpu_only=gpu_only)
        if stale:
            for j in db.write(project.engine, lambda s: jobs.reclaim(s, stale_after=stale_after)):
                log.warning("job %s (%s): %s", j.id, j.kind, j.reason)
        job = db.write(project.engine, lambda s: jobs.claim(s, name, kinds=kinds, gpu_only=gpu_only)) if (
            queued or stale) else None
        if job is None:
            if once:
                break
            stop.wait(poll_s)
            continue
        log.info("job %s (%s) claimed by %s", job.id, job.kind, name)
        state = run_claimed(project, job, name, heartbeat_s=heartbeat_s)
        log.info("job %s (%s) %s", job.id, job.kind, state)
        done.append((int(job.id), state))
        if on_job is not None:
            on_job(job, state)
        if once:
            break
    return done
