"""Run background jobs (scoring, head refreshes, fine-tunes, disputes, class-average maps,
exports) queued in the project's store by the labeller, the retrain policy or `active jobs`.
Runs on this machine or on any other that sees the same database and the project's files
(e.g. a GPU box with `--gpu`, which takes only the GPU work). Several workers may run at once:
each job is claimed by one. A job whose worker stops heartbeating (killed, machine gone) is
queued again, or failed with the reason after its last attempt. Stop with Ctrl-C: the job in
hand is queued again for another worker."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from datetime import timedelta

from active.commands import Result

PARENT_CHECK_S = 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from active.jobs import KINDS, POLL_S, STALE_AFTER

    p.add_argument("--kinds", metavar="K1,K2", help=f"run only these kinds of job (of {', '.join(KINDS)})")
    p.add_argument("--gpu", action="store_true", help="take only the jobs that want a GPU (fine-tunes)")
    p.add_argument("--once", action="store_true", help="run at most one job, then exit (none queued: exit at once)")
    p.add_argument("--name", help="this worker's name in the jobs table (default: host:pid)")
    p.add_argument("--poll", type=float, default=POLL_S, metavar="S", help=f"seconds between looks for work (default {POLL_S:g})")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER.total_seconds(), metavar="S",
                   help="a running job whose worker was silent this long is taken back "
                        f"(default {STALE_AFTER.total_seconds():g})")
    p.add_argument("--parent", type=int, metavar="PID", help=argparse.SUPPRESS)  # `active serve`: stop with it


def _on_sigterm(signum, frame) -> None:  # noqa: ANN001
    # SIGTERM stops the worker like Ctrl-C: the job in hand is queued again for another worker.
    raise KeyboardInterrupt


def _stop_with(parent: int, stop: threading.Event) -> None:
    """Stop once ``parent`` has gone (this worker was started by `active serve`): as SIGTERM
    does, so the job in hand is queued again now rather than run to its end for nobody (a head
    refresh of a large project runs for minutes, and held the cores after its labeller had
    stopped)."""
    while not stop.wait(PARENT_CHECK_S):
        if os.getppid() != parent:
            stop.set()
            os.kill(os.getpid(), signal.SIGTERM)


def run(args: argparse.Namespace) -> Result:
    import logging

    from active.errors import UserError
    from active.jobs import work, worker_name
    from active.project import Project

    if args.poll <= 0 or args.stale_after <= 0:
        raise UserError("--poll and --stale-after must be positive")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    project = Project.load(args.project)
    name = args.name or worker_name()
    if not args.json:
        print(f"worker {name}: waiting for jobs ({', '.join(kinds) if kinds else 'any kind'}"
              f"{', GPU work only' if args.gpu else ''}); Ctrl-C stops", flush=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    stop = threading.Event()
    if args.parent:
        threading.Thread(target=_stop_with, args=(args.parent, stop), daemon=True).start()
    try:
        ran = work(project, name=name, kinds=kinds, gpu_only=args.gpu, once=args.once, poll_s=args.poll,
                   stale_after=timedelta(seconds=args.stale_after), stop=stop)
    finally:
        stop.set()
    lines = [f"job {j}: {state}" for j, state in ran] or ["no job was queued"]
    return Result({"worker": name, "jobs": [{"id": j, "state": state} for j, state in ran]}, "\n".join(lines),
                  exit_code=0 if all(state == "done" for _, state in ran) else 1)
