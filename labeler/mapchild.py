"""Attribution maps made in a child process, at background priority.

Why a process: every item an annotator sees needs a Grad-CAM map, about 40 ms of network and
20 ms of Python (hooks, overlay, JPEG) each. Made in the labeller's own threads, they competed
with request handling for the cores and for the interpreter lock: with 20 annotators on one
labeller, map making held the lock 13% of the time and was 38% of the process's busy samples
(py-spy, `bench/load.py`). A spawned child has its own interpreter and runs niced like the
worker (`active.policy.BACKGROUND_NICE`), so annotators' requests come first on the cores. The
child writes each map into the project's cache (`active.explain`, atomic files) and returns its
path; the labeller only reads the file.

A child that dies is replaced on the next map, and that one map is made in the labeller; a
child whose labeller is gone (even SIGKILLed) exits by itself within ``PARENT_CHECK_S``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_CHECK_S = 1.0

# -------------------------------------------------------------------- in the child process
_projects: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)  # nothing half-written: maps are written to a temporary name, then renamed


def _child_init(parent: int, nice: int) -> None:
    if nice:
        os.nice(nice)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    from labeler.prefetch import _one_thread

    _one_thread()


def _project(root: str) -> Any:  # noqa: ANN401 - an active.project.Project
    from active.project import Project

    if root not in _projects:
        _projects[root] = Project.load(Path(root))
    return _projects[root]


def _explain(root: str, item_id: int, kwargs: dict[str, Any]) -> str:
    from active.explain import explain_item

    return str(explain_item(_project(root), item_id, **kwargs))


def _warm(root: str) -> bool:
    from active.explain import warm_up

    return warm_up(_project(root))


def _pid() -> int:
    return os.getpid()


# -------------------------------------------------------------------- in the labeller
class ChildMaps:
    """`active.explain.explain_item`, run in one spawned child process (started on first use)."""

    def __init__(self, *, nice: int | None = None) -> None:
        if nice is None:
            from active.policy import BACKGROUND_NICE

            nice = BACKGROUND_NICE
        self.nice = nice
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the labeller has threads (a forked lock held by one of them
                # would never be released in the child) and torch's thread pools do not survive fork.
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_child_init, initargs=(os.getpid(), self.nice))
            return self._pool

    def _submit(self, fn: Any, *args: Any) -> Future:  # noqa: ANN401
        try:
            return self._executor().submit(fn, *args)
        except BrokenProcessPool:
            self._replace()
            return self._executor().submit(fn, *args)

    def _replace(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def explain_item(self, project: Any, item_id: int, **kwargs: Any) -> Path:  # noqa: ANN401
        """The overlay's path, as `active.explain.explain_item` gives it (same arguments)."""
        try:
            return Path(self._submit(_explain, str(project.root), int(item_id), kwargs).result())
        except BrokenProcessPool:
            log.warning("the attribution child process died: this map is made here, the next one in a new child")
            self._replace()
            from active.explain import explain_item

            return explain_item(project, item_id, **kwargs)

    def warm_up(self, project: Any) -> Future:  # noqa: ANN401
        """Start the child and load the serving network there (returns at once)."""
        return self._submit(_warm, str(project.root))

    def pid(self) -> int:
        """The child's process id (starts it when needed)."""
        return int(self._submit(_pid).result())

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
            log.info("attribution child process stopped")
