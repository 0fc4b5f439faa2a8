"""Disputes: confident-learning math on small arrays, the out-of-fold property, and the store."""

from __future__ import annotations

import numpy as np
import pytest
from activefixtures import add_items, add_label, add_labels, blobs, publish_version

from active import disputes as D
from active.simulate import flip_labels
from storage import db
from storage import disputes as store


def test_thresholds_and_confident_joint_on_hand_made_probs() -> None:
    probs = np.array([
        [0.9, 0.1],  # labelled 0, confidently 0
        [0.7, 0.3],  # labelled 0
        [0.2, 0.8],  # labelled 1, confidently 1
        [0.8, 0.2],  # labelled 1, but confidently 0: off the diagonal
    ])
    y = np.array([0, 0, 1, 1])
    t = D.class_thresholds(probs, y)
    np.testing.assert_allclose(t, [0.8, 0.5])
    joint, conf = D.confident_joint(probs, y)
    assert conf.tolist() == [0, -1, 1, 0]
    # Row 0 (one confident item) rescaled to class 0's two labels; row 1 split 1:1.
    np.testing.assert_allclose(joint, [[2.0, 0.0], [1.0, 1.0]])
    transition = D.noise_transition(joint)
    np.testing.assert_allclose(transition.sum(axis=0), [1.0, 1.0])
    post = D.posterior_wrong(probs, y, transition)
    assert post[3] > 0.5 > post[2]
    assert post[0] == pytest.approx(0.0)


def test_classes_nobody_carries_are_never_confident() -> None:
    probs = np.array([[0.5, 0.0, 0.5], [0.4, 0.0, 0.6]])
    t = D.class_thresholds(probs, np.array([0, 2]))
    assert np.isinf(t[1])


class RecordingHead:
    """A stand-in for models.head.Head: predicts uniformly and remembers what it trained on."""

    def __init__(self, trained: np.ndarray, num_classes: int) -> None:
        self.trained, self.num_classes = trained, num_classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.full((x.shape[0], self.num_classes), 1.0 / self.num_classes)


def test_out_of_fold_never_judges_an_item_with_its_own_label() -> None:
    n = 60
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)  # column 0 = item index
    y = np.arange(n) % 3
    fits: list[RecordingHead] = []

    def fit(xs, ys, k, **_):  # noqa: ANN001, ANN202
        head = RecordingHead(xs[:, 0].astype(int), k)
        fits.append(head)
        return head

    exclude = np.zeros(n, dtype=bool)
    exclude[[4, 5, 17]] = True
    probs = D.out_of_fold_probs(x, y, 3, folds=4, fit=fit, exclude=exclude)
    assert probs.shape == (n, 3) and len(fits) == 4
    trained = [set(h.trained.tolist()) for h in fits]
    # Every item is trained on by all folds but one (minus the excluded ones)...
    for i in range(n):
        seen = sum(i in t for t in trained)
        assert seen == (0 if exclude[i] else 3)
    # ...and the fold that did not train on it is the one that predicted it: a real head on
    # separable data, with one label flipped, still calls the flipped item by its true class.
    rng = np.random.default_rng(0)
    xb, yb = blobs(rng, 3, 20, dim=4, spread=0.3)
    noisy = yb.copy()
    noisy[0] = 2
    oof = D.out_of_fold_probs(xb, noisy, 3, folds=5, C=1.0)
    assert oof[0].argmax() == yb[0]


def test_detector_finds_flips_on_a_noisy_synthetic_set() -> None:
    # Embedding-like: many dimensions, classes apart but each spread wide.
    rng = np.random.default_rng(3)
    x, y = blobs(rng, 4, 60, dim=64, spread=4.0)
    noisy, flipped = flip_labels(y, 4, 0.1, rng)
    assert flipped.sum() > 10
    issues = D.find_label_issues(x, noisy, 4, seed=0)
    m = D.detection_metrics(flipped, issues.score, issues.flagged)
    assert m["average_precision"] >= 0.9
    assert m["precision"] >= 0.8 and m["recall"] >= 0.7
    # The head's suggestion for a flagged flip is the true class.
    hits = issues.flagged & flipped
    assert (issues.suggested[hits] == y[hits]).mean() >= 0.9
    assert 0.0 < issues.noise_rate < 0.5


