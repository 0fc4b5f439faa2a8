"""The retrain policy of active.toml: background head refreshes and full fine-tunes.

`maybe_refresh(project)` is cheap enough to call after every label. It starts, as a separate
process (its own session, output appended to ``artifacts/<mode>.log``), and returns at once:

- ``active --project DIR retrain --mode head`` when ``[retrain] head_every`` human labels have
  arrived since the newest version's label snapshot;
- ``active --project DIR retrain --mode full`` when ``full_every`` human labels have arrived
  since the newest fine-tuned version's snapshot, or (``full_at_round_close``) a round closed
  after it was made. The fine-tune writes where it stands to ``artifacts/finetune.progress.json``
  (`ProgressWriter`, read by `fine_tune_progress`), so `active status` and the labeller show
  epoch and ETA; it scores the pool with the new network before that version serves
  (`storage.versions.serving`).

The UI never waits for training. One run per mode at a time, across processes (a head refresh
may run while a fine-tune does): ``artifacts/<lock>`` is created exclusively and holds the pid
of the process doing it. A lock whose process has exited (or is a zombie, or is some other
program that reused the pid, or is older than the mode's `STALE_AFTER_S`) is stale and is
taken over.
"""

from __future__ import annotations

import contextlib
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

MODES = ("head", "full")
LOCK_NAMES = {"head": "refresh.lock", "full": "finetune.lock"}
LOG_NAMES = {"head": "refresh.log", "full": "finetune.log"}
PROGRESS_NAME = "finetune.progress.json"
# Background retrains run at a lower CPU priority (read by active.cli): on a small machine a CPU
# fine-tune takes hours and a cross-validated head refresh a minute of both cores, and the
# labeller's requests must not queue behind them.
NICE_ENV = "ACTIVE_NICE"
BACKGROUND_NICE = 10
# A run longer than this is presumed hung: its lock no longer blocks a new one (a head retrain
# takes seconds, so an hour is generous; a fine-tune on a CPU may take most of a day).
STALE_AFTER_S = {"head": 3600.0, "full": 48 * 3600.0}
# The progress file is rewritten at most this often (a batch takes well under a second on a GPU).
PROGRESS_EVERY_S = 2.0
# What the child's command line must contain for its pid to still be ours.
CHILD_MARK = "retrain"

# Child processes started by this process: polled on each call so they do not linger as zombies.
_children: list[subprocess.Popen] = []


def lock_path(project: Project, mode: str = "head") -> Path:
    return project.artifacts / LOCK_NAMES[mode]


def new_human_labels(project: Project, mode: str = "head") -> int:
    """Human labels (with a class, not undone) newer than the label snapshot of the newest
    version (``mode="full"``: of the newest fine-tuned one, served or held back); all of them
    when there is none or it was not trained on labels."""
    from storage import db, labels

    with db.session(project.engine) as s:
        version = _newest(s, mode)
        since = int((version.metrics or {}).get("label_snapshot_max_id", 0)) if version is not None else 0
        return labels.count_human_class(s, after_id=since)


def _newest(session, mode: str):  # noqa: ANN001, ANN202
    from storage import versions

    if mode == "head":
        return versions.latest(session)
    return next((v for v in reversed(versions.all_versions(session)) if v.mode == "full"), None)


def round_closed_since_fine_tune(project: Project) -> bool:
    """Whether a round closed after the newest fine-tuned version was made (or ever, before any)."""
    from storage import db, work

    with db.session(project.engine) as s:
        closed = work.last_round_closed_at(s)
        full = _newest(s, "full")
    if closed is None:
        return False
    return full is None or _utc(closed) > _utc(full.created_at)


def _utc(t):  # noqa: ANN001, ANN202 - SQLite hands datetimes back without their zone
    from datetime import UTC

    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


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


