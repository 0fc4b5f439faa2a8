"""Start the labelling app in the browser (Gradio). Sign-in is always on: add users first
(`active users add`). Binds to 127.0.0.1 unless --host says otherwise; behind a reverse proxy list
the public address with --allowed-origin so the browser's requests from it are accepted. --no-auth
(a local demo without sign-in) is refused on any address but loopback.

Background work (head refreshes, fine-tunes, scoring) runs as jobs in a separate worker process:
by default this command starts one on this machine at a lower CPU priority (its log in
artifacts/worker.log) and stops it on exit. With --no-worker it starts none: run `active worker`
elsewhere (a GPU box that sees the same database and files), or serve several labeller processes
on one PostgreSQL database with one worker among them."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

from active.commands import Result

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
WORKER_LOG = "worker.log"
STOP_GRACE_S = 20.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="another origin whose pages may call the server with the user's session, e.g. "
                        "https://labels.example.org when the proxy sends a different Host (repeatable)")
    p.add_argument("--no-auth", action="store_true",
                   help="local demo without sign-in: everyone is a reviewer; loopback only, and a proxy "
                        "or tunnel to the port would make it public")


    p.add_argument("--no-worker", action="store_true",
                   help="start no local worker for the background jobs (run `active worker` yourself)")
    p.add_argument("--worker-kinds", metavar="K1,K2", help="the local worker runs only these kinds of job")


def start_worker(project, *, kinds: str | None = None) -> subprocess.Popen:  # noqa: ANN001
    """`active worker` in a child process, niced, its output appended to artifacts/worker.log;
    it exits by itself when this process goes away (--parent)."""
    from active.policy import BACKGROUND_NICE, NICE_ENV

    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent.parent)  # so `-m active.cli` resolves
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env[NICE_ENV] = str(BACKGROUND_NICE)  # annotators' requests come first on the cores
    argv = [sys.executable, "-m", "active.cli", "--project", str(project.root), "worker", "--name",
            f"{socket.gethostname()}:{os.getpid()}:local", "--parent", str(os.getpid())]
    if kinds:
        argv += ["--kinds", kinds]
    project.artifacts.mkdir(parents=True, exist_ok=True)
    with (project.artifacts / WORKER_LOG).open("ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=project.root, env=env)


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM (the job in hand is queued again for another worker), SIGKILL after a grace."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from labeler.app import check_port, serve

    project = Project.load(args.project)
    check_port(args.host, args.port)  # a busy port is a one-line error before any worker starts
    worker = None if args.no_worker else start_worker(project, kinds=args.worker_kinds)
    try:
        serve(project, host=args.host, port=args.port, no_auth=args.no_auth, allowed_origins=args.allowed_origin)
    finally:
        if worker is not None:
            stop_worker(worker)
    return Result({"stopped": True}, "labeller stopped")
