"""One annotator submitting the same item from two places at once (two tabs, two keys pressed
together): exactly one label is stored, on SQLite and on PostgreSQL (found by bench/load.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlmodel import select

from active import labeling
from active.cli import main
from active.project import Project
from storage import db, items, work
from storage.tables import Item, Label

SUBMITTERS = 6
ROUNDS = 5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    argv = ["init", str(root), "--classes", "dress,shirt,shoes", "--backbone", "mobilenet_v2"]
    if request.param == "postgres":
        argv += ["--db", request.getfixturevalue("pg_url")]
    assert main(argv) == 0
    return Project.load(root)


def test_simultaneous_submits_of_one_item_store_one_label(any_project: Project) -> None:
    project = any_project

    def setup(s) -> list[int]:  # noqa: ANN001
        rows = items.add(s, [Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8, mode="RGB")
                             for k in range(ROUNDS + 2)])
        ids = [r.id for r in rows]
        work.open_round(s, strategy="random", model_version_id=None, item_ids=ids, scores=[0.0] * len(ids),
                        score_name="random")
        return ids

    db.write(project.engine, setup)
    decisions = ["accepted", "corrected", "skipped", "unsure", "corrected", "accepted"]
    for _ in range(ROUNDS):
        task = labeling.next_task(project, "ann")
        assert task is not None
        barrier = threading.Barrier(SUBMITTERS)
        results: list[object] = []

        def submit(k: int, task: labeling.Task = task, barrier: threading.Barrier = barrier,
                   results: list[object] = results) -> None:
            barrier.wait()
            decision = decisions[k % len(decisions)]
            label = "shirt" if decision in ("accepted", "corrected") else None
            results.append(labeling.record(project, "ann", task, decision=decision, label=label)[0])

        threads = [threading.Thread(target=submit, args=(k,)) for k in range(SUBMITTERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(results) == SUBMITTERS
        assert sum(r is not None for r in results) == 1  # the others were told "not recorded twice"
        with db.session(project.engine) as s:
            rows = s.exec(select(Label).where(Label.item_id == task.item_id, Label.kind == "human")).all()
        assert len(rows) == 1
