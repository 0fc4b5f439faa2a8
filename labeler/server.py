"""Serve the labeller's `Blocks` inside our own FastAPI app, behind `labeler.security.Guard`.

Gradio's own server answers any ``Origin`` with a credentialed CORS grant once the ``Host`` is not
loopback (what a reverse proxy sends) and sets ``SameSite=None`` cookies; mounting the Blocks in a
FastAPI app that configures CORS itself makes Gradio step aside, and the guard in front of
everything decides which origins may talk to us at all (SECURITY.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import gradio as gr
import uvicorn
from fastapi import FastAPI
from gradio.http_server import Server
from sqlalchemy.engine import Engine
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount

from labeler.security import (
    MAX_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    Guard,
    GuardConfig,
    LoginThrottle,
    Sessions,
    check_origins,
    make_auth,
)
from storage import db, users

log = logging.getLogger(__name__)

MAX_THREADS = 16
# uvicorn takes X-Forwarded-For (the client address the throttle counts) only from these peers:
# a proxy on the same host. Anyone else's header is ignored.
TRUSTED_PROXIES = "127.0.0.1,::1"
ANALYTICS_NEVER = 2**62  # events between two summaries of Gradio's event log (`_no_event_analytics`)


def _verify(engine: Engine):  # noqa: ANN202
    def verify(name: str, password: str) -> int | None:
        with db.session(engine) as s:
            user = users.verify(s, name, password)
            return None if user is None else user.generation

    return verify


def _generations(engine: Engine):  # noqa: ANN202
    def load() -> dict[str, int]:
        with db.session(engine) as s:
            return users.session_generations(s)

    return load


def _no_event_analytics(queue: object) -> None:
    """Stop Gradio's queue from summarising its event log after every event.

    For its monitoring page (which we do not serve: ``enable_monitoring=False``) Gradio's queue
    builds a pandas DataFrame of its last 10,000 events and groups it by function after each
    event, no-op included: 24-32 ms of CPU per event on this project's busy 2-core machine, measured
    on 100 to 10,000 events (bench/load.py's annotators make thousands). The summary is then
    never recomputed. The log itself keeps its size: events still in flight are looked up in it.
    An attribute of gradio.queueing.Queue (Gradio 6; what GRADIO_ANALYTICS_CACHE_FREQUENCY sets
    when a queue is made), checked by tests/labeler/test_server.py.
    """
    queue.ANAYLTICS_CACHE_FREQUENCY = ANALYTICS_NEVER  # (sic: Gradio's spelling)


def serve_blocks(demo: gr.Blocks, engine: Engine | None, *, host: str, port: int,
                 allowed_origins: Sequence[str] = (), auth_message: str = "", head: str = "", css: str = "",
                 block: bool = True, quiet: bool = False, throttle: LoginThrottle | None = None) -> Sessions | None:
    """Start ``demo`` on ``host:port``; ``engine`` None serves it without sign-in (callers allow
    that on loopback only). Returns the session registry (None without sign-in). With
    ``block=False`` the server runs in a thread and ``demo.close()`` stops it."""
    try:
        origins = check_origins(allowed_origins)
    except ValueError as exc:
        from active.errors import UserError

        raise UserError(str(exc)) from None
    sessions = Sessions(_generations(engine)) if engine is not None else None
    outer = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    # Present so Gradio adds no CORS headers of its own: only the listed origins get a grant
    # (the app's own pages are same-origin and need none).
    outer.add_middleware(CORSMiddleware, allow_origins=sorted(origins), allow_credentials=True,
                         allow_methods=["GET", "POST"], allow_headers=["*"])
    outer.add_middleware(Guard, config=GuardConfig(sessions, origins, MAX_BODY_BYTES, MAX_UPLOAD_BYTES))  # outermost
    auth = make_auth(_verify(engine), throttle or LoginThrottle()) if engine is not None else None
    demo.max_threads = MAX_THREADS
    demo._queue.max_thread_count = MAX_THREADS
    _no_event_analytics(demo._queue)
    gr.mount_gradio_app(outer, demo, "/", server_name=host, server_port=port, auth=auth, auth_message=auth_message,
                        show_error=False, max_file_size=MAX_UPLOAD_BYTES, footer_links=[], run_history=False,
                        enable_monitoring=False, ssr_mode=False, head=head, css=css, mcp_server=False,
                        root_path=os.environ.get("GRADIO_ROOT_PATH") or None)
    gradio_app = next(r.app for r in outer.routes if isinstance(r, Mount))
    if sessions is not None:
        sessions.tokens = lambda: gradio_app.tokens
    config = uvicorn.Config(outer, host=host, port=port, log_level="warning", proxy_headers=True,
                            forwarded_allow_ips=TRUSTED_PROXIES)
    # Blocking: uvicorn's own server, whose signal handlers stop it cleanly on Ctrl-C; in a thread:
    # Gradio's, which has run_in_thread() and the close() that demo.close() calls.
    server = uvicorn.Server(config) if block else Server(config)
    # What Blocks.launch would set, so demo.close() stops this server like its own.
    demo.app = demo.server_app = gradio_app
    demo.server = server
    demo.server_name, demo.server_port = host, port
    demo.local_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    demo.is_running = True
    if not quiet:
        print(f"labeller on {demo.local_url}", flush=True)
    if block:
        try:
            server.run()
        finally:
            demo.is_running = False
    else:
        server.run_in_thread()
    return sessions
