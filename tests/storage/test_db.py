"""Engine factory, schema-version check, and the retrying write unit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import StaticPool
from sqlmodel import select

from storage import db, items
from storage.tables import APP_ID, SCHEMA_VERSION, Item, Label, Meta


def _meta(engine) -> dict[str, str]:  # noqa: ANN001
    with db.session(engine) as s:
        return {m.key: m.value for m in s.exec(select(Meta))}


def _tables(engine) -> set[str]:  # noqa: ANN001
    return set(sa.inspect(engine).get_table_names())


def test_new_database_is_stamped_and_opens(engine) -> None:  # noqa: ANN001
    assert _meta(engine) == {"app": APP_ID, "schema_version": str(SCHEMA_VERSION)}
    reopened = db.open_engine(engine.url.render_as_string(hide_password=False))
    assert {"item", "label", "lease", "modelversion"} <= _tables(reopened)
    reopened.dispose()
    db.create_schema(engine)  # a second create on our own database is a no-op
    assert _meta(engine)["schema_version"] == str(SCHEMA_VERSION)


def test_old_schema_version_is_refused_and_left_alone(engine) -> None:  # noqa: ANN001
    def downgrade(s) -> None:  # noqa: ANN001
        s.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value="0"))

    db.write(engine, downgrade)
    before = _tables(engine)
    url = engine.url.render_as_string(hide_password=False)
    with pytest.raises(db.SchemaMismatchError, match=rf"schema version 0 .* needs {SCHEMA_VERSION}.*nothing was changed"):
        db.open_engine(url)
    with pytest.raises(db.SchemaMismatchError):
        db.create_schema(engine)  # init on an old database must not "upgrade" it silently
    assert _meta(engine)["schema_version"] == "0"
    assert _tables(engine) == before


def test_schema_1_database_is_upgraded_in_place(engine, add_items) -> None:  # noqa: ANN001
    # A database made by the schema-1 release: no classalias table, stamped 1, with labels in it.
    (item,) = add_items(engine, 1)
    db.write(engine, lambda s: s.add(Label(item_id=item, annotator="ann", label="dress", kind="human",
                                           decision="accepted")))
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE classalias"))
        conn.execute(sa.text("DROP INDEX ix_item_unreadable"))
        conn.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value="1"))
    with db.session(engine) as s:
        rows_before = [r.model_dump() for r in s.exec(select(Label))]
    reopened = db.open_engine(engine.url.render_as_string(hide_password=False))
    assert "classalias" in _tables(reopened) and _meta(reopened)["schema_version"] == str(SCHEMA_VERSION)
    assert "ix_item_unreadable" in {i["name"] for i in sa.inspect(reopened).get_indexes("item")}
    with db.session(reopened) as s:
        assert [r.model_dump() for r in s.exec(select(Label))] == rows_before
    db.open_engine(engine.url.render_as_string(hide_password=False)).dispose()  # a second open: nothing to do
    reopened.dispose()


def test_foreign_database_is_refused_and_left_alone(store_url: str) -> None:
    eng = db.make_engine(store_url)
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER)"))
        conn.execute(sa.text("INSERT INTO invoices VALUES (1, 42)"))
    with pytest.raises(db.SchemaMismatchError, match="not an active-labeler database"):
        db.open_engine(store_url)
    with pytest.raises(db.StoreError, match="already holds other tables.*invoices"):
        db.create_schema(eng)
    assert _tables(eng) == {"invoices"}
    with eng.connect() as conn:
        assert conn.execute(sa.text("SELECT total FROM invoices")).scalar_one() == 42
    eng.dispose()


def test_meta_table_of_another_app_is_refused(store_url: str) -> None:
    eng = db.make_engine(store_url)
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR)"))
        conn.execute(sa.text("INSERT INTO meta VALUES ('app', 'someone-else')"))
    with pytest.raises(db.SchemaMismatchError, match="not an active-labeler database"):
        db.open_engine(store_url)
    eng.dispose()


def test_empty_database_is_refused_and_not_created(store_url: str) -> None:
    with pytest.raises(db.SchemaMismatchError, match=r"an empty database \(run `active init` first\)"):
        db.open_engine(store_url)
    eng = db.make_engine(store_url)
    assert _tables(eng) == set()
    eng.dispose()


def test_sqlite_file_pragmas(tmp_path: Path) -> None:
    eng = db.make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    db.create_schema(eng)
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    eng.dispose()


def test_foreign_keys_are_enforced(engine) -> None:  # noqa: ANN001
    with pytest.raises(IntegrityError):
        db.write(engine, lambda s: s.add(Label(item_id=999_999, annotator="a", label="x", kind="human",
                                               decision="corrected")))


def test_memory_store_is_one_shared_database(memory_engine) -> None:  # noqa: ANN001
    assert isinstance(memory_engine.pool, StaticPool)
    db.write(memory_engine, lambda s: items.add(s, [Item(sha256="a" * 64, path="/a", width=1, height=1,
                                                         mode="RGB")]))
    with db.session(memory_engine) as s1, db.session(memory_engine) as s2:
        assert len(items.ids(s1)) == len(items.ids(s2)) == 1


def test_url_other_than_sqlite_is_passed_unchanged() -> None:
    url = "postgresql+psycopg://u:p@db.example:5433/labels"
    eng = db.make_engine(url)  # creating an engine does not connect
    assert eng.url.render_as_string(hide_password=False) == url
    assert eng.dialect.name == "postgresql"


# --------------------------------------------------------------------------- db.write


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked"))


def test_write_retries_a_busy_store_then_succeeds(memory_engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(db.time, "sleep", lambda _s: None)
    calls = []

    def fn(s) -> int:  # noqa: ANN001
        calls.append(1)
        items.add(s, [Item(sha256=f"{len(calls):064x}", path=f"/{len(calls)}", width=1, height=1, mode="RGB")])
        if len(calls) < 3:
            raise _locked()
        return 7

    assert db.write(memory_engine, fn) == 7
    assert len(calls) == 3
    with db.session(memory_engine) as s:  # the two failed attempts left nothing behind
        assert [i.path for i in s.exec(select(Item))] == ["/3"]


def test_write_gives_up_with_a_store_error(memory_engine, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(db.time, "sleep", lambda _s: None)
    calls = []

    def fn(_s) -> None:  # noqa: ANN001
        calls.append(1)
        raise _locked()

    with pytest.raises(db.StoreError, match="stayed busy"):
        db.write(memory_engine, fn)
    assert len(calls) == db.WRITE_RETRIES + 1


def test_write_does_not_retry_other_errors(memory_engine) -> None:  # noqa: ANN001
    calls = []

    def fn(s) -> None:  # noqa: ANN001
        calls.append(1)
        items.add(s, [Item(sha256="b" * 64, path="/b", width=1, height=1, mode="RGB")])
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        db.write(memory_engine, fn)
    assert len(calls) == 1
    with db.session(memory_engine) as s:
        assert items.ids(s) == []


def test_unknown_split_is_refused(memory_engine) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unknown split 'train'"):
        db.write(memory_engine, lambda s: items.add(s, [Item(sha256="c" * 64, path="/c", width=1, height=1,
                                                             mode="RGB", split="train")]))


def test_a_writer_stuck_in_this_process_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    eng = db.make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    db.create_schema(eng)
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    holding, release = threading.Event(), threading.Event()

    def stuck() -> None:
        with db.session(eng, write=True):
            holding.set()
            release.wait(10)

    t = threading.Thread(target=stuck)
    t.start()
    try:
        assert holding.wait(10)
        with pytest.raises(db.StoreError, match="stayed busy"):
            db.write(eng, lambda s: s.add(Meta(key="x", value="y")))
    finally:
        release.set()
        t.join()
    db.write(eng, lambda s: s.add(Meta(key="x", value="y")))  # the lock is free again: written
    assert _meta(eng)["x"] == "y"
    eng.dispose()
