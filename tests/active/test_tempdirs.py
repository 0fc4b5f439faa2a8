"""Temp folders named after their owner: what a killed process left is removed by the next run,
what a live process (or another host) is building is left alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from modelfixtures import make_tiny_project

from active import export as export_mod
from active import modelstore
from active.export import MANIFEST_NAME, ExportOptions, export
from active.tempdirs import HOST_TAG, is_orphan, make_owned_dir, owner_tag, remove_orphans


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_only_folders_of_exited_local_processes_are_orphans(tmp_path: Path) -> None:
    gone, parent = dead_pid(), os.getppid()
    assert is_orphan(f".staging-{HOST_TAG}-{gone}-abc", ".staging-")
    assert not is_orphan(f".staging-{HOST_TAG}-{parent}-abc", ".staging-")  # its owner runs
    assert not is_orphan(f".staging-{owner_tag()}-abc", ".staging-")  # this process
    assert not is_orphan(f".staging-0badc0de-{gone}-abc", ".staging-")  # another host
    assert not is_orphan(".staging-0123456789abcdef0123456789abcdef", ".staging-")  # older naming
    assert not is_orphan(f".staging-{HOST_TAG}-{gone}", ".staging-")
    assert not is_orphan(f".other-{HOST_TAG}-{gone}-abc", ".staging-")
    mine = make_owned_dir(tmp_path / "a", ".x[1]-")  # glob characters in the prefix are literal
    assert mine.is_dir() and mine.name.startswith(f".x[1]-{owner_tag()}-")
    dead = tmp_path / "a" / f".x[1]-{HOST_TAG}-{gone}-0"
    dead.mkdir()
    assert remove_orphans(tmp_path / "a", ".x[1]-") == [dead] and mine.is_dir()


def test_staging_of_a_killed_run_is_removed_by_the_next_one(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=1)
    gone = dead_pid()
    killed = project.artifacts / f"{modelstore.STAGING_PREFIX}{HOST_TAG}-{gone}-1"
    live = project.artifacts / f"{modelstore.STAGING_PREFIX}{HOST_TAG}-{os.getppid()}-2"
    legacy = project.artifacts / f"{modelstore.STAGING_PREFIX}{'0' * 32}"
    for p in (killed, live, legacy):
        p.mkdir(parents=True)
        (p / "meta.json").write_text("{}")
    new = modelstore.new_staging(project)
    assert new.name.startswith(f"{modelstore.STAGING_PREFIX}{owner_tag()}-")
    assert not killed.exists() and live.is_dir() and legacy.is_dir()
    os.utime(legacy, (0, 0))  # untouched for decades: stale whatever its name
    modelstore.clear_stale_staging(project)
    assert not legacy.exists() and live.is_dir() and new.is_dir()


def test_export_undoes_a_kill_between_its_two_renames(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=2)
    out = tmp_path / "ds"
    opts = ExportOptions(format="csv", out=out, progress=False)
    first = export(project, opts)
    # killed after moving the earlier export aside and before renaming the new one in:
    gone = dead_pid()
    old = tmp_path / f".ds.old-{HOST_TAG}-{gone}-0"
    half = tmp_path / f".ds.tmp-{HOST_TAG}-{gone}-0"
    out.rename(old)
    half.mkdir()
    (half / "labels.csv").write_text("item_id\n")
    export_mod._clear_killed_exports(out)
    assert json.loads((out / MANIFEST_NAME).read_text())["created_at"] == first["created_at"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")) == []
    # and a plain re-run over the same state replaces it
    shutil.copytree(out, old)
    shutil.rmtree(out)
    again = export(project, ExportOptions(format="csv", out=out, overwrite=True, progress=False))
    assert again["created_at"] != first["created_at"] and (out / "labels.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")) == []