def running(project: Project, mode: str = "head") -> int | None:
    """The pid of the ``mode`` run in progress, or None (removing a stale lock)."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)
    path = lock_path(project, mode)
    info = _read_lock(path)
    if info is None:
        return None
    pid = int(info.get("pid", 0) or 0)
    started = float(info.get("started", 0) or 0)
    try:
        age = time.time() - (started or path.stat().st_mtime)
    except FileNotFoundError:
        return None
    if _alive(pid, child=info.get("role") == "child") and age < STALE_AFTER_S[mode]:
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


def _command(project: Project, mode: str) -> list[str]:
    return [sys.executable, "-m", "active.cli", "--project", str(project.root), "retrain", "--mode", mode,
            "--no-progress"]


def start_refresh(project: Project, mode: str = "head") -> int | None:
    """Start a background retrain of ``mode`` unless one is running; returns its pid or None."""
    if mode not in MODES:
        raise ValueError(f"unknown retrain mode {mode!r}: use one of {', '.join(MODES)}")
    if running(project, mode) is not None:
        return None
    project.artifacts.mkdir(parents=True, exist_ok=True)
    path = lock_path(project, mode)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None  # someone else got there first
    _write_lock(fd, {"pid": os.getpid(), "role": "starter", "started": time.time()})
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)  # so `-m active.cli` resolves
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env[NICE_ENV] = str(BACKGROUND_NICE)  # annotators' requests come first on the cores
    try:
        if mode == "full":
            progress_path(project).unlink(missing_ok=True)  # the last run's figures are not this one's
        with (project.artifacts / LOG_NAMES[mode]).open("ab") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(_command(project, mode))}\n".encode())
            log.flush()
            proc = subprocess.Popen(_command(project, mode), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=project.root, env=env, start_new_session=True)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    _children.append(proc)
    _write_lock(path, {"pid": proc.pid, "role": "child", "started": time.time(), "command": _command(project, mode)})
    return proc.pid


def maybe_refresh(project: Project) -> bool:
    """Start a background head refresh and/or full fine-tune when the policy says so; True when
    it started one. Never blocks on training and never raises for a run already going."""
    policy = project.config.retrain
    started = False
    every = int(policy.head_every)
    if every > 0 and running(project, "head") is None and new_human_labels(project, "head") >= every:
        started = start_refresh(project, "head") is not None
    if running(project, "full") is None and _fine_tune_due(project):
        started = start_refresh(project, "full") is not None or started
    return started


def _fine_tune_due(project: Project) -> bool:
    policy = project.config.retrain
    every = int(policy.full_every)
    if every > 0 and new_human_labels(project, "full") >= every:
        return True
    return bool(policy.full_at_round_close) and round_closed_since_fine_tune(project)


# ---------------------------------------------------------------- fine-tune progress

def progress_path(project: Project) -> Path:
    return project.artifacts / PROGRESS_NAME


class ProgressWriter:
    """``on_progress`` for `models.train.fine_tune`: keeps ``artifacts/finetune.progress.json``
    (epoch, batch, images/s, ETA, phase) current, rewritten atomically at most every
    `PROGRESS_EVERY_S`."""

    def __init__(self, project: Project, *, resume: bool = False) -> None:
        """``resume``: carry on the figures this file already holds (a later phase of one run)."""
        self.path = progress_path(project)
        self.last = 0.0
        self.info: dict = {"phase": "training", "started": time.time()}
        if resume:
            with contextlib.suppress(OSError, ValueError):  # nothing readable to carry on: start afresh
                self.info.update(json.loads(self.path.read_text(encoding="utf-8")))
        self.info["pid"] = os.getpid()

    def __call__(self, info: dict) -> None:
        self.info.update(info)
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or info.get("batch") == info.get("batches"):
            self.last = now
            self._write()

    def phase(self, name: str, **extra: object) -> None:
        self.info.update(phase=name, **extra)
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten every few seconds and only ever read for display: no fsync.
        write_atomic(self.path, json.dumps({**self.info, "updated": time.time()}), fsync=False)


def fine_tune_progress(project: Project) -> dict | None:
    """Where the fine-tune stands, for display: the progress file's figures (epoch, epochs,
    batch, batches, images_per_s, eta_s, phase...) with ``running`` (its process is alive), or
    None when no fine-tune ever reported. Never waits for anything."""
    try:
        info = json.loads(progress_path(project).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = int(info.get("pid", 0) or 0)
    info["running"] = info.get("phase") not in ("done", "failed") and _alive(pid, child=False)
    return info


def describe_progress(info: dict | None) -> str:
    """One line for people: "fine-tune: epoch 2/5, batch 40/96, 12.3 img/s, about 14 min left"."""
    if not info:
        return ""
    if not info.get("running"):
        return f"last fine-tune: {info.get('phase', 'stopped')}" + (f" ({info['note']})" if info.get("note") else "")
    if info.get("phase") != "training":
        return f"fine-tune: {info.get('phase')}"
    eta = info.get("eta_s")
    left = "" if eta is None else f", about {max(1, round(eta / 60))} min left"
    return (f"fine-tune: epoch {info.get('epoch')}/{info.get('epochs')}, batch {info.get('batch')}/{info.get('batches')}, "
            f"{info.get('images_per_s', 0):.1f} img/s{left}")
