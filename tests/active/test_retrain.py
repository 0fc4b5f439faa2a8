"""active.retrain: head and full modes, metrics, calibration slice, atomic publish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from activefixtures import (
    add_items,
    add_label,
    add_labels,
    blobs,
    catalogue_with_two_wrong,
    publish_version,
)
from modelfixtures import CLASSES, make_tiny_project

from active import modelstore
from active import retrain as retrain_mod
from active.cli import main
from active.errors import UserError
from active.retrain import retrain, stratified_split, take_snapshot
from active.scoring import load_probs
from storage import db, labels, versions
from storage.tables import Label


@pytest.fixture(autouse=True)
def _fresh_cache():  # noqa: ANN202
    modelstore.clear_cache()
    yield
    modelstore.clear_cache()


def test_stratified_split_keeps_every_class_in_training() -> None:
    y = np.array([0] * 20 + [1] * 3 + [2])
    tr, va = stratified_split(y, 0.1, np.random.default_rng(0))
    assert sorted(tr.tolist() + va.tolist()) == list(range(24))
    assert (y[va] == 0).sum() == 2 and set(y[tr].tolist()) == {0, 1, 2}


def test_head_retrain_metrics_and_publish(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=8, holdout_per_class=3)
    v = retrain(project, mode="head", num_workers=0)  # publishes v1 (pretrained) and scores it first
    assert (v.id, v.mode, v.parent_id, v.n_labels) == (2, "head", 1, 24)
    hold = v.metrics["holdout"]
    assert hold["n"] == 9 and 0.0 <= hold["accuracy"] <= 1.0 and 0.0 <= hold["ece"] <= 1.0
    assert set(hold) >= {"accuracy", "macro_f1", "ece", "per_class_recall", "confusion"}
    assert np.array(hold["confusion"]).sum() == 9 and set(hold["per_class_recall"]) == set(CLASSES)
    # every labelled pool item trains; the temperature comes from their out-of-fold predictions
    assert v.metrics["temperature"] > 0 and v.metrics["train"]["n"] == v.metrics["validation"]["n"] == 24
    assert modelstore.current_version(project).id == 2
    assert (project.artifacts / "v2" / "head.npz").is_file()
    assert not list(project.artifacts.glob(".staging-*"))
    ids, probs = load_probs(project, 2)  # scored after publishing: pool and holdout
    assert len(ids) == 33 and probs.shape == (33, 3)
    # the holdout accuracy is the stored predictions' accuracy on the holdout items
    with db.session(project.engine) as s:
        preds = versions.predictions(s, 2)
        cur = labels.current(s)
        from storage.tables import Item

        hold_ids = [i for i in cur if s.get(Item, i).split == "holdout"]
    acc = np.mean([preds[i].pred == cur[i].label for i in hold_ids])
    assert acc == pytest.approx(hold["accuracy"])


def test_full_retrain_one_epoch(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=1)
    v = retrain(project, mode="full", epochs=1, batch_size=8, num_workers=0)
    assert v.mode == "full" and v.id == 1 and v.parent_id is None
    assert v.metrics["train"]["init_head"]["from"] == "random"  # nothing embedded by the pretrained network yet
    assert v.metrics["train"]["epochs"] == 1 and len(v.metrics["train"]["history"]) == 1
    assert v.metrics["holdout"]["n"] == 3
    assert (project.artifacts / "v1" / "model.pth").is_file()
    # One label field: one output block, the network and its records as they always were.
    assert modelstore.output_layout(v) == [("category", 0, 3)] and "fields" not in v.artifacts
    assert "fields" not in v.metrics and "val_acc_per_output" not in v.metrics["train"]["history"][0]
    ids, probs = load_probs(project, 1)
    assert probs.shape == (15, 3)
    lm = modelstore.load_model(project, 1)
    from models.infer import embed_and_predict
    from storage.tables import Item

    with db.session(project.engine) as s:
        paths = [s.get(Item, int(i)).path for i in ids[:3]]
    direct = embed_and_predict(lm.model, paths, transform=lm.transform, num_workers=0)
    np.testing.assert_allclose(direct.probs, probs[:3], atol=1e-4)


def test_a_fine_tune_starts_from_a_linear_probe_on_the_pretrained_embeddings(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    from active.scoring import score

    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=1)
    score(project, num_workers=0)  # the pretrained version 1 embeds every item
    v = retrain(project, mode="full", epochs=1, batch_size=8, num_workers=0, score_after=False)
    init = v.metrics["train"]["init_head"]
    assert init["from"] == "linear_probe" and init["embeddings_of"] == 1 and init["n"] == v.metrics["train"]["n"]


def test_crash_before_the_row_keeps_the_previous_version(tmp_path: Path, make_image, monkeypatch) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4)
    first = retrain(project, mode="head", num_workers=0, score_after=False)

    def boom(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("power cut")

    # crash inside the publishing transaction, after the files were renamed into place
    real_replace = modelstore.os.replace

    def replace_then_crash(src, dst):  # noqa: ANN001, ANN202
        real_replace(src, dst)
        if Path(dst).name.startswith("v"):
            boom()

    monkeypatch.setattr(modelstore.os, "replace", replace_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        retrain(project, mode="head", num_workers=0, score_after=False)
    monkeypatch.undo()
    assert modelstore.current_version(project).id == first.id
    assert sorted(p.name for p in project.artifacts.iterdir()) == ["v1", "v2"]
    # a crash while training: nothing is published either
    monkeypatch.setattr("models.head.fit_head_cv", boom)
    with pytest.raises(RuntimeError):
        retrain(project, mode="head", num_workers=0, score_after=False)
    monkeypatch.undo()
    assert modelstore.current_version(project).id == first.id
    again = retrain(project, mode="head", num_workers=0, score_after=False)
    assert again.id == first.id + 1 and (project.artifacts / f"v{again.id}" / "head.npz").is_file()


def test_snapshot_follows_labels_and_needs_two_classes(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=2)
    snap = take_snapshot(project)
    assert snap.n_labels == 6 and snap.skipped == 0
    with db.session(project.engine, write=True) as s:
        labels.append(s, Label(item_id=1, annotator="ann", label="shoes", kind="human", decision="corrected"))
    assert take_snapshot(project).snapshot != snap.snapshot
    with pytest.raises(UserError, match="mode"):
        retrain(project, mode="linear")
    bare = tmp_path / "bare"
    assert main(["init", str(bare), "--classes", "a,b", "--backbone", "shufflenet_v2_x0_5", "--weights", "none"]) == 0
    from active.project import Project

    with pytest.raises(UserError, match="at least 2 classes"):
        retrain_mod.take_snapshot(Project.load(bare))


def test_retrain_command_prints_holdout(tmp_path: Path, make_image, capsys) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=1)
    assert main(["--project", str(project.root), "retrain", "--mode", "head", "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "published version 2 (head" in out and "holdout (3 items): accuracy" in out and "scored 15" in out
    assert main(["--project", str(project.root), "--json", "status"]) == 0
    import json

    st = json.loads(capsys.readouterr().out)
    assert st["current_version"] == 2 and "accuracy" in st["model_versions"][-1]["metrics"]["holdout"]


def _head_of(project, version):  # noqa: ANN001, ANN202
    from models.head import Head

    with np.load(modelstore.version_dir(project, version) / modelstore.HEAD_FILE) as d:
        return Head.from_arrays({k: d[k] for k in d.files})


def _conflict(project, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    """Three classes of blobs, plus one spot where 14 catalogue labels say dress and 10 human
    labels say shirt. Returns the item ids and the spot's centre."""
    classes = project.config.classes  # dress, shirt, shoes
    x, y = blobs(rng, 3, 30, dim=16, spread=1.0)
    spot = rng.normal(0, 4, (1, 16))
    xs = np.vstack([x, spot + rng.normal(0, 0.05, (24, 16))])
    ids = add_items(project, len(xs))
    add_labels(project, [(i, classes[c]) for i, c in zip(ids[:90], y, strict=True)])
    add_labels(project, [(i, "dress") for i in ids[90:104]])
    add_labels(project, [(i, "shirt") for i in ids[104:]], kind="human", annotator="ann")
    publish_version(project, ids, xs)
    return ids, spot


def test_trusted_labels_outweigh_imported_ones(project, monkeypatch) -> None:  # noqa: ANN001
    ids, spot = _conflict(project, np.random.default_rng(7))
    v = retrain(project, mode="head", score_after=False)
    trust = v.metrics["trust"]
    assert trust["trained_on"] == {"review": 0, "human": 10, "imported": 104} and trust["left_out_items"] == []
    assert v.metrics["train"]["n"] == 114
    assert v.metrics["calibration"]["on"] == "all_kept_out_of_fold_trust_weighted"  # 10 humans are too few
    assert v.metrics["regularisation"]["folds"] == 5 and v.metrics["regularisation"]["C"] > 0
    assert _head_of(project, v).predict_proba(spot).argmax() == 1  # shirt: 10 x 2 outweigh 14 x 1
    # The same labels trusted alike: the 14 catalogue labels win the spot.
    monkeypatch.setattr(retrain_mod, "TRUST_WEIGHTS", dict.fromkeys(retrain_mod.TRUST_WEIGHTS, 1.0))
    alike = retrain(project, mode="head", score_after=False)
    assert _head_of(project, alike).predict_proba(spot).argmax() == 0


def test_a_suspect_imported_label_is_left_out_of_the_next_head(project) -> None:  # noqa: ANN001
    from active import disputes

    ids, x = catalogue_with_two_wrong(project)  # items 0 and 21 carry wrong catalogue labels
    publish_version(project, ids, x)
    before = retrain(project, mode="head")  # no dispute check yet: all trusted (scored: cached embeddings)
    assert before.metrics["trust"]["left_out_items"] == [] and before.metrics["train"]["n"] == 60
    disputes.refresh(project)
    after = retrain(project, mode="head", score_after=False)
    trust = after.metrics["trust"]
    assert {ids[0], ids[21]} <= set(trust["left_out_items"])
    assert trust["left_out_suspect_imported"] == len(trust["left_out_items"]) == 60 - after.metrics["train"]["n"]
    # An annotator labels item 0: the dispute was about the catalogue label, the human one counts.
    add_label(project, ids[0], "dress", kind="human", annotator="ann")
    again = retrain(project, mode="head", score_after=False)
    assert ids[0] not in again.metrics["trust"]["left_out_items"]
    assert again.metrics["trust"]["trained_on"]["human"] == 1


def test_versions_are_compared_on_the_same_holdout(tmp_path: Path, make_image, capsys) -> None:  # noqa: ANN001
    import json

    from active.retrain import compare_on_holdout, holdout_hash, holdout_labels

    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=2)
    root = str(project.root)
    assert main(["--project", root, "retrain", "--mode", "head", "--workers", "0", "--no-progress"]) == 0
    v2 = modelstore.current_version(project)
    assert v2.metrics["holdout_labels_sha256"] == holdout_hash(project)
    assert compare_on_holdout(project, v2) is None  # v1 (pretrained) has no head to compare with
    capsys.readouterr()
    assert main(["--project", root, "--json", "retrain", "--mode", "head", "--workers", "0", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["compared_with"]["version"] == 2 and out["compared_with"]["same_holdout"] is True
    # A reviewer changes a holdout label: the holdout the versions were measured on is gone.
    item, label = holdout_labels(project)[0]
    other = next(c for c in CLASSES if c != label)
    with db.session(project.engine, write=True) as s:
        labels.append(s, Label(item_id=item, annotator="rev", label=other, kind="review", decision="resolved"))
    assert main(["--project", root, "--json", "status"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert [v["same_holdout"] for v in st["model_versions"]] == [None, False, False]
    assert main(["--project", root, "retrain", "--mode", "head", "--workers", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "previous version 3 on the same holdout (the holdout labels changed: re-evaluated" in text
    v4 = modelstore.current_version(project)
    cmp = compare_on_holdout(project, v4)
    assert cmp.previous["n"] == v4.metrics["holdout"]["n"] == 6 and not cmp.same_holdout


def test_a_rename_keeps_old_label_snapshots_reproducible(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    from active.retrain import reproduce_snapshot
    from active.taxonomy import alias_class

    project = make_tiny_project(tmp_path, make_image, per_class=4)
    v = retrain(project, mode="head", num_workers=0, score_after=False)
    assert reproduce_snapshot(project, v) == v.snapshot
    alias_class(project, CLASSES[0], "renamed")
    project.config.classes = ["renamed", *CLASSES[1:]]
    assert reproduce_snapshot(project, v) == v.snapshot  # the store as it was, labels never rewritten
    assert take_snapshot(project).snapshot != v.snapshot  # today's labels read under the new name
    with db.session(project.engine) as s:
        assert versions.get(s, v.id).classes[0] == "renamed"


def test_a_refresh_reuses_the_cross_validated_strength_until_the_labels_move(project, monkeypatch) -> None:  # noqa: ANN001
    ids, x = catalogue_with_two_wrong(project)  # 60 imported labels: 5% of them is 3 label rows
    publish_version(project, ids, x)
    first = retrain(project, mode="head", score_after=False)
    assert first.metrics["regularisation"]["chosen"] == "cross_validation"
    assert first.metrics["regularisation"]["chosen_on_n"] == 60
    add_label(project, ids[3], "dress", kind="human", annotator="ann")
    second = retrain(project, mode="head", score_after=False)
    reg = second.metrics["regularisation"]
    assert reg["chosen"] == "reused" and reg["chosen_in_version"] == first.id
    assert reg["scaled_c"] == pytest.approx(first.metrics["regularisation"]["scaled_c"])
    assert "validation" in second.metrics  # out-of-fold logits all the same: the temperature still has them
    for i in ids[4:7]:  # 4 rows since the choice: more than 5% of 60
        add_label(project, i, "dress", kind="human", annotator="ann")
    third = retrain(project, mode="head", score_after=False)
    assert third.metrics["regularisation"]["chosen"] == "cross_validation"
    # Other classes: the earlier strength says nothing about them.
    monkeypatch.setattr(project.config, "classes", [*project.config.classes, "hat"])
    add_label(project, ids[8], "hat", kind="human", annotator="ann")
    add_label(project, ids[9], "hat", kind="human", annotator="ann")
    fourth = retrain(project, mode="head", score_after=False)
    assert fourth.metrics["regularisation"]["chosen"] == "cross_validation"
