"""Schema 3 -> 4 (label fields): a single-field project made before fields existed opens after the
upgrade with every label, dispute, prediction and model version intact, all of them about the
default field, and takes labels of a new field at once."""

from __future__ import annotations

import sqlalchemy as sa

from storage import db, disputes, labels, meaning, versions
from storage.enums import Decision, DisputeReason, Kind
from storage.fields import DEFAULT_FIELD, field_prediction
from storage.tables import SCHEMA_VERSION, Dispute, Item, Label, Meta, ModelVersion, Prediction


def make_v3(url: str) -> dict:
    """A schema-3 database (no field columns) holding items, labels of every kind with an undo,
    a model version with predictions and an open dispute. Returns what it wrote."""
    eng = db.make_engine(url)
    db.create_schema(eng)

    def fill(s):  # noqa: ANN001, ANN202
        ids = []
        for k in range(3):
            item = Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8, mode="RGB")
            s.add(item)
            s.flush()
            ids.append(item.id)
        s.add(Label(item_id=ids[0], annotator="import", label="dress", kind=Kind.IMPORTED, decision=Decision.GIVEN))
        human = Label(item_id=ids[0], annotator="ann", label="shirt", kind=Kind.HUMAN, decision=Decision.CORRECTED)
        s.add(human)
        s.flush()
        s.add(Label(item_id=ids[1], annotator="ann", label="dress", kind=Kind.HUMAN, decision=Decision.ACCEPTED))
        s.add(Label(item_id=ids[2], annotator="ann", label="dress", kind=Kind.HUMAN, decision=Decision.ACCEPTED))
        s.flush()
        undone = s.exec(sa.select(Label).where(Label.item_id == ids[2])).scalar_one()
        s.add(Label(item_id=ids[2], annotator="ann", kind=Kind.HUMAN, decision=Decision.UNDO, undoes_id=undone.id))
        version = ModelVersion(backbone="mobilenet_v2", weights="w", mode="head", classes=["dress", "shirt"],
                               metrics={"holdout": {"accuracy": 0.5}})
        s.add(version)
        s.flush()
        for k, i in enumerate(ids):
            s.add(Prediction(item_id=i, model_version_id=version.id, row=k, pred="dress", confidence=0.7,
                             margin=0.4, entropy=0.6, probs=[0.7, 0.3]))
        s.add(Dispute(item_id=ids[0], reason=DisputeReason.IMPORTED_LABEL_SUSPECT, score=1.0, detail={"given": "dress"}))
        return {"ids": ids, "version": version.id}

    wrote = db.write(eng, fill)
    with eng.begin() as conn:
        for table, column in (("label", "field"), ("label", "source"), ("dispute", "field"), ("prediction", "fields"),
                              ("classalias", "field")):  # the last one added by a later step (5 -> 6)
            conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        conn.execute(sa.text("DROP TABLE job"))  # added by a later step (4 -> 5)
        conn.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value="3"))
    eng.dispose()
    return wrote


def test_a_single_field_project_opens_after_the_upgrade(store_url: str) -> None:
    wrote = make_v3(store_url)
    ids, version_id = wrote["ids"], wrote["version"]
    eng = db.open_engine(store_url)
    with db.session(eng) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        rows = labels.for_items(s, ids)
        assert sum(len(g) for g in rows.values()) == 5
        assert {(r.field, r.source) for g in rows.values() for r in g} == {(DEFAULT_FIELD, None)}
        cur = labels.current(s, ids)
        assert (cur[ids[0]].label, cur[ids[0]].imported, cur[ids[1]].label) == ("shirt", "dress", "dress")
        assert ids[2] not in cur  # the undone label still counts nowhere
        assert labels.count_labelled(s) == 2
        version = versions.get(s, version_id)
        assert version.classes == ["dress", "shirt"] and version.metrics == {"holdout": {"accuracy": 0.5}}
        preds = versions.predictions(s, version_id)
        assert [field_prediction(preds[i]).probs for i in ids] == [[0.7, 0.3]] * 3
        assert all(preds[i].fields is None for i in ids)
        assert versions.covers_pool(s, version_id)
        (d,) = disputes.open_disputes(s)
        assert (d.item_id, d.field, d.detail) == (ids[0], DEFAULT_FIELD, {"given": "dress"})
    # A new field's labels go in beside the old ones and do not touch the default field's rules.
    db.write(eng, lambda s: labels.append(s, Label(item_id=ids[1], field="colour", annotator="ann", label="black",
                                                   kind=Kind.HUMAN, decision=Decision.ACCEPTED)))
    with db.session(eng) as s:
        group = labels.for_items(s, [ids[1]])[ids[1]]
        assert meaning.is_done(group, [DEFAULT_FIELD, "colour"])
        assert labels.count_labelled(s) == 2 and labels.count_labelled(s, "colour") == 1
    eng.dispose()
    again = db.open_engine(store_url)  # opening an upgraded database changes nothing more
    with db.session(again) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
    again.dispose()
