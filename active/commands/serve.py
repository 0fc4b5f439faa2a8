"""Start the labelling app in the browser (Gradio). Sign-in is always on: add users first
(`active users add`). Binds to 127.0.0.1 unless --host says otherwise; behind a reverse proxy list
the public address with --allowed-origin so the browser's requests from it are accepted. --no-auth
(a local demo without sign-in) is refused on any address but loopback."""

from __future__ import annotations

import argparse

from active.commands import Result

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="another origin whose pages may call the server with the user's session, e.g. "
                        "https://labels.example.org when the proxy sends a different Host (repeatable)")
    p.add_argument("--no-auth", action="store_true",
                   help="local demo without sign-in: everyone is a reviewer; loopback only, and a proxy "
                        "or tunnel to the port would make it public")


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from labeler.app import serve

    project = Project.load(args.project)
    serve(project, host=args.host, port=args.port, no_auth=args.no_auth, allowed_origins=args.allowed_origin)
    return Result({"stopped": True}, "labeller stopped")
