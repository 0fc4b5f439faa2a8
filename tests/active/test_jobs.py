"""Jobs end to end: the registry, a worker running queued work, commands recorded as
foreground jobs, cancelling a running job, a reclaimed job dropped by its old worker, and the
`active worker` / `active jobs` commands."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from modelfixtures import make_tiny_project

from active import jobs, policy
from active.retrain import retrain
from storage import db
from storage import jobs as store
from storage.enums import JobState

FAST = {"poll_s": 0.05, "heartbeat_s": 0.05}


def _job(project, job_id: int):  # noqa: ANN001, ANN202
    with db.session(project.engine) as s:
        return store.get(s, job_id)


def test_the_registry_covers_the_background_work_of_the_design() -> None:
    assert set(jobs.KINDS) == {"score", "head", "full", "rescore", "disputes", "class_averages", "export"}
    assert [k for k, v in jobs.KINDS.items() if v.gpu] == ["full"]
    assert jobs.KINDS["head"].unique_key({}) == "head"
    assert jobs.KINDS["rescore"].unique_key({"version_id": 4}) == "rescore:4"
    assert jobs.KINDS["export"].unique_key({"out": "x"}) is None  # two exports may be queued
    with pytest.raises(jobs.UserError, match="unknown job kind 'train'.*score, head"):
        jobs.kind("train")


def test_a_worker_runs_queued_jobs_and_records_how_they_ended(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=3)
    score, new = jobs.enqueue(project, "score", {"num_workers": 0})
    assert new
    head, _ = jobs.enqueue(project, "head", {"num_workers": 0})
    ran = jobs.work(project, name="w1", once=True, **FAST)
    assert ran == [(score.id, "done")]
    row = _job(project, score.id)
    assert row.worker == "w1" and row.result["version"] == 1 and row.result["scored"] == 9
    assert row.progress["phase"] == "done" and row.finished_at is not None
    assert jobs.work(project, name="w1", once=True, **FAST) == [(head.id, "done")]
    assert _job(project, head.id).result["version"] == 2
    # `active retrain` in the foreground is a job of its own process, seen by `active jobs`.
    version = retrain(project, mode="head", num_workers=0)
    listed = cli("--project", project.root, "--json", "jobs", "list")
    assert listed.code == 0
    newest = listed.data["jobs"][0]
    assert newest["kind"] == "head" and newest["state"] == "done" and newest["worker"].startswith("foreground ")
    assert {j["id"] for j in listed.data["jobs"]} >= {score.id, head.id}
    assert version.id == 3
    # Nothing queued: --once returns at once.
    idle = cli("--project", project.root, "--json", "worker", "--once")
    assert idle.code == 0 and idle.data["jobs"] == []


def test_a_job_that_cannot_run_fails_with_its_reason_and_is_not_retried(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=2)
    job, _ = jobs.enqueue(project, "export", {"format": "tarball", "out": str(tmp_path / "x")})
    got = cli("--project", project.root, "--json", "worker", "--once")
    assert got.code == 1 and got.data["jobs"] == [{"id": job.id, "state": "failed"}]
    row = _job(project, job.id)
    assert row.state == JobState.FAILED and "unknown format 'tarball'" in row.reason and row.attempts == 1
    assert "unknown format" in row.log_tail
    assert jobs.work(project, once=True, **FAST) == []  # not queued again
    follow = cli("--project", project.root, "--json", "jobs", "follow", str(job.id))
    assert follow.code == 1 and follow.data["state"] == "failed"
    assert cli("--project", project.root, "jobs", "cancel", str(job.id)).code == 2  # already failed


def _slow_kind(steps: list[int]) -> jobs.JobKind:
    def run(project, args) -> dict:  # noqa: ANN001
        for n in range(int(args.get("n", 1000))):
            steps.append(n)
            jobs.report(phase="counting", done=n, total=1000)
            time.sleep(0.01)
        return {"counted": len(steps)}

    return jobs.JobKind("slow", "counting", run)


def test_a_running_job_is_cancelled_at_its_next_progress_report(project, monkeypatch) -> None:  # noqa: ANN001
    steps: list[int] = []
    monkeypatch.setitem(jobs.KINDS, "slow", _slow_kind(steps))
    job, _ = jobs.enqueue(project, "slow")
    results: list = []
    t = threading.Thread(target=lambda: results.append(jobs.work(project, name="w", once=True, **FAST)))
    t.start()
    deadline = time.monotonic() + 30
    while _job(project, job.id).progress.get("phase") != "counting" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "counting: " in jobs.describe(_job(project, job.id))
    db.write(project.engine, lambda s: store.cancel(s, job.id))
    t.join(timeout=30)
    assert results == [[(job.id, "cancelled")]]
    row = _job(project, job.id)
    assert row.state == JobState.CANCELLED and 0 < len(steps) < 1000 and row.progress["phase"] == "counting"


def test_a_reclaimed_job_is_dropped_by_its_old_worker_and_run_by_another(project, monkeypatch) -> None:  # noqa: ANN001
    steps: list[int] = []
    monkeypatch.setitem(jobs.KINDS, "slow", _slow_kind(steps))
    job, _ = jobs.enqueue(project, "slow", {"n": 50})
    claimed = db.write(project.engine, lambda s: store.claim(s, "old"))
    # Its worker looks dead to the others (no heartbeat for long): queued again.
    later = store.utc(claimed.heartbeat_at) + timedelta(minutes=5)
    db.write(project.engine, lambda s: store.reclaim(s, stale_after=timedelta(seconds=60), now=later))
    assert jobs.run_claimed(project, claimed, "old", heartbeat_s=0.01) == "lost"  # it stops at once
    assert jobs.work(project, name="new", once=True, **FAST) == [(job.id, "done")]
    row = _job(project, job.id)
    assert row.worker == "new" and row.attempts == 2 and row.result == {"counted": len(steps)}


def test_the_fine_tune_progress_is_its_jobs(project) -> None:  # noqa: ANN001
    assert policy.fine_tune_progress(project) is None
    job, _ = jobs.enqueue(project, "full")
    db.write(project.engine, lambda s: store.claim(s, "gpu-box"))
    db.write(project.engine, lambda s: store.heartbeat(s, job.id, "gpu-box", progress={
        "phase": "training", "epoch": 1, "epochs": 3, "batch": 5, "batches": 10, "images_per_s": 50.0, "eta_s": 120}))
    info = policy.fine_tune_progress(project)
    assert info["running"] and info["job"] == job.id
    assert jobs.describe(_job(project, job.id)) == policy.describe_progress(info) == (
        "fine-tune: epoch 1/3, batch 5/10, 50.0 img/s, about 2 min left")
    db.write(project.engine, lambda s: store.fail(s, job.id, "gpu-box", "CUDA out of memory"))
    assert policy.describe_progress(policy.fine_tune_progress(project)) == "last fine-tune: failed (CUDA out of memory)"


def test_serve_starts_a_local_worker_that_runs_queued_jobs_and_stops_with_it(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    from active.commands.serve import WORKER_LOG, start_worker, stop_worker

    project = make_tiny_project(tmp_path, make_image, per_class=2)
    out = tmp_path / "exported"
    job, _ = jobs.enqueue(project, "export", {"format": "csv", "out": str(out)})
    proc = start_worker(project)
    try:
        deadline = time.monotonic() + 120
        while _job(project, job.id).state in ("queued", "running") and time.monotonic() < deadline:
            assert proc.poll() is None, (project.artifacts / WORKER_LOG).read_text()
            time.sleep(0.1)
        row = _job(project, job.id)
        assert row.state == JobState.DONE, row.reason
        assert row.worker.endswith(":local") and row.result["counts"]["exported"] == 6
        assert (out / "labels.csv").is_file()
    finally:
        stop_worker(proc)
    assert proc.returncode is not None
    assert "claimed by" in (project.artifacts / WORKER_LOG).read_text()
