"""The retrain policy of active.toml: a background head refresh after N new human labels.

`maybe_refresh(project)` is cheap enough to call after every label. When
``[retrain] head_every`` human labels have arrived since the current version's label snapshot
and no refresh is running, it starts ``active --project DIR retrain --mode head`` as a separate
process (its own session, output appended to ``artifacts/refresh.log``) and returns at once:
the UI never waits for training. The new version becomes current when the retrain publishes it.

One refresh at a time, across processes: ``artifacts/refresh.lock`` is created exclusively and
holds the pid of the process doing the refresh. A lock whose process has exited (or is a
zombie, or is some other program that reused the pid, or is older than `STALE_AFTER_S`) is
stale and is taken over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from active.atomic import write_atomic

if TYPE_CHECKING:
    from active.project import Project

LOCK_NAME = "refresh.lock"
LOG_NAME = "refresh.log"
# A refresh running longer than this is presumed hung: its lock no longer blocks a new one
# (a head retrain takes seconds; this is generous for a large pool on a slow machine).
STALE_AFTER_S = 3600.0
# What the child's command line must contain for its pid to still be ours.
CHILD_MARK = "retrain"

# Child processes started by this process: polled on each call so they do not linger as zombies.
_children: list[subprocess.Popen] = []


def lock_path(project: Project) -> Path:
    return project.artifacts / LOCK_NAME


def new_human_labels(project: Project) -> int:
    """Human labels (with a class, not undone) newer than the current version's label snapshot
    (all of them when there is no version or it was not trained on labels)."""
    from storage import db, labels, versions

    with db.session(project.engine) as s:
        version = versions.latest(s)
        since = int((version.metrics or {}).get("label_snapshot_max_id", 0)) if version is not None else 0
        return labels.count_human_class(s, after_id=since)


def _alive(pid: int, *, child: bool) -> bool:
    """Whether ``pid`` runs (not a zombie); for a child, also that it is still a retrain."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux: rule out zombies and reused pids
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            if child and CHILD_MARK not in proc.joinpath("cmdline").read_bytes().decode(errors="replace"):
                return False
        except OSError:
            return False
    return True


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or garbage: judged by age below


def running(project: Project) -> int | None:
    """The pid of the refresh in progress, or None (removing a stale lock)."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)
    path = lock_path(project)
    info = _read_lock(path)
    if info is None:
        return None
    pid = int(info.get("pid", 0) or 0)
    started = float(info.get("started", 0) or 0)
    try:
        age = time.time() - (started or path.stat().st_mtime)
    except FileNotFoundError:
        return None
    if _alive(pid, child=info.get("role") == "child") and age < STALE_AFTER_S:
        return pid
    if not info and age < 5.0:  # another process is writing it right now
        return -1
    path.unlink(missing_ok=True)
    return None


def _write_lock(fd_or_path: int | Path, info: dict) -> None:
    data = json.dumps(info).encode()
    if isinstance(fd_or_path, int):
        os.write(fd_or_path, data)
        os.close(fd_or_path)
        return
    write_atomic(fd_or_path, data)


def _command(project: Project) -> list[str]:
    return [sys.executable, "-m", "active.cli", "--project", str(project.root), "retrain", "--mode", "head",
            "--no-progress"]


def start_refresh(project: Project) -> int | None:
    """Start a background head retrain unless one is running; returns its pid or None."""
    if running(project) is not None:
        return None
    project.artifacts.mkdir(parents=True, exist_ok=True)
    path = lock_path(project)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None  # someone else got there first
    _write_lock(fd, {"pid": os.getpid(), "role": "starter", "started": time.time()})
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)  # so `-m active.cli` resolves
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        with (project.artifacts / LOG_NAME).open("ab") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(_command(project))}\n".encode())
            log.flush()
            proc = subprocess.Popen(_command(project), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=project.root, env=env, start_new_session=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    _children.append(proc)
    _write_lock(path, {"pid": proc.pid, "role": "child", "started": time.time(), "command": _command(project)})
    return proc.pid


def maybe_refresh(project: Project) -> bool:
    """Start a background `retrain --mode head` when the policy says so; True when it did.

    Never blocks on training and never raises for a refresh already running.
    """
    every = int(project.config.retrain.head_every)
    if every <= 0 or running(project) is not None:
        return False
    if new_human_labels(project) < every:
        return False
    return start_refresh(project) is not None
