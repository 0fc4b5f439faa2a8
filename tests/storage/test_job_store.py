"""Jobs in the store (SQLite file and PostgreSQL): enqueue, claim, heartbeat, finish, cancel,
reclaim, and many concurrent claimers that never take one job twice; the schema upgrade that
adds the table keeps every label and version."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from storage import db, jobs, labels, versions
from storage.enums import JobState
from storage.tables import SCHEMA_VERSION, Job, Label, Meta, ModelVersion

CLAIMERS = 6  # processes
JOBS = 60


def test_enqueue_unique_returns_the_active_job(engine) -> None:  # noqa: ANN001
    first, new = db.write(engine, lambda s: jobs.enqueue(s, "head", unique_key="head"))
    assert new and first.state == JobState.QUEUED
    again, new2 = db.write(engine, lambda s: jobs.enqueue(s, "head", unique_key="head"))
    assert not new2 and again.id == first.id
    db.write(engine, lambda s: jobs.claim(s, "w1"))
    running, new3 = db.write(engine, lambda s: jobs.enqueue(s, "head", unique_key="head"))
    assert not new3 and running.id == first.id  # one at a time, queued or running
    assert db.write(engine, lambda s: jobs.finish(s, first.id, "w1", result={"version": 3}))
    later, new4 = db.write(engine, lambda s: jobs.enqueue(s, "head", unique_key="head"))
    assert new4 and later.id != first.id
    plain = [db.write(engine, lambda s: jobs.enqueue(s, "export", {"out": "x"}))[0].id for _ in range(2)]
    assert len(set(plain)) == 2  # no key: every call queues one


def test_claim_takes_the_oldest_matching_job(engine) -> None:  # noqa: ANN001
    ids = {}
    for kind, gpu in (("score", False), ("full", True), ("export", False)):
        ids[kind] = db.write(engine, lambda s, k=kind, g=gpu: jobs.enqueue(s, k, gpu=g))[0].id
    with db.session(engine) as s:
        assert jobs.has_queued(s, gpu_only=True) and jobs.has_queued(s, kinds=["export"])
        assert not jobs.has_queued(s, kinds=["head"])
    assert db.write(engine, lambda s: jobs.claim(s, "g", gpu_only=True)).id == ids["full"]
    with db.session(engine) as s:
        assert not jobs.has_queued(s, gpu_only=True)
    assert db.write(engine, lambda s: jobs.claim(s, "e", kinds=["export"])).id == ids["export"]
    got = db.write(engine, lambda s: jobs.claim(s, "any"))
    assert got.id == ids["score"] and got.worker == "any" and got.attempts == 1 and got.state == JobState.RUNNING
    assert db.write(engine, lambda s: jobs.claim(s, "any")) is None


def test_heartbeat_cancel_and_finish_belong_to_the_holder(engine) -> None:  # noqa: ANN001
    job = db.write(engine, lambda s: jobs.enqueue(s, "score"))[0]
    db.write(engine, lambda s: jobs.claim(s, "w1"))
    assert db.write(engine, lambda s: jobs.heartbeat(s, job.id, "w1", progress={"done": 3, "total": 9},
                                                     log_tail="x" * 10_000)) is True
    assert db.write(engine, lambda s: jobs.heartbeat(s, job.id, "w2")) is None  # not w2's
    assert not db.write(engine, lambda s: jobs.finish(s, job.id, "w2"))
    db.write(engine, lambda s: jobs.cancel(s, job.id))
    assert db.write(engine, lambda s: jobs.heartbeat(s, job.id, "w1")) is False  # asked to stop
    assert db.write(engine, lambda s: jobs.finish(s, job.id, "w1", state=JobState.CANCELLED, reason="asked"))
    with db.session(engine) as s:
        row = jobs.get(s, job.id)
        assert row.state == JobState.CANCELLED and row.progress == {"done": 3, "total": 9}
        assert len(row.log_tail) == jobs.LOG_TAIL_CHARS and row.finished_at is not None
    with pytest.raises(jobs.JobError, match="already cancelled"):
        db.write(engine, lambda s: jobs.cancel(s, job.id))
    queued = db.write(engine, lambda s: jobs.enqueue(s, "export"))[0]
    assert db.write(engine, lambda s: jobs.cancel(s, queued.id)).state == JobState.CANCELLED
    assert db.write(engine, lambda s: jobs.claim(s, "w1")) is None  # a cancelled job is never claimed


def test_fail_retries_only_when_asked_and_attempts_remain(engine) -> None:  # noqa: ANN001
    job = db.write(engine, lambda s: jobs.enqueue(s, "score", max_attempts=2))[0]
    db.write(engine, lambda s: jobs.claim(s, "w"))
    assert db.write(engine, lambda s: jobs.fail(s, job.id, "w", "db gone", retry=True)) == JobState.QUEUED
    db.write(engine, lambda s: jobs.claim(s, "w"))
    assert db.write(engine, lambda s: jobs.fail(s, job.id, "w", "db gone", retry=True)) == JobState.FAILED
    other = db.write(engine, lambda s: jobs.enqueue(s, "score"))[0]
    db.write(engine, lambda s: jobs.claim(s, "w"))
    assert db.write(engine, lambda s: jobs.fail(s, other.id, "w", "bad input")) == JobState.FAILED
    with db.session(engine) as s:
        assert jobs.get(s, other.id).reason == "bad input"


def test_reclaim_requeues_then_fails_with_the_reason(engine) -> None:  # noqa: ANN001
    job = db.write(engine, lambda s: jobs.enqueue(s, "full", max_attempts=2))[0]
    db.write(engine, lambda s: jobs.claim(s, "dead-worker"))
    stale = timedelta(seconds=30)
    assert db.write(engine, lambda s: jobs.reclaim(s, stale_after=stale)) == []  # it just heartbeat
    later = jobs.utc(db.write(engine, lambda s: jobs.get(s, job.id)).heartbeat_at) + timedelta(seconds=31)
    with db.session(engine) as s:
        assert not jobs.stale_running(s, stale_after=stale) and jobs.stale_running(s, stale_after=stale, now=later)
    assert [j.id for j in db.write(engine, lambda s: jobs.reclaim(s, stale_after=stale, now=later))] == [job.id]
    with db.session(engine) as s:
        row = jobs.get(s, job.id)
        assert row.state == JobState.QUEUED and row.worker is None
        assert "dead-worker stopped heartbeating" in row.reason and "attempt 2 of 2" in row.reason
    assert db.write(engine, lambda s: jobs.heartbeat(s, job.id, "dead-worker")) is None  # it lost the job
    db.write(engine, lambda s: jobs.claim(s, "second"))
    later = jobs.utc(db.write(engine, lambda s: jobs.get(s, job.id)).heartbeat_at) + timedelta(minutes=5)
    db.write(engine, lambda s: jobs.reclaim(s, stale_after=stale, now=later))
    with db.session(engine) as s:
        row = jobs.get(s, job.id)
        assert row.state == JobState.FAILED and "second stopped heartbeating" in row.reason
        assert "attempt 2 of 2" in row.reason


def _claimer(url: str, who: str, out) -> None:  # noqa: ANN001
    """Child process: claim and finish jobs until none is left; report what it took."""
    engine = db.make_engine(url)
    got = []
    try:
        while (job := db.write(engine, lambda s: jobs.claim(s, who))) is not None:
            got.append(job.id)
            db.write(engine, lambda s, j=job.id: jobs.finish(s, j, who))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(("error", f"{who}: {type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()
    out.put((who, got))


def test_concurrent_claimers_never_take_a_job_twice(engine, store_url: str) -> None:  # noqa: ANN001
    db.write(engine, lambda s: [jobs.enqueue(s, "score", {"n": n}) for n in range(JOBS)])
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    engine.dispose()  # no pooled connection crosses the fork
    procs = [ctx.Process(target=_claimer, args=(store_url, f"w{k}", out)) for k in range(CLAIMERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r for r in results if r[0] == "error"] == []
    taken = Counter(j for _, got in results for j in got)
    assert len(taken) == JOBS and set(taken.values()) == {1}
    with db.session(engine) as s:
        rows = list(s.exec(select(Job)))
    assert {r.state for r in rows} == {JobState.DONE} and all(r.attempts == 1 for r in rows)
    assert Counter(r.worker for r in rows) == Counter({w: n for w, got in results for n in [len(got)] if n})


def test_the_upgrade_adds_the_job_table_and_keeps_labels_and_versions(store_url: str, add_items) -> None:  # noqa: ANN001
    eng = db.make_engine(store_url)
    db.create_schema(eng)
    item = add_items(eng, 1)[0]
    db.write(eng, lambda s: versions.publish(s, ModelVersion(backbone="b", weights="w", mode="pretrained")))
    db.write(eng, lambda s: labels.append(s, Label(item_id=item, annotator="ann", label="dress", kind="human",
                                                   decision="corrected")))
    with eng.begin() as conn:  # the store as schema 4 left it: no job table (step 4 -> 5), aliases without a field
        conn.execute(sa.text("DROP TABLE job"))
        conn.execute(sa.text("ALTER TABLE classalias DROP COLUMN field"))
        conn.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value="4"))
    eng.dispose()
    eng = db.open_engine(store_url)
    with db.session(eng) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        assert [(r.annotator, r.label) for r in s.exec(select(Label))] == [("ann", "dress")]
        assert [v.mode for v in versions.all_versions(s)] == ["pretrained"]
    job = db.write(eng, lambda s: jobs.enqueue(s, "score"))[0]
    assert db.write(eng, lambda s: jobs.claim(s, "w")).id == job.id
    eng.dispose()
