"""The Label tab's side of several label fields (active.labeling): a task is about one field with
that field's suggestions; a decision serves the same item's next field, the last one the next
item; `switch_field` moves between fields; undo serves the undone field again."""

from __future__ import annotations

import pytest
from activefixtures import two_field_catalogue

from active import labeling, modelstore
from active.errors import UserError
from active.retrain import retrain
from storage import db, labels, work
from storage.tables import Label


@pytest.fixture
def queued(project):  # noqa: ANN001, ANN201
    cat = two_field_catalogue(project, n=30, holdout=12)
    modelstore.clear_cache()
    v = retrain(project, mode="head")
    first = cat["pool"][:3]
    db.write(project.engine, lambda s: work.open_round(s, strategy="margin", model_version_id=v.id, item_ids=first,
                                                       scores=[0.1, 0.2, 0.3], score_name="margin"))
    yield project, first
    modelstore.clear_cache()


def test_fields_one_after_the_other(queued) -> None:  # noqa: ANN001
    project, first = queued
    task = labeling.next_task(project, "ann")
    assert (task.item_id, task.field) == (first[0], "category")
    assert {c for c, _ in task.ranked} == {"dress", "shirt", "shoes"}
    with pytest.raises(UserError, match="not in the taxonomy"):
        labeling.record(project, "ann", task, decision="corrected", label="black")
    row, nxt = labeling.record(project, "ann", task, decision=labeling.decide(task, "shirt"), label="shirt")
    assert (row.field, nxt.item_id, nxt.field) == ("category", first[0], "colour")
    assert {c for c, _ in nxt.ranked} == {"black", "white"} and nxt.version_id == task.version_id
    assert labeling.next_task(project, "ann").field == "colour"  # a reload shows the same field
    row, after = labeling.record(project, "ann", nxt, decision="corrected", label="white")
    assert (row.field, after.item_id, after.field) == ("colour", first[1], "category")
    with db.session(project.engine) as s:
        group = labels.for_items(s, [first[0]])[first[0]]
    assert labels.derive(group).label == "shirt" and labels.derive(group, "colour").label == "white"
    # Undo takes back the colour and serves that very field again.
    undone, again = labeling.undo_last(project, "ann", shown=first[1])
    assert (undone.field, again.item_id, again.field) == ("colour", first[0], "colour")


def test_switch_field_and_a_stale_field(queued) -> None:  # noqa: ANN001
    project, first = queued
    task = labeling.next_task(project, "ann")
    other = labeling.switch_field(project, "ann", task)
    assert (other.item_id, other.field) == (task.item_id, "colour")
    assert labeling.switch_field(project, "ann", other).field == "category"  # wraps round
    row, nxt = labeling.record(project, "ann", other, decision="skipped")
    assert (row.field, nxt.item_id, nxt.field) == ("colour", task.item_id, "category")
    assert labeling.switch_field(project, "ann", nxt) == nxt  # colour is decided: nowhere else to go
    stale, shown = labeling.record(project, "ann", other, decision="corrected", label="black")
    assert stale is None and (shown.item_id, shown.field) == (task.item_id, "category")  # nothing written


def test_an_item_left_midway_comes_back_to_its_annotator(queued) -> None:  # noqa: ANN001
    project, first = queued
    task = labeling.next_task(project, "ann")
    _row, colour = labeling.record(project, "ann", task, decision="corrected", label="shoes")
    assert (colour.item_id, colour.field) == (first[0], "colour")
    db.write(project.engine, lambda s: work.release(s, "ann"))  # the lease ran out (the page was closed)
    back = labeling.next_task(project, "ann")
    assert (back.item_id, back.field) == (first[0], "colour")
    _row, nxt = labeling.record(project, "ann", back, decision="corrected", label="black")
    assert (nxt.item_id, nxt.field) == (first[1], "category")
    assert labeling.next_task(project, "ann").item_id == first[1]  # nothing left midway now


@pytest.mark.parametrize("overlap", [1, 2])
def test_an_item_left_midway_goes_to_the_next_annotator_for_its_open_fields(queued, overlap: int) -> None:  # noqa: ANN001
    project, first = queued
    project.config.labeling.overlap = overlap
    task = labeling.next_task(project, "ann")
    labeling.record(project, "ann", task, decision="corrected", label="shoes")
    db.write(project.engine, lambda s: work.release(s, "ann"))  # ann left midway (her lease ran out)
    bob = labeling.next_task(project, "bob")
    assert (bob.item_id, bob.field) == (first[0], "colour" if overlap == 1 else "category")
    while bob is not None and bob.item_id == first[0]:
        _row, bob = labeling.record(project, "bob", bob, decision="corrected", label=bob.ranked[-1][0])
    assert bob.item_id == first[1]  # first[0] is finished for bob
    with db.session(project.engine) as s:
        group = labels.for_items(s, [first[0]])[first[0]]
        progress = labeling.progress(project, "ann", bob.round_id)
    assert [r.annotator for r in group if r.field == "colour" and r.kind == "human"] == ["bob"]
    assert progress["round_labelled"] == 1 and progress["labelled"] == 1
    back = labeling.next_task(project, "ann")
    if overlap == 1:  # every field of first[0] has its label; first[1] is bob's
        assert back.item_id == first[2]
    else:  # the second colour label is still wanted, and ann's item comes back to her first
        assert (back.item_id, back.field) == (first[0], "colour")


def test_an_item_settled_meanwhile_gives_way_to_the_next(queued) -> None:  # noqa: ANN001
    project, first = queued
    task = labeling.next_task(project, "ann")
    _row, colour = labeling.record(project, "ann", task, decision="corrected", label="shoes")
    assert (colour.item_id, colour.field) == (first[0], "colour")
    # While ann looks at its colour, a reviewer settles it: nothing is left for her on that item.
    db.write(project.engine, lambda s: labels.append(s, Label(item_id=first[0], field="colour", annotator="rev",
                                                              label="black", kind="review", decision="resolved")))
    again = labeling.next_task(project, "ann")  # a reload
    assert (again.item_id, again.field) == (first[1], "category")