def test_clean_separable_labels_flag_nothing() -> None:
    rng = np.random.default_rng(4)
    x, y = blobs(rng, 3, 40, dim=6, spread=0.5)
    issues = D.find_label_issues(x, y, 3)
    assert not issues.flagged.any()


def test_annotator_disagreements() -> None:
    votes = [
        (1, "ann", "dress"), (1, "bob", "skirt"),  # 1:1 split
        (2, "ann", "shoes"), (2, "bob", "shoes"),  # agree
        (3, "ann", "hat"), (3, "bob", "hat"), (3, "cy", "shirt"),  # 2:1
        (4, "ann", "hat"), (4, "ann", "shirt"),  # one annotator changed their mind: no dispute
        (5, "ann", "hat"), (5, "bob", "shirt"), (5, "bob", "hat"),  # bob's latest agrees
    ]
    out = D.annotator_disagreements(votes)
    assert [(d.item_id, round(d.score, 3)) for d in out] == [(1, 0.5), (3, 0.333)]
    assert out[0].labels == {"ann": "dress", "bob": "skirt"}


def test_refresh_writes_ranked_disputes_and_resolve_settles_the_item(project) -> None:  # noqa: ANN001
    classes = project.config.classes  # dress, shirt, shoes
    rng = np.random.default_rng(5)
    x, y = blobs(rng, 3, 20, dim=32, spread=2.0)
    ids = add_items(project, len(y))
    given = y.copy()
    given[[0, 21]] = [1, 2]  # two catalogue labels are wrong
    add_labels(project, [(i, classes[c]) for i, c in zip(ids, given, strict=True)])
    # Item 45 (truly shoes): one annotator says shoes, another shirt.
    add_label(project, ids[45], "shoes", kind="human", annotator="ann")
    add_label(project, ids[45], "shirt", kind="human", annotator="bob")
    # Item 30 (truly shoes) is labelled "dress" by a human: the model disagrees with a human.
    add_label(project, ids[30], "dress", kind="human", annotator="ann")
    publish_version(project, ids, x)

    report = D.refresh(project)
    assert report.checked == len(ids) and not report.skipped
    with db.session(project.engine) as s:
        rows = store.open_disputes(s)
    found = {(d.item_id, d.reason) for d in rows}
    assert (ids[0], "imported_label_suspect") in found
    assert (ids[21], "imported_label_suspect") in found
    assert (ids[30], "model_disagrees") in found
    assert (ids[45], "annotators_disagree") in found
    assert [d.score for d in rows] == sorted((d.score for d in rows), reverse=True)
    suspect = next(d for d in rows if d.item_id == ids[0])
    assert suspect.detail["given"] == "shirt" and suspect.detail["suggested"] == "dress"

    # A reviewer settles item 0: its disputes close, and a refresh does not reopen them.
    label_id = add_label(project, ids[0], "dress", kind="review", annotator="rev")
    db.write(project.engine, lambda s: store.resolve(s, suspect.id, label_id))
    D.refresh(project)
    with db.session(project.engine) as s:
        still_open = store.open_disputes(s)
        assert all(d.item_id != ids[0] for d in still_open)
        assert [d.status for d in store.for_item(s, ids[0])] == ["resolved"]
    with pytest.raises(ValueError, match="not a label of item"):
        db.write(project.engine, lambda s: store.resolve(s, still_open[0].id, label_id))
    # A second resolution of a settled dispute is refused (and its transaction rolls back).
    with pytest.raises(ValueError, match="no longer open"):
        db.write(project.engine, lambda s: store.resolve(s, suspect.id, label_id))


