"""Rounds from the store: candidates, cold start, queue order, the commands, the refresh policy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from activefixtures import add_items, add_label, add_labels, blobs, publish_version

from active import policy
from active.errors import UserError
from active.selection import candidate_pool, select_round
from storage import db, work
from storage import jobs as store_jobs
from storage.tables import QueueEntry


def _queue(project, round_id: int) -> list[QueueEntry]:  # noqa: ANN001
    from sqlmodel import select

    with db.session(project.engine) as s:
        return list(s.exec(select(QueueEntry).where(QueueEntry.round_id == round_id).order_by(QueueEntry.priority)))


def test_no_model_gives_a_random_round_of_unlabelled_items(project) -> None:  # noqa: ANN001
    ids = add_items(project, 12)
    add_items(project, 3, split="holdout")
    add_labels(project, [(ids[0], "dress"), (ids[1], "shirt")], kind="human", annotator="ann")
    rnd = select_round(project, strategy="hybrid", batch=4)
    assert rnd.strategy == "random" and rnd.model_version_id is None
    queued = [q.item_id for q in _queue(project, rnd.id)]
    assert len(queued) == 4 and not {ids[0], ids[1]} & set(queued)
    assert set(queued) <= set(ids)  # never holdout items
    # A second round while this one is open must be asked for; it skips what the open round queued.
    with pytest.raises(UserError, match="round 1 is still open .0 / 4 labelled.*--force"):
        select_round(project, strategy="random", batch=100)
    again = select_round(project, strategy="random", batch=100, force=True)
    assert set(q.item_id for q in _queue(project, again.id)) == set(ids[2:]) - set(queued)
    with pytest.raises(UserError, match="every pool item has a human label"):
        select_round(project, strategy="random", batch=1, force=True)
    # Closing the open rounds gives their unhandled items back to the candidates.
    third = select_round(project, strategy="random", batch=100, close_open=True)
    assert set(q.item_id for q in _queue(project, third.id)) == set(ids[2:])


def test_pretrained_version_gives_kcenter_on_embeddings(project) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    x, _ = blobs(rng, 3, 5, dim=4, spread=0.05)
    ids = add_items(project, len(x))
    publish_version(project, ids, x)  # no probabilities: a backbone without our head
    rnd = select_round(project, strategy="margin", batch=3)
    assert rnd.strategy == "kcenter"
    picked = [q.item_id for q in _queue(project, rnd.id)]
    assert sorted((i - ids[0]) // 5 for i in picked) == [0, 1, 2]  # one per blob


def test_head_version_queues_hybrid_in_priority_order_with_scores(project) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    x, y = blobs(rng, 3, 30, dim=6, spread=0.5)
    ids = add_items(project, len(x))
    probs = rng.dirichlet(np.ones(3), len(x))
    add_label(project, ids[0], "dress", kind="human", annotator="ann")
    publish_version(project, ids, x, probs, mode="head")
    rnd = select_round(project, strategy="hybrid", batch=6)
    queue = _queue(project, rnd.id)
    assert rnd.strategy == "hybrid" and len(queue) == 6
    assert ids[0] not in [q.item_id for q in queue]
    assert [q.priority for q in queue] == list(range(6))
    assert all(q.score_name == "margin" for q in queue)
    margins = [q.score for q in queue]
    assert margins == sorted(margins)  # most uncertain first
    # The annotator is handed the first one.
    got = db.write(project.engine, lambda s: work.lease_next(s, "ann"))
    assert got.item_id == queue[0].item_id and got.score == pytest.approx(margins[0])


def test_candidates_include_skipped_but_not_labelled_items(project) -> None:  # noqa: ANN001
    ids = add_items(project, 3)
    add_label(project, ids[0], "shirt", kind="human", annotator="ann")
    add_label(project, ids[1], "", kind="human", annotator="ann", decision="skipped")
    pool = candidate_pool(project)
    assert pool.candidates.tolist() == [ids[1], ids[2]]


def test_items_with_only_an_imported_label_are_candidates(project) -> None:  # noqa: ANN001
    # Catalogue labels are what the tool checks: a human still has to confirm them.
    ids = add_items(project, 3)
    add_labels(project, [(i, "dress") for i in ids])
    add_label(project, ids[2], "shirt", kind="human", annotator="ann")
    pool = candidate_pool(project)
    assert pool.candidates.tolist() == [ids[0], ids[1]]
    assert pool.labelled.tolist() == [ids[2]]


def test_select_command(project, cli) -> None:  # noqa: ANN001
    add_items(project, 8)
    bad = cli("--project", project.root, "select", "--strategy", "nope")
    assert bad.code == 2 and "hybrid" in bad.err and "kcenter" in bad.err
    run = cli("--project", project.root, "--json", "select", "--strategy", "margin", "--batch", "3")
    assert run.code == 0, run.err
    data = run.data
    assert data["strategy"] == "random" and data["requested_strategy"] == "margin" and data["queued"] == 3
    again = cli("--project", project.root, "select", "--batch", "3")
    assert again.code == 2 and "still open" in again.err and "--force" in again.err
    assert cli("--project", project.root, "select", "--batch", "3", "--force").code == 0


def test_loop_scores_then_selects_once(project, cli, monkeypatch) -> None:  # noqa: ANN001
    ids = add_items(project, 10)
    rng = np.random.default_rng(2)
    calls = []

    def fake_score(proj, **_):  # noqa: ANN001, ANN202
        from active.scoring import ScoreReport

        calls.append(proj.root)
        return ScoreReport(version_id=publish_version(proj, ids, rng.normal(size=(10, 4))) if not calls[1:] else 1)

    monkeypatch.setattr("active.scoring.score", fake_score)
    first = cli("--project", project.root, "--json", "loop", "--batch", "4")
    assert first.code == 0, first.err
    assert first.data["round"]["strategy"] == "kcenter" and first.data["round"]["queued"] == 4
    second = cli("--project", project.root, "--json", "loop", "--batch", "4")
    assert second.data["round"] is None and second.data["waiting"] == 4  # no pile-up
    assert len(calls) == 2


# ------------------------------------------------------------------ the refresh policy


def _set_head_every(project, n: int) -> None:  # noqa: ANN001
    project.config.retrain.head_every = n
    project.save()


def test_policy_counts_human_labels_since_the_snapshot(project) -> None:  # noqa: ANN001
    ids = add_items(project, 6)
    add_labels(project, [(i, "dress") for i in ids])  # imported: never counted
    for i in ids[:3]:
        add_label(project, i, "shirt", kind="human", annotator="ann")
    assert policy.new_human_labels(project) == 3
    top = add_label(project, ids[3], "shirt", kind="human", annotator="ann")
    publish_version(project, ids, np.zeros((6, 2)), metrics={"label_snapshot_max_id": top})
    assert policy.new_human_labels(project) == 0
    add_label(project, ids[4], "shoes", kind="human", annotator="bob")
    assert policy.new_human_labels(project) == 1


def test_maybe_refresh_queues_one_head_refresh_at_a_time(project) -> None:  # noqa: ANN001
    ids = add_items(project, 4)
    _set_head_every(project, 2)
    add_label(project, ids[0], "dress", kind="human", annotator="ann")
    assert policy.maybe_refresh(project) is False  # 1 < 2
    add_label(project, ids[1], "shirt", kind="human", annotator="ann")
    started = time.perf_counter()
    assert policy.maybe_refresh(project) is True
    assert time.perf_counter() - started < 2.0  # queued, nothing run here
    job = policy.queued_or_running(project)
    assert job.kind == "head" and job.state == "queued"
    assert policy.maybe_refresh(project) is False  # one at a time (also from another labeller process)
    # When it has ended (its version not published: say it failed) a new refresh may be queued.
    db.write(project.engine, lambda s: store_jobs.claim(s, "w"))
    assert policy.maybe_refresh(project) is False
    db.write(project.engine, lambda s: store_jobs.fail(s, job.id, "w", "test"))
    assert policy.queued_or_running(project) is None
    assert policy.maybe_refresh(project) is True
    _set_head_every(project, 0)
    db.write(project.engine, lambda s: store_jobs.cancel(s, policy.queued_or_running(project).id))
    assert policy.maybe_refresh(project) is False  # 0 = never


def test_background_retrains_run_at_a_lower_cpu_priority(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A background retrain yields the cores to the labeller: the policy asks for it in the
    environment, and the CLI lowers its own priority before anything else."""
    from active import cli

    seen: dict[str, str] = {}
    monkeypatch.setenv(policy.NICE_ENV, str(policy.BACKGROUND_NICE))
    monkeypatch.setattr(os, "nice", lambda n: seen.setdefault("nice", str(n)))
    root = tmp_path / "p"
    assert cli.main(["init", str(root), "--classes", "a,b"]) == 0
    assert seen == {"nice": str(policy.BACKGROUND_NICE)}
    assert policy.NICE_ENV not in os.environ  # not passed on to what this process starts
