"""Start the labelling app in the browser (Gradio). Binds to 127.0.0.1 unless --host says
otherwise; on any other address sign-in is required, so add users first (`active users add`)."""

from __future__ import annotations

import argparse

from active.commands import Result

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from labeler.app import serve

    project = Project.load(args.project)
    serve(project, host=args.host, port=args.port)
    return Result({"stopped": True}, "labeller stopped")