def test_disputes_command(project, cli) -> None:  # noqa: ANN001
    rng = np.random.default_rng(6)
    x, y = blobs(rng, 3, 12, dim=32, spread=2.0)
    ids = add_items(project, len(y))
    given = y.copy()
    given[3] = 2
    add_labels(project, [(i, project.config.classes[c]) for i, c in zip(ids, given, strict=True)])
    run = cli("--project", project.root, "disputes")
    assert run.code == 0 and "no open disputes" in run.out
    run = cli("--project", project.root, "disputes", "--refresh")  # no version yet: only annotators
    assert run.code == 0 and "active score" in run.out
    publish_version(project, ids, x)
    run = cli("--project", project.root, "--json", "disputes", "--refresh", "--limit", "5")
    assert run.code == 0, run.err
    data = run.data
    assert data["refresh"]["checked"] == len(ids)
    assert data["disputes"][0]["item_id"] == ids[3]
    assert data["disputes"][0]["reason"] == "imported_label_suspect"


def test_holdout_suspects_have_their_own_list(project, cli) -> None:  # noqa: ANN001
    classes = project.config.classes
    rng = np.random.default_rng(5)
    x, y = blobs(rng, 3, 20, dim=32, spread=2.0)
    first = add_items(project, 20)
    hold = add_items(project, 15, split="holdout")
    pool = first + add_items(project, 25, start=20)
    ids = first + hold + pool[20:]
    given = y.copy()
    given[[0, 21]] = [1, 2]  # one wrong catalogue label in the pool, one in the holdout (hold[1])
    add_labels(project, [(i, classes[c]) for i, c in zip(ids, given, strict=True)])
    add_label(project, hold[8], "shoes", kind="human", annotator="ann")  # annotators disagree on a holdout item
    add_label(project, hold[8], "shirt", kind="human", annotator="bob")
    publish_version(project, ids, x)
    D.refresh(project)
    with db.session(project.engine) as s:
        queue = store.open_disputes(s)
        apart = store.open_disputes(s, queue="holdout")
    assert queue and not {d.item_id for d in queue} & set(hold)  # the review queue holds pool items only
    assert (pool[0], "imported_label_suspect") in {(d.item_id, d.reason) for d in queue}
    found = {d.item_id: d for d in apart}
    assert {hold[1], hold[8]} <= set(found) and all(d.reason == "holdout_label_suspect" for d in apart)
    assert found[hold[8]].detail["reasons"] == ["annotators_disagree"]
    run = cli("--project", project.root, "--json", "disputes", "--holdout")
    assert run.code == 0 and {d["item_id"] for d in run.data["disputes"]} == set(found)


def test_disputes_follow_the_labels_people_give(project) -> None:  # noqa: ANN001
    from active.labeling import Task, record

    ids = add_items(project, 3)
    add_labels(project, [(ids[0], "dress"), (ids[1], "dress")])
    db.write(project.engine, lambda s: store.replace_open(s, "imported_label_suspect",
                                                          [(ids[0], 0.7, {"given": "dress"})]))

    def label(item_id: int, cls: str) -> None:
        record(project, "ann", Task(item_id, "/fake", None, 0.0, "", "", None), decision="corrected", label=cls)

    label(ids[0], "dress")  # a person confirms the given label: the suspicion is settled
    label(ids[1], "shirt")  # a person contradicts it: the item becomes suspect
    label(ids[2], "shoes")  # no given label: nothing to dispute
    with db.session(project.engine) as s:
        (settled,) = store.for_item(s, ids[0])
        opened = store.open_disputes(s)
    assert settled.status == "resolved" and settled.detail["confirmed_by"] == "ann"
    assert [(d.item_id, d.reason, d.detail["people_say"]) for d in opened] == [
        (ids[1], "imported_label_suspect", "shirt")]
    D.refresh(project)  # a refresh keeps what the labels say
    with db.session(project.engine) as s:
        assert [(d.item_id, d.reason) for d in store.open_disputes(s)] == [(ids[1], "imported_label_suspect")]
