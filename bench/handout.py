"""How long the hand-out takes to lease an annotator's next item with one and with two label fields.

`storage.work.lease_next` finds the next item in one INSERT ... SELECT whose condition is per
label field (`storage.meaning.sql_open_for`: not decided by this annotator, not settled by review,
fewer than ``overlap`` annotators done with it): with two fields it asks twice as many questions
per candidate and puts an item the annotator left midway first. This builds a synthetic store (no
photos, no torch) with an open round whose first items other annotators have partly labelled, and
times a lease + release per call for ``category`` alone and for ``category`` + ``colour``. Next to
them, the no-op figure of the same store: a call of an annotator who already holds a lease (the
transaction, the lock and the own-lease lookup, no candidate search).

    python bench/handout.py --items 20000 --queued 1000

Last line: ``one_field_ms=<n> two_fields_ms=<n> noop_ms=<n>``.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

import _common  # noqa: F401  (puts the repository on sys.path)

from storage import db, items, labels, work
from storage.tables import Item, Label

FIELDS = ("category", "colour")


def build(n: int, queued: int, folder: str):  # noqa: ANN201
    engine = db.make_engine(f"sqlite:///{folder}/bench.db")
    db.create_schema(engine)

    def fill(s):  # noqa: ANN001, ANN202
        added = items.add(s, [Item(sha256=hashlib.sha256(str(k).encode()).hexdigest(), path=f"/bench/{k}.jpg",
                                   width=1, height=1, mode="RGB") for k in range(n)])
        ids = [i.id for i in added[:queued]]
        work.open_round(s, strategy="margin", model_version_id=None, item_ids=ids, scores=[0.0] * len(ids),
                        score_name="margin")
        # The first third of the queue: category decided by others, colour for half of those.
        rows = []
        for k, i in enumerate(ids[: queued // 3]):
            rows.append(Label(item_id=i, field="category", annotator=f"a{k % 3}", label="dress", kind="human",
                              decision="accepted"))
            if k % 2 == 0:
                rows.append(Label(item_id=i, field="colour", annotator=f"a{k % 3}", label="black", kind="human",
                                  decision="accepted"))
        labels.append_many(s, rows)

    db.write(engine, fill)
    return engine


def per_call_ms(engine, fields: tuple[str, ...], repeat: int, *, keep: bool = False) -> float:  # noqa: ANN001
    def once(s):  # noqa: ANN001, ANN202
        got = work.lease_next(s, "bench", fields=fields, overlap=1)
        if not keep:
            work.release(s, "bench")
        return got

    db.write(engine, once)  # warm: statements built, pages cached
    started = time.perf_counter()
    for _ in range(repeat):
        db.write(engine, once)
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=20_000, help="pool items (default: 20000)")
    p.add_argument("--queued", type=int, default=1_000, help="items in the open round (default: 1000)")
    p.add_argument("--repeat", type=int, default=50, help="calls timed (default: 50)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        engine = build(args.items, args.queued, folder)
        one = per_call_ms(engine, FIELDS[:1], args.repeat)
        two = per_call_ms(engine, FIELDS, args.repeat)
        noop = per_call_ms(engine, FIELDS, args.repeat, keep=True)  # after the first call it holds a lease
        engine.dispose()
    print(f"{args.items} items, {args.queued} queued: lease + release {one:.2f} ms with one field, "
          f"{two:.2f} ms with two; an annotator keeping their lease {noop:.2f} ms")
    print(f"one_field_ms={one:.2f} two_fields_ms={two:.2f} noop_ms={noop:.2f}")


if __name__ == "__main__":
    main()
