"""Several labeller processes on one store (SQLite file, and PostgreSQL when available): a lease,
a label, an undo and a published version made in one process are what the other one sees."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from test_labeling_concurrency import any_project  # noqa: F401 - the fixture (SQLite and PostgreSQL)

from active import labeling
from active.project import Project
from storage import db, items, versions, work
from storage.tables import Item, ModelVersion, Prediction

N_ITEMS = 6


def _in_child(fn, *args) -> object:  # noqa: ANN001
    """Run ``fn(*args)`` in a forked process (its own engine, as another server has) and return
    what it returned."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()

    def target() -> None:
        try:
            out.put(("ok", fn(*args)))
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which fails the test
            out.put(("error", f"{type(exc).__name__}: {exc}"))

    p = ctx.Process(target=target)
    p.start()
    status, value = out.get(timeout=120)
    p.join(timeout=60)
    assert status == "ok", value
    return value


def _label_one(root: str) -> tuple[int, int | None]:
    """Another server: ann labels her item; returns (that item, the item she is sent next)."""
    project = Project.load(root)
    task = labeling.next_task(project, "ann")
    row, nxt = labeling.record(project, "ann", task, decision="accepted", label="dress")
    project.engine.dispose()
    return row.item_id, nxt.item_id if nxt else None


def _publish_covering(root: str) -> int:
    """Another process (a worker): publish a version with a prediction for every pool item."""
    project = Project.load(root)

    def fn(s) -> int:  # noqa: ANN001
        v = versions.publish(s, ModelVersion(backbone="b", weights="w", mode="head", classes=["dress", "shirt"]))
        versions.add_predictions(s, [Prediction(item_id=i, model_version_id=v.id, pred="dress", probs=[0.7, 0.3],
                                                confidence=0.7, margin=0.4, row=k)
                                     for k, i in enumerate(items.ids(s))])
        return v.id

    vid = db.write(project.engine, fn)
    project.engine.dispose()
    return vid


def test_leases_undo_and_the_serving_version_hold_across_processes(any_project: Project) -> None:  # noqa: F811
    project = any_project

    def setup(s) -> list[int]:  # noqa: ANN001
        ids = [r.id for r in items.add(s, [Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8,
                                                mode="RGB") for k in range(N_ITEMS)])]
        work.open_round(s, strategy="random", model_version_id=None, item_ids=ids, scores=[0.0] * len(ids),
                        score_name="random")
        return ids

    db.write(project.engine, setup)
    with db.session(project.engine) as s:
        assert versions.serving(s) is None  # this process has looked (and cached the answer)
    project.engine.dispose()  # no pooled connection crosses the fork
    labelled, anns_next = _in_child(_label_one, str(project.root))
    # This process hands bob another item than the one the other server leased to ann.
    bob = labeling.next_task(project, "bob")
    assert bob is not None and bob.item_id not in (labelled, anns_next)
    # Ann's next request reaches this server: her undo takes back the label made over there.
    with pytest.raises(labeling.NotCurrent):
        labeling.undo_last(project, "ann", shown=labelled)  # not the item on her page any more
    undone, task = labeling.undo_last(project, "ann", shown=anns_next)
    assert undone.item_id == labelled and task.item_id == labelled
    assert labeling.next_task(project, "bob").item_id == bob.item_id  # bob keeps his lease
    # A version another process publishes serves here at once (no restart, no stale cache).
    project.engine.dispose()
    vid = _in_child(_publish_covering, str(project.root))
    with db.session(project.engine) as s:
        assert versions.serving(s).id == vid
