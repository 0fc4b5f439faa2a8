"""Schema 6 -> 7 (the index the hand-out walks the queue by): a project with an open round opens
after the upgrade with its queue, labels and leases intact, the index in place, and hands out
the same next item as before."""

from __future__ import annotations

import sqlalchemy as sa

from storage import db, items, labels, work
from storage.enums import Decision, Kind
from storage.tables import QUEUE_ORDER_INDEX, SCHEMA_VERSION, Item, Label, Meta


def make_v6(url: str) -> list[int]:
    """A schema-6 database (no queue order index): 5 items queued in one round, the first labelled."""
    eng = db.make_engine(url)
    db.create_schema(eng)

    def fill(s):  # noqa: ANN001, ANN202
        ids = [r.id for r in items.add(s, [Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8,
                                                mode="RGB") for k in range(5)])]
        work.open_round(s, strategy="margin", model_version_id=None, item_ids=ids[::-1],
                        scores=[0.1 * k for k in range(5)], score_name="margin")
        labels.append(s, Label(item_id=ids[-1], annotator="ann", label="shirt", kind=Kind.HUMAN,
                               decision=Decision.ACCEPTED))
        return ids

    ids = db.write(eng, fill)
    with eng.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {QUEUE_ORDER_INDEX.name}"))
        conn.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value="6"))
    eng.dispose()
    return ids


def test_a_project_with_an_open_round_opens_after_the_upgrade(store_url: str) -> None:
    ids = make_v6(store_url)
    eng = db.open_engine(store_url)
    with db.session(eng) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        names = {i["name"] for i in sa.inspect(s.connection()).get_indexes("queueentry")}
        assert QUEUE_ORDER_INDEX.name in names
        assert sum(len(g) for g in labels.for_items(s).values()) == 1
    # Queued in reverse id order, the first one labelled: the next is the second queued.
    got = db.write(eng, lambda s: work.lease_next(s, "bob"))
    assert got is not None and got.item_id == ids[-2] and got.priority == 1
    eng.dispose()
