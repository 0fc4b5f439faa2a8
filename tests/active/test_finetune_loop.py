"""Fine-tuning in the loop: the policy queues it for a worker, its progress is readable
without waiting, the new version serves only once the pool is rescored, a worse one is kept but
never served."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from activefixtures import add_items, add_label, publish_version
from modelfixtures import make_tiny_project

from active import jobs, modelstore, policy, scoring
from active import retrain as retrain_mod
from active.commands.status import collect, render
from active.retrain import retrain, serving_decision
from storage import db, work
from storage import jobs as store_jobs
from storage.tables import ModelVersion


@pytest.fixture(autouse=True)
def _fresh_cache():  # noqa: ANN202
    modelstore.clear_cache()
    yield
    modelstore.clear_cache()


def _serving(project) -> int:  # noqa: ANN001
    return modelstore.serving_version(project).id


def test_a_fine_tune_serves_only_once_the_pool_is_rescored(tmp_path: Path, make_image, monkeypatch) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=1)
    head = retrain(project, mode="head", num_workers=0)  # v1 pretrained, v2 head: scored, serving
    assert _serving(project) == head.id == 2
    # Random tiny networks: which one is better on 3 holdout photos is chance; not the point here.
    monkeypatch.setattr(retrain_mod, "serving_decision", lambda *_: {"held_back": False, "reason": "test"})
    full = retrain(project, mode="full", epochs=1, batch_size=8, num_workers=0, score_after=False)
    assert full.id == 3 and modelstore.current_version(project).id == 3
    assert _serving(project) == head.id  # published, but the pool has no predictions of it yet
    progress = policy.fine_tune_progress(project)
    assert progress["phase"] == "done" and progress["epochs"] == 1 and not progress["running"]
    scoring.score(project, version_id=full.id, num_workers=0)
    assert _serving(project) == full.id
    # Scoring inside the retrain: it returns serving.
    again = retrain(project, mode="full", epochs=1, batch_size=8, num_workers=0)
    assert _serving(project) == again.id == 4
    assert "serves" in policy.fine_tune_progress(project)["note"]


def test_a_worse_fine_tune_is_kept_but_never_served(tmp_path: Path, make_image, monkeypatch) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=1)
    head = retrain(project, mode="head", num_workers=0)
    worse = {"held_back": True, "reason": "holdout accuracy 0.1000 is below serving version 2's 0.9000: kept, not served"}
    monkeypatch.setattr(retrain_mod, "serving_decision", lambda *_: worse)
    full = retrain(project, mode="full", epochs=1, batch_size=8, num_workers=0)
    assert (project.artifacts / f"v{full.id}" / modelstore.CHECKPOINT).is_file()  # kept
    assert full.metrics["serving"] == worse and modelstore.held_back(full)
    assert _serving(project) == head.id and modelstore.current_version(project).id == head.id
    scoring.score(project, num_workers=0)  # `active score` / `active loop` leave it alone too
    assert _serving(project) == head.id
    assert "kept, not served" in policy.fine_tune_progress(project)["note"]
    # Heads keep sitting on the network that serves, not on the held-back one.
    assert retrain_mod.network_version(project).id == 1


def test_serving_decision_compares_holdout_accuracy() -> None:
    serving = ModelVersion(id=5, backbone="b", weights="w", mode="head",
                           metrics={"holdout": {"n": 100, "accuracy": 0.86}})
    assert serving_decision({"n": 100, "accuracy": 0.85}, serving)["held_back"] is True
    assert "below serving version 5's 0.8600" in serving_decision({"n": 100, "accuracy": 0.85}, serving)["reason"]
    assert serving_decision({"n": 100, "accuracy": 0.90}, serving)["held_back"] is False
    assert serving_decision({"n": 90, "accuracy": 0.5}, serving)["held_back"] is False  # another holdout
    assert serving_decision(None, serving)["held_back"] is False
    assert serving_decision({"n": 100, "accuracy": 0.5}, None)["held_back"] is False


def test_policy_queues_a_fine_tune_after_full_every_labels_and_at_round_close(project) -> None:  # noqa: ANN001
    ids = add_items(project, 6)
    project.config.retrain.head_every = 0
    project.config.retrain.full_every = 3
    project.save()
    for i in ids[:2]:
        add_label(project, i, "dress", kind="human", annotator="ann")
    assert policy.maybe_refresh(project) is False  # 2 < 3
    top = add_label(project, ids[2], "shirt", kind="human", annotator="ann")
    started = time.perf_counter()
    assert policy.maybe_refresh(project) is True
    assert time.perf_counter() - started < 2.0  # never waits for training
    job = policy.queued_or_running(project, "full")
    assert job is not None and job.state == "queued" and job.gpu and job.requested_by == "policy"
    assert policy.queued_or_running(project, "head") is None  # a head refresh may still run meanwhile
    assert policy.maybe_refresh(project) is False  # one fine-tune at a time
    assert policy.describe_progress(policy.fine_tune_progress(project)) == "fine-tune: queued, waiting for a worker"
    db.write(project.engine, lambda s: store_jobs.claim(s, "w"))
    assert policy.maybe_refresh(project) is False  # running counts too
    db.write(project.engine, lambda s: store_jobs.finish(s, job.id, "w"))
    # A fine-tuned version trained on those labels: nothing is due any more...
    publish_version(project, ids, np.zeros((6, 2)), mode="full", metrics={"label_snapshot_max_id": top})
    assert policy.new_human_labels(project, "full") == 0 and policy.maybe_refresh(project) is False
    # ...until a round closes, when the project asks for that.
    project.config.retrain.full_at_round_close = True
    project.save()
    assert policy.maybe_refresh(project) is False
    rnd = db.write(project.engine, lambda s: work.open_round(s, strategy="random", model_version_id=None,
                                                              item_ids=ids[:2], scores=[0.0, 0.0],
                                                              score_name="random").id)
    db.write(project.engine, lambda s: work.close_round(s, rnd))
    assert policy.maybe_refresh(project) is True
    assert policy.queued_or_running(project, "full").id != job.id


def test_progress_is_shown_by_status_without_waiting(project) -> None:  # noqa: ANN001
    with jobs.foreground(project, "full") as ctx:  # what a fine-tune run by a command or a worker is
        writer = policy.ProgressWriter(project)
        writer({"epoch": 2, "epochs": 5, "batch": 40, "batches": 96, "images_per_s": 12.34, "eta_s": 840.0})
        ctx.beat()  # the heartbeat thread writes it every few seconds
        info = policy.fine_tune_progress(project)
        assert info["running"] and info["job"] == ctx.job_id
        line = policy.describe_progress(info)
        assert line == "fine-tune: epoch 2/5, batch 40/96, 12.3 img/s, about 14 min left"
        st = collect(project)
        assert st["fine_tune"]["epoch"] == 2 and line in render(st)
        writer.phase("done", note="version 3 serves")
    assert policy.describe_progress(policy.fine_tune_progress(project)) == "last fine-tune: done (version 3 serves)"
