"""Attribution maps made in a child process, at background priority.

Why a process: every item an annotator sees needs a Grad-CAM map, about 40 ms of network and
20 ms of Python (hooks, overlay, JPEG) each. Made in the labeller's own threads, they competed
with request handling for the cores and for the interpreter lock: with 20 annotators on one
labeller, map making held the lock 13% of the time and was 38% of the process's busy samples
(py-spy, `bench/load.py`). A spawned child has its own interpreter and runs niced like the
worker (`active.policy.BACKGROUND_NICE`), so annotators' requests come first on the cores. The
child writes each map into the project's cache (`active.explain`, atomic files) and returns its
path; the labeller only reads the file.

A child that dies is replaced and the map asked for again there (never in the labeller: what
crashed the child could crash it); one that hangs is stopped after ``MAP_TIMEOUT_S``. A child
whose labeller is gone (even SIGKILLed) exits by itself within ``PARENT_CHECK_S``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_CHECK_S = 1.0
MAP_TIMEOUT_S = 120.0  # one map (seconds on a busy CPU): a child that takes longer is stopped
CLOSE_WAIT_S = 10.0  # for the map in hand when the labeller stops
WARM_UP_S = 300.0  # at most, for the child's imports and network before its first map

# -------------------------------------------------------------------- in the child process
_projects: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(0)  # nothing half-written: maps are written to a temporary name, then renamed


def _child_init(parent: int, nice: int) -> None:
    # Ctrl-C in the labeller's terminal reaches its whole process group: the labeller stops this
    # child itself (`ChildMaps.close`), and the watchdog covers a labeller that is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s (map child): %(message)s")
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _project(root: str) -> Any:  # noqa: ANN401 - an active.project.Project
    from active.project import Project

    if root not in _projects:
        _projects[root] = Project.load(Path(root))
    return _projects[root]


def _explain(root: str, item_id: int, kwargs: dict[str, Any]) -> str:
    from active.explain import explain_item
    from labeler.prefetch import limit_torch_threads

    limit_torch_threads()  # here, not at start: a project with no model yet needs no torch
    return str(explain_item(_project(root), item_id, **kwargs))


def _warm(root: str) -> bool:
    from active.explain import warm_up

    loaded = warm_up(_project(root))
    if loaded:
        from labeler.prefetch import limit_torch_threads

        limit_torch_threads()
    return loaded


def _pid() -> int:
    return os.getpid()


# -------------------------------------------------------------------- in the labeller
def _stop_processes(pool: ProcessPoolExecutor, wait_s: float) -> None:
    """Stop a pool's process: asked first, killed after ``wait_s`` (a hung map never answers)."""
    # ProcessPoolExecutor has no public way to stop a hung worker before Python 3.14's kill_workers().
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.join(wait_s)
        if proc.is_alive():
            proc.kill()
            proc.join()


class ChildMaps:
    """`active.explain.explain_item`, run in one spawned child process (started on first use)."""

    def __init__(self, *, nice: int | None = None) -> None:
        if nice is None:
            from active.policy import BACKGROUND_NICE

            nice = BACKGROUND_NICE
        self.nice = nice
        self._pool: ProcessPoolExecutor | None = None
        self._warming: Future | None = None
        self._closed = False
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the attribution child process was stopped with its labeller")
            if self._pool is None:
                # spawn, not fork: the labeller has threads (a forked lock held by one of them
                # would never be released in the child) and torch's thread pools do not survive fork.
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_child_init, initargs=(os.getpid(), self.nice))
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """Stop ``broken``; the next call starts a new child (unless another caller did already)."""
        with self._lock:
            if self._pool is not broken:
                return
            self._pool = None
        _stop_processes(broken, 0)

    def _run(self, fn: Any, *args: Any, timeout: float) -> Any:  # noqa: ANN401
        """``fn(*args)`` in the child. A child that died is replaced and asked once more (never
        the labeller: what crashed the child could crash it); one that takes over ``timeout`` is
        stopped and replaced, and the call fails."""
        warming = self._warming
        if warming is not None:  # a map's time starts after the child's imports and network load
            wait([warming], timeout=WARM_UP_S)
        for attempt in (1, 2):
            pool = self._executor()
            fut = pool.submit(fn, *args)
            try:
                return fut.result(timeout=timeout)
            except BrokenProcessPool:
                log.warning("the attribution child process died: a new one takes over")
                self._replace(pool)
                if attempt == 2:
                    raise
            except TimeoutError:
                if fut.done():  # raised in the child (a socket's timeout, say): not a hung child
                    raise
                log.warning("the attribution child process took over %.0f s: stopped, a new one takes over", timeout)
                self._replace(pool)
                raise TimeoutError(f"the attention map took over {timeout:.0f} s") from None
        raise AssertionError("unreachable")

    def explain_item(self, project: Any, item_id: int, **kwargs: Any) -> Path:  # noqa: ANN401
        """The overlay's path, as `active.explain.explain_item` gives it (same arguments)."""
        return Path(self._run(_explain, str(project.root), int(item_id), kwargs, timeout=MAP_TIMEOUT_S))

    def warm_up(self, project: Any) -> Future:  # noqa: ANN401
        """Start the child and load the serving network there; returns at once (wait on the Future)."""
        self._warming = self._executor().submit(_warm, str(project.root))
        return self._warming

    def pid(self) -> int:
        """The child's process id (starts it when needed)."""
        return int(self._run(_pid, timeout=MAP_TIMEOUT_S))

    def close(self) -> None:
        """Stop the child (a map in hand may finish for ``CLOSE_WAIT_S``); no child starts after."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            _stop_processes(pool, CLOSE_WAIT_S)
            log.info("attribution child process stopped")
