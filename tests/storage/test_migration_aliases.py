"""Schema 5 -> 6 (class aliases per label field): a project with renamed classes opens after the
upgrade with every label, alias and model version intact, its aliases the default field's, and
takes a rename of another field's class at once without touching the default field."""

from __future__ import annotations

import sqlalchemy as sa

from storage import aliases, db, items, labels, versions
from storage.enums import Decision, Kind
from storage.fields import DEFAULT_FIELD
from storage.tables import SCHEMA_VERSION, Item, Label, Meta, ModelVersion


def make_v5(url: str) -> dict:
    """A schema-5 database (aliases without a field) holding labels of two fields that use the
    same class name, a model version and a rename of the default field's class."""
    eng = db.make_engine(url)
    db.create_schema(eng)

    def fill(s):  # noqa: ANN001, ANN202
        ids = [r.id for r in items.add(s, [Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8,
                                                mode="RGB") for k in range(2)])]
        labels.append_many(s, [Label(item_id=i, field=f, annotator="ann", label="navy", kind=Kind.HUMAN,
                                     decision=Decision.ACCEPTED) for i, f in zip(ids, (DEFAULT_FIELD, "colour"), strict=True)])
        version = ModelVersion(backbone="mobilenet_v2", weights="w", mode="head", classes=["navy", "shirt"])
        s.add(version)
        s.flush()
        return {"ids": ids, "version": version.id}

    wrote = db.write(eng, fill)
    with eng.begin() as conn:
        conn.execute(sa.text("ALTER TABLE classalias DROP COLUMN field"))
        conn.execute(sa.text("INSERT INTO classalias (old, new, label_upto, version_upto, created_at) "
                             "VALUES ('navy', 'marine', 2, 1, CURRENT_TIMESTAMP)"))
        conn.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value="5"))
    eng.dispose()
    return wrote


def test_a_project_with_renamed_classes_opens_after_the_upgrade(store_url: str) -> None:
    wrote = make_v5(store_url)
    (cat_item, colour_item), version_id = wrote["ids"], wrote["version"]
    eng = db.open_engine(store_url)
    with db.session(eng) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        assert [(a.field, a.old, a.new) for a in aliases.all_aliases(s)] == [(DEFAULT_FIELD, "navy", "marine")]
        rows = labels.for_items(s)
        assert sum(len(g) for g in rows.values()) == 2
        # The old alias is the default field's (the only one `classes rename` took before): the
        # colour label of the same name keeps its name, as it did not before the upgrade.
        assert labels.current(s)[cat_item].label == "marine"
        assert labels.current(s, field="colour")[colour_item].label == "navy"
        assert versions.get(s, version_id).classes == ["marine", "shirt"]
    db.write(eng, lambda s: aliases.add(s, "navy", "blue", field="colour"))
    with db.session(eng) as s:
        assert labels.current(s, field="colour")[colour_item].label == "blue"
        assert labels.current(s)[cat_item].label == "marine"
        assert labels.uses_by_class(s) == {"marine": 1} and labels.uses_by_class(s, "colour") == {"blue": 1}
    eng.dispose()
    again = db.open_engine(store_url)  # opening an upgraded database changes nothing more
    with db.session(again) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
    again.dispose()
