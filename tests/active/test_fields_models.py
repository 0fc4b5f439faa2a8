"""One head per label field on the shared embeddings (issue 15): suggestions, holdout metrics and
disputes per field, on synthetic embeddings whose two fields are independent."""

from __future__ import annotations

import numpy as np
import pytest
from activefixtures import two_field_catalogue

from active import modelstore
from active.disputes import refresh
from active.retrain import retrain
from active.scoring import load_probs
from storage import db, disputes, versions
from storage.fields import field_classes, field_metrics, field_prediction


@pytest.fixture(autouse=True)
def _fresh_cache():  # noqa: ANN202
    modelstore.clear_cache()
    yield
    modelstore.clear_cache()


def test_head_retrain_fits_one_head_per_field(project, cli) -> None:  # noqa: ANN001
    cat = two_field_catalogue(project)
    v = retrain(project, mode="head")
    assert field_classes(v, "colour") == ["black", "white"] and v.classes == ["dress", "shirt", "shoes"]
    assert (project.artifacts / f"v{v.id}" / "head-colour.npz").is_file()
    colour = v.metrics["fields"]["colour"]
    assert colour["holdout"]["n"] == 30 and colour["holdout"]["accuracy"] >= 0.9
    assert v.metrics["holdout"]["accuracy"] >= 0.9  # the default field's, where it always was
    assert colour["n_labels"] == 90 and colour["temperature"] > 0
    # Scored: each item has its calibrated suggestion per field, the colour from its own head.
    ids, probs = load_probs(project, v.id, "colour")
    assert len(ids) == 120 and probs.shape == (120, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    with db.session(project.engine) as s:
        preds = versions.predictions(s, v.id)
    truth = dict(zip(cat["ids"], cat["colour"], strict=True))
    right = np.mean([field_prediction(preds[i], "colour").pred == ["black", "white"][truth[i]] for i in cat["holdout"]])
    assert right >= 0.9
    status = cli("--project", project.root, "status", "--json").data
    assert status["current_version"] == v.id
    assert status["fields"]["colour"]["holdout"]["accuracy"] == colour["holdout"]["accuracy"]
    assert status["fields"]["category"]["holdout"]["accuracy"] == v.metrics["holdout"]["accuracy"]
    text = cli("--project", project.root, "status").out
    assert "done (labelled in every field): 0" in text and "colour" in text


def test_a_field_without_enough_labels_is_skipped_not_fatal(project, cli) -> None:  # noqa: ANN001
    two_field_catalogue(project)
    project.add_field("season", ["summer", "winter"])  # no labels at all
    out = cli("--project", project.root, "retrain", "--mode", "head", "--no-progress")
    assert out.code == 0, out.err
    assert "field season: no head (need labelled pool items of field 'season'" in out.out
    assert "field colour: holdout (30 items) accuracy" in out.out
    with db.session(project.engine) as s:
        v = versions.serving(s)
    assert "at least 2 classes" in v.metrics["fields"]["season"]["skipped"]
    assert set(v.artifacts.get("fields") or {}) == {"colour"}
    assert load_probs(project, v.id, "season")[1].shape == (0, 0)


def test_disputes_refresh_finds_flipped_labels_of_a_second_field(project, cli) -> None:  # noqa: ANN001
    cat = two_field_catalogue(project, flipped=6)
    rep = refresh(project)
    assert rep.by_field["colour"]["checked"] == 120 - 30 + 30  # pool and holdout labels alike
    with db.session(project.engine) as s:
        found = {d.item_id for d in disputes.open_disputes(s, field="colour")}
        cat_found = {d.item_id for d in disputes.open_disputes(s, field="category")}
    assert len(found & set(cat["flipped"])) >= 5 and len(found) <= 9
    assert not cat_found & set(cat["flipped"])  # the category labels are right: nothing there
    text = cli("--project", project.root, "disputes", "--refresh").out
    assert "field colour: " in text and "model checked 120 labels" in text
    listed = cli("--project", project.root, "disputes", "--field", "colour", "--json", "--limit", "50").data
    assert {d["item_id"] for d in listed["disputes"]} == found and {d["field"] for d in listed["disputes"]} == {"colour"}


def _tiny_with_colour(tmp_path, make_image, *, per_class: int = 4, holdout_per_class: int = 0):  # noqa: ANN001, ANN202
    """A tiny-network project (modelfixtures) with a colour field every item has a human label of."""
    from modelfixtures import make_tiny_project

    from storage import items, labels
    from storage.tables import Label

    project = make_tiny_project(tmp_path, make_image, per_class=per_class, holdout_per_class=holdout_per_class)
    project.add_field("colour", ["dark", "light"])
    with db.session(project.engine) as s:
        ids = items.ids(s)
    db.write(project.engine, lambda s: labels.append_many(s, [
        Label(item_id=i, field="colour", annotator="ann", label=["dark", "light"][k % 2], kind="human",
              decision="corrected") for k, i in enumerate(ids)]))
    return project, ids


def test_attribution_for_the_field_being_labelled(tmp_path, make_image) -> None:  # noqa: ANN001
    """The network ending in a field's head gives that field's stored probabilities, and its map
    explains a class of that field."""
    import torch

    from active.explain import explain
    from models.images import load_rgb
    from storage import items

    project, ids = _tiny_with_colour(tmp_path, make_image)
    v = retrain(project, mode="head", num_workers=0)
    loaded = modelstore.load_model(project, v, field="colour")
    assert loaded.classes == ["dark", "light"]
    with db.session(project.engine) as s:
        item = items.get(s, ids[0])
        stored = field_prediction(versions.predictions(s, v.id, [ids[0]])[ids[0]], "colour").probs
    with torch.no_grad():
        probs = torch.softmax(loaded.model(loaded.transform(load_rgb(item.path))[None]), dim=1)[0].numpy()
    assert np.allclose(probs, stored, atol=1e-3)
    done = explain(project, ids[0], field="colour")
    assert done.target in ("dark", "light") and done.image.is_file() and "-colour-" in done.image.name
    default = explain(project, ids[0])
    assert default.target in ("dress", "shirt", "shoes") and default.image != done.image


def test_combined_probs_take_the_most_uncertain_undecided_field() -> None:
    from active.selection import combined_probs

    per_field = {"category": (np.array([1, 2, 3]), np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.98, 0.01, 0.01]])),
                 "colour": (np.array([1, 2, 3]), np.array([[0.5, 0.5], [0.99, 0.01], [0.6, 0.4]]))}
    undecided = {1: ["category", "colour"], 2: ["category", "colour"], 3: ["category"]}
    ids, probs = combined_probs(per_field, undecided)
    assert ids.tolist() == [1, 2, 3]
    assert np.allclose(probs, [[0.5, 0.5, 0.0], [0.5, 0.4, 0.1], [0.98, 0.01, 0.01]])
    # Item 3's colour is decided already: its confident category is all that counts.


def test_select_targets_one_field_or_all(project) -> None:  # noqa: ANN001
    from active.selection import plan
    from storage import labels
    from storage.tables import Label

    cat = two_field_catalogue(project)
    # People have labelled the colour of half the pool: those items are candidates for the
    # category alone when every field is targeted, and not at all when only colour is.
    half = cat["pool"][:45]
    db.write(project.engine, lambda s: labels.append_many(s, [
        Label(item_id=i, field="colour", annotator="ann", label="black", kind="human", decision="corrected")
        for i in half]))
    retrain(project, mode="head")
    colour_only, _, _ = plan(project, strategy="margin", batch=10, field="colour")
    assert not set(colour_only.ids.tolist()) & set(half)
    every, _, _ = plan(project, strategy="margin", batch=90)
    assert sorted(every.ids.tolist()) == sorted(cat["pool"])  # no item is labelled in every field
    # Each item's margin is its most uncertain undecided field's: the category alone where the
    # colour is decided.
    with db.session(project.engine) as s:
        v = versions.serving(s)
    margins = {}
    for name in ("category", "colour"):
        ids, probs = load_probs(project, v.id, name)
        top = np.sort(probs, axis=1)
        margins[name] = dict(zip(ids.tolist(), (top[:, -1] - top[:, -2]).tolist(), strict=True))
    got = dict(zip(every.ids.tolist(), every.scores.tolist(), strict=True))
    for i in cat["pool"]:
        want = margins["category"][i] if i in half else min(margins["category"][i], margins["colour"][i])
        assert got[i] == pytest.approx(want, abs=1e-5)
    category_only, _, _ = plan(project, strategy="margin", batch=90, field="category")
    assert len(category_only.ids) == 90  # nobody labelled a category: every pool item
    with pytest.raises(Exception, match="no label field 'season'"):
        plan(project, strategy="margin", batch=5, field="season")


