"""Temp folders that name the process owning them, so a later run can remove those of a killed one.

A command that builds something aside and renames it into place (a model version's staging
folder, an export) leaves its temp folder behind when it is killed. Its name carries the owner:
``<prefix><host>-<pid>-<random>``; a folder whose owner ran on this host and is gone is an orphan
and can be removed, while one whose owner still runs (another process mid-retrain) or ran on
another host (a project on a shared filesystem) is left alone. A pid that was reused by an
unrelated process keeps its folder: the safe side.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def owner_tag() -> str:
    """``<host>-<pid>`` of this process (hex host hash: never contains ``-``)."""
    return f"{HOST_TAG}-{os.getpid()}"


def make_owned_dir(parent: Path, prefix: str, *, mode: int = 0o777) -> Path:
    """A new empty folder ``parent/<prefix><host>-<pid>-<random>`` (``mode`` less the umask)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{prefix}{owner_tag()}-{uuid.uuid4().hex}"
    path.mkdir(mode=mode)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_orphan(name: str, prefix: str) -> bool:
    """True when folder ``name`` was made by `make_owned_dir` with ``prefix`` in a process of this
    host that has exited. Names of another form (older versions, other hosts) are never orphans."""
    if not name.startswith(prefix):
        return False
    host, _, rest = name[len(prefix):].partition("-")
    pid, sep, _ = rest.partition("-")
    if host != HOST_TAG or not sep or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and not _alive(int(pid))


def orphans(parent: Path, prefix: str) -> Iterator[Path]:
    """Orphaned folders ``parent/<prefix>*`` (see `is_orphan`)."""
    if parent.is_dir():
        for p in sorted(parent.glob(glob.escape(prefix) + "*")):
            if p.is_dir() and not p.is_symlink() and is_orphan(p.name, prefix):
                yield p


def remove_orphans(parent: Path, prefix: str) -> list[Path]:
    """Remove the orphaned folders ``parent/<prefix>*``; returns what was removed."""
    removed = []
    for p in orphans(parent, prefix):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed
