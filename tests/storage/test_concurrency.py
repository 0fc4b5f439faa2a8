"""Concurrent writers on a real store (SQLite file in WAL mode, and PostgreSQL when available):
no lost writes, no "database is locked" escaping `storage.db.write`, no item leased twice."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import Counter

from sqlalchemy import func
from sqlmodel import select

from storage import db, labels, work
from storage.tables import Label

WRITERS = 4  # processes
WRITES_EACH = 40
ANNOTATORS = 8  # threads
QUEUED = 48


def _writer(url: str, who: str, item_ids: list[int], errors) -> None:  # noqa: ANN001
    """Child process: its own engine, one short write transaction per label (what a submit does)."""
    engine = db.make_engine(url)
    try:
        for n in range(WRITES_EACH):
            item = item_ids[n % len(item_ids)]

            def tx(s, n=n, item=item) -> None:  # noqa: ANN001
                labels.append(s, Label(item_id=item, annotator=who, label=f"c{n}", kind="human",
                                       decision="corrected"))
                labels.current(s, [item])  # read inside the write, as the labeller does

            db.write(engine, tx)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        errors.put(f"{who}: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()


def test_concurrent_processes_lose_no_writes(engine, store_url: str, add_items) -> None:  # noqa: ANN001
    item_ids = add_items(engine, 10)
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store_url, f"w{k}", item_ids, errors)) for k in range(WRITERS)]
    engine.dispose()  # no pooled connection crosses the fork
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    with db.session(engine) as s:
        rows = s.exec(select(Label.annotator, Label.label)).all()
    assert len(rows) == WRITERS * WRITES_EACH
    assert Counter(a for a, _ in rows) == {f"w{k}": WRITES_EACH for k in range(WRITERS)}
    assert len(set(rows)) == len(rows)  # each (writer, n) exactly once


def test_concurrent_annotators_never_share_an_item(engine, add_items) -> None:  # noqa: ANN001
    ids = add_items(engine, QUEUED)
    db.write(engine, lambda s: work.open_round(s, strategy="random", model_version_id=None, item_ids=ids,
                                               scores=[0.0] * len(ids), score_name="random"))
    served: list[tuple[str, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(ANNOTATORS)

    def annotate(who: str) -> None:
        try:
            start.wait()
            while True:
                got = db.write(engine, lambda s: work.lease_next(s, who))
                if got is None:
                    return
                with lock:
                    served.append((who, got.item_id))

                def submit(s, item=got.item_id) -> None:  # noqa: ANN001
                    labels.append(s, Label(item_id=item, annotator=who, label="dress", kind="human",
                                           decision="accepted"))
                    work.release(s, who, item)

                db.write(engine, submit)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(f"{who}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=annotate, args=(f"a{k}",)) for k in range(ANNOTATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    counts = Counter(item for _, item in served)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}, f"items served twice: {[i for i, n in counts.items() if n > 1]}"
    with db.session(engine) as s:
        assert s.exec(select(func.count()).select_from(Label)).one() == QUEUED
        assert work.active_leases(s) == []