def test_a_fine_tune_has_one_output_block_per_field(tmp_path, make_image, cli) -> None:  # noqa: ANN001
    """A two-field project's fine-tuned network has the colour's outputs after the category's,
    each started from its own linear probe, calibrated and evaluated on its own labels; it
    serves by itself, every field's suggestions and maps from it."""
    import torch

    from active.explain import explain
    from active.scoring import score
    from models.images import load_rgb
    from storage import items

    project, ids = _tiny_with_colour(tmp_path, make_image, per_class=6, holdout_per_class=1)
    score(project, num_workers=0)  # the pretrained version 1: the probes' embeddings
    full = retrain(project, mode="full", epochs=1, batch_size=8, num_workers=0)
    assert full.mode == "full" and full.classes == ["dress", "shirt", "shoes"]
    assert field_classes(full, "colour") == ["dark", "light"] and full.artifacts["fields"]["colour"]["outputs"] == [3, 5]
    state = torch.load(project.artifacts / f"v{full.id}" / modelstore.CHECKPOINT, weights_only=True)
    assert state["fc.weight"].shape[0] == 5  # one final Linear, the two fields' blocks end to end
    colour, m = full.metrics["fields"]["colour"], full.metrics
    assert colour["holdout"]["n"] == 3 and m["holdout"]["n"] == 3
    # One image of each category is held back for validation, for every field alike.
    assert colour["train"]["n"] == m["train"]["n"] == 18 - 3
    assert colour["train"]["init_head"]["from"] == m["train"]["init_head"]["from"] == "linear_probe"
    assert colour["temperature"] > 0 and colour["calibration"]["on"].endswith("validation_slice_trust_weighted")
    assert colour["label_snapshot_sha256"] and colour["n_labels"] == 18
    assert all(len(h["val_acc_per_output"]) == 2 for h in m["train"]["history"])
    # No head version has to follow: the fine-tune serves every field itself.
    assert modelstore.serving_version(project).id == full.id
    got, probs = load_probs(project, full.id, "colour")
    assert len(got) == len(ids) and probs.shape == (len(ids), 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert load_probs(project, full.id)[1].shape == (len(ids), 3)
    # The network loaded for a field ends in that field's block: its softmax is what was stored.
    loaded = modelstore.load_model(project, full, field="colour")
    assert loaded.classes == ["dark", "light"]
    with db.session(project.engine) as s:
        item = items.get(s, ids[0])
        stored = versions.predictions(s, full.id, [ids[0]])[ids[0]]
    with torch.no_grad():
        out = torch.softmax(loaded.model(loaded.transform(load_rgb(item.path))[None]), dim=1)[0].numpy()
    assert np.allclose(out, field_prediction(stored, "colour").probs, atol=1e-3)
    assert modelstore.load_model(project, full).model(loaded.transform(load_rgb(item.path))[None]).shape == (1, 3)
    done = explain(project, ids[0], field="colour")
    assert done.target in ("dark", "light") and "-colour-" in done.image.name
    status = cli("--project", project.root, "status", "--json").data
    assert status["fields"]["colour"]["holdout"]["accuracy"] == colour["holdout"]["accuracy"]


def test_each_fields_head_reuses_its_own_cross_validated_strength(project) -> None:  # noqa: ANN001
    """A head refresh reuses each field's earlier L2 strength while that field's own labels and
    classes hold: new colour labels or colour classes send the colour back to cross-validation
    and leave the category's choice standing."""
    from activefixtures import add_labels

    cat = two_field_catalogue(project)  # 90 pool labels per field: 5% of them is 4 label rows

    def chosen(version) -> dict:  # noqa: ANN001
        return {name: field_metrics(version.metrics, name)["regularisation"] for name in ("category", "colour")}

    first = retrain(project, mode="head", score_after=False)
    assert {n: (r["chosen"], r["chosen_on_n"]) for n, r in chosen(first).items()} == {
        "category": ("cross_validation", 90), "colour": ("cross_validation", 90)}
    add_labels(project, [(cat["pool"][0], "white")], kind="human", annotator="ann", field="colour")
    second = retrain(project, mode="head", score_after=False)
    for name, reg in chosen(second).items():
        assert reg["chosen"] == "reused" and reg["chosen_in_version"] == first.id, name
        assert reg["scaled_c"] == pytest.approx(chosen(first)[name]["scaled_c"])
    # Five more colour rows: six since the choice, more than 5% of 90; no category row.
    add_labels(project, [(i, "black") for i in cat["pool"][1:6]], kind="human", annotator="ann", field="colour")
    third = retrain(project, mode="head", score_after=False)
    assert chosen(third)["colour"]["chosen"] == "cross_validation"
    assert chosen(third)["category"]["chosen"] == "reused" and chosen(third)["category"]["chosen_in_version"] == first.id
    # A new colour class: the colour's earlier strength says nothing about it (two rows alone would not count).
    project.add_classes(["grey"], "colour")
    add_labels(project, [(cat["pool"][6], "grey"), (cat["pool"][7], "grey")], kind="human", annotator="ann",
               field="colour")
    fourth = retrain(project, mode="head", score_after=False)
    assert chosen(fourth)["colour"]["chosen"] == "cross_validation"
    assert chosen(fourth)["category"]["chosen"] == "reused" and chosen(fourth)["category"]["chosen_in_version"] == first.id
