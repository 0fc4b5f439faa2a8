"""Background jobs in the store: list them (default), follow one until it ends, cancel one, or
queue one for the workers (`active worker`; `active serve` starts one on this machine).
A queued job is cancelled at once, a running one at its next progress report."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from active.commands import Result, table

FOLLOW_EVERY_S = 1.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from active.jobs import KINDS

    sub = p.add_subparsers(dest="action", metavar="ACTION")
    ls = sub.add_parser("list", help="jobs, newest first (the default)")
    ls.add_argument("--state", action="append", choices=["queued", "running", "done", "failed", "cancelled"],
                    help="only jobs in this state (repeatable)")
    ls.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    fo = sub.add_parser("follow", help="print a job's progress until it ends")
    fo.add_argument("id", type=int)
    fo.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
    ca = sub.add_parser("cancel", help="cancel a queued or running job")
    ca.add_argument("id", type=int)
    en = sub.add_parser("enqueue", help="queue a job for the workers")
    en.add_argument("kind", choices=list(KINDS))
    en.add_argument("--args", default="{}", metavar="JSON", help='its arguments, e.g. \'{"version_id": 3}\'')


def _row(job: Any) -> dict[str, Any]:  # noqa: ANN401
    from active.jobs import describe

    return {"id": job.id, "kind": job.kind, "state": job.state, "worker": job.worker, "attempts": job.attempts,
            "progress": job.progress, "reason": job.reason, "created_at": job.created_at,
            "started_at": job.started_at, "heartbeat_at": job.heartbeat_at, "finished_at": job.finished_at,
            "args": job.args, "result": job.result, "describe": describe(job)}


def run(args: argparse.Namespace) -> Result:
    from active.errors import UserError
    from active.jobs import enqueue
    from active.project import Project
    from storage import db, jobs

    project = Project.load(args.project)
    action = getattr(args, "action", None) or "list"
    if action == "list":
        with db.session(project.engine) as s:
            rows = [_row(j) for j in jobs.listing(s, states=getattr(args, "state", None),
                                                  limit=getattr(args, "limit", 20))]
        text = table([[r["id"], r["kind"], r["state"], r["worker"] or "", r["attempts"], r["describe"]] for r in rows],
                     ["id", "kind", "state", "worker", "tries", "progress / reason"]) if rows else "no jobs"
        return Result({"jobs": rows}, text)
    if action == "cancel":
        try:
            job = db.write(project.engine, lambda s: jobs.cancel(s, args.id))
        except jobs.JobError as exc:
            raise UserError(str(exc)) from None
        how = "cancelled" if job.state == "cancelled" else "asked to stop (at its next progress report)"
        return Result(_row(job), f"job {job.id} ({job.kind}) {how}")
    if action == "enqueue":
        try:
            job_args = json.loads(args.args)
        except ValueError as exc:
            raise UserError(f"--args is not JSON: {exc}") from None
        if not isinstance(job_args, dict):
            raise UserError("--args must be a JSON object")
        job, new = enqueue(project, args.kind, job_args, requested_by="cli")
        return Result({**_row(job), "new": new},
                      f"job {job.id} ({job.kind}) {'queued' if new else 'was already ' + job.state}")
    return _follow(project, args.id, args.timeout, quiet=args.json)


def _follow(project: Any, job_id: int, timeout: float | None, *, quiet: bool) -> Result:  # noqa: ANN401
    from active.errors import UserError
    from active.jobs import describe
    from storage import db, jobs
    from storage.jobs import FINISHED

    end = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        with db.session(project.engine) as s:
            job = jobs.get(s, job_id)
        if job is None:
            raise UserError(f"no job {job_id}")
        line = f"job {job.id} ({job.kind}) {job.state}: {describe(job)}"
        if line != last and not quiet:
            print(line, flush=True)
        last = line
        if job.state in FINISHED:
            return Result(_row(job), "", exit_code=0 if job.state == "done" else 1)
        if end is not None and time.monotonic() > end:
            return Result(_row(job), f"still {job.state} after {timeout:g} s", exit_code=1)
        time.sleep(FOLLOW_EVERY_S)
