"""Class aliases: a rename or merge is read through, never written into the rows."""

from __future__ import annotations

from sqlalchemy import text

from storage import aliases, db, labels, versions
from storage.meaning import resolve_class
from storage.tables import Label, ModelVersion, Prediction


def _raw(engine, table: str) -> list[tuple]:  # noqa: ANN001
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY id"))]  # noqa: S608


def test_rows_read_under_the_new_name_and_stay_untouched(engine, add_items) -> None:  # noqa: ANN001
    a, b = add_items(engine, 2)

    def setup(s):  # noqa: ANN001, ANN202
        labels.append(s, Label(item_id=a, annotator="import", label="shoes", kind="imported", decision="given"))
        labels.append(s, Label(item_id=a, annotator="ann", label="shoes", kind="human", decision="accepted",
                               suggestion="shoes"))
        labels.append(s, Label(item_id=b, annotator="ann", label="shirt", kind="human", decision="corrected"))
        v = versions.publish(s, ModelVersion(backbone="b", weights="w", mode="head", classes=["shirt", "shoes"]))
        versions.add_predictions(s, [Prediction(item_id=a, model_version_id=v.id, pred="shoes", probs=[0.2, 0.8],
                                                row=0)])
        return v.id

    vid = db.write(engine, setup)
    before = {t: _raw(engine, t) for t in ("label", "modelversion", "prediction")}
    db.write(engine, lambda s: aliases.add(s, "shoes", "footwear"))
    db.write(engine, lambda s: aliases.add(s, "footwear", "boots"))  # a rename of a rename follows the chain
    db.write(engine, lambda s: versions.publish(s, ModelVersion(backbone="b", weights="w", mode="head",
                                                                classes=["shirt", "shoes"])))
    # Someone adds a new class "shoes" later: its labels are not the old ones and keep their name.
    db.write(engine, lambda s: labels.append(s, Label(item_id=b, annotator="bob", label="shoes", kind="human",
                                                      decision="corrected")))
    with db.session(engine) as s:
        cur = labels.current(s)
        assert (cur[a].label, cur[a].imported, cur[a].source) == ("boots", "boots", "single")
        assert labels.for_items(s, [a])[a][1].suggestion == "boots"
        assert labels.human_ratings(s) == {a: {"ann": "boots"}, b: {"ann": "shirt", "bob": "shoes"}}
        assert labels.uses_by_class(s) == {"boots": 2, "shirt": 1, "shoes": 1}
        assert versions.get(s, vid).classes == ["shirt", "boots"]
        assert versions.get(s, vid, as_stored=True).classes == ["shirt", "shoes"]
        assert versions.all_versions(s)[-1].classes == ["shirt", "shoes"]  # published after the renames
        assert versions.predictions(s, vid)[a].pred == "boots"
        # A snapshot as it was before the renames reads the old names.
        _, old = labels.snapshot(s, upto_label_id=3, upto_alias_id=0)
        assert old[a].label == "shoes"
    with db.session(engine, write=True) as s:  # reading inside a write unit writes nothing back
        labels.current(s)
        versions.all_versions(s)
        versions.predictions(s, vid)
    after = {t: _raw(engine, t) for t in ("label", "modelversion", "prediction")}
    assert after["label"][:3] == before["label"] and after["prediction"] == before["prediction"]
    assert after["modelversion"][:1] == before["modelversion"]


def test_resolve_class_applies_only_to_rows_stored_before() -> None:
    class A:
        def __init__(self, old: str, new: str, label_upto: int, version_upto: int) -> None:
            self.old, self.new, self.label_upto, self.version_upto = old, new, label_upto, version_upto
            self.field = "category"

    rules = [A("a", "b", 10, 2), A("b", "a", 20, 3)]  # renamed there and back
    assert resolve_class("a", rules, label_id=5) == "a"
    assert resolve_class("b", rules, label_id=15) == "a"
    assert resolve_class("a", rules, label_id=25) == "a"
    assert resolve_class("b", rules, version_id=3) == "a" and resolve_class("b", rules, version_id=4) == "b"
    assert resolve_class("a", rules[:1], label_id=5) == "b" and resolve_class("a", rules[:1], label_id=11) == "a"
    assert resolve_class(None, rules, label_id=1) is None
    assert resolve_class("a", rules[:1], label_id=5, field="colour") == "a"  # another field's class


def test_aliases_are_per_field(engine, add_items) -> None:  # noqa: ANN001
    """A class called "navy" in two fields (a colour, and a category of a catalogue that has
    one): renaming the colour leaves the category alone, in labels, heads and predictions."""
    a, b = add_items(engine, 2)

    def setup(s):  # noqa: ANN001, ANN202
        for item, field in ((a, "colour"), (b, "category")):
            labels.append(s, Label(item_id=item, field=field, annotator="ann", label="navy", kind="human",
                                   decision="accepted", suggestion="navy"))
        v = versions.publish(s, ModelVersion(backbone="b", weights="w", mode="head", classes=["navy", "shirt"],
                                             artifacts={"fields": {"colour": {"classes": ["black", "navy"],
                                                                              "head": "head-colour.npz"}}}))
        versions.add_predictions(s, [Prediction(item_id=a, model_version_id=v.id, row=0, pred="navy",
                                                probs=[0.9, 0.1], fields={"colour": {"pred": "navy",
                                                                                     "probs": [0.3, 0.7]}})])
        return v.id

    vid = db.write(engine, setup)
    db.write(engine, lambda s: aliases.add(s, "navy", "blue", field="colour"))
    with db.session(engine) as s:
        assert [x.field for x in aliases.all_aliases(s)] == ["colour"] and aliases.all_aliases(s, "category") == []
        got = labels.for_items(s, [a, b])
        assert (got[a][0].label, got[a][0].suggestion) == ("blue", "blue")
        assert got[b][0].label == "navy"
        assert labels.current(s, field="colour")[a].label == "blue" and labels.current(s)[b].label == "navy"
        assert labels.uses_by_class(s, "colour") == {"blue": 1} and labels.uses_by_class(s) == {"navy": 1}
        assert labels.human_ratings(s, "colour") == {a: {"ann": "blue"}}
        version = versions.get(s, vid)
        assert version.classes == ["navy", "shirt"]
        assert version.artifacts["fields"]["colour"] == {"classes": ["black", "blue"], "head": "head-colour.npz"}
        pred = versions.predictions(s, vid)[a]
        assert pred.pred == "navy" and pred.fields["colour"] == {"pred": "blue", "probs": [0.3, 0.7]}
    with db.session(engine) as s:  # nothing was written back
        assert versions.get(s, vid, as_stored=True).artifacts["fields"]["colour"]["classes"] == ["black", "navy"]
        assert s.get(Prediction, pred.id).fields["colour"]["pred"] == "navy"
