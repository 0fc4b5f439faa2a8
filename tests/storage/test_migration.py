"""Schema 2 -> 3 (users can be disabled; a password change ends sessions): an existing database,
of version 1 or 2, is upgraded in place when it is opened, its users and their passwords kept. New SQLite files are
private to their owner."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from storage import db, users
from storage.tables import SCHEMA_VERSION, Meta, User

# The user table as schema versions 1 and 2 made it.
V1 = sa.MetaData()
sa.Table("user", V1,
         sa.Column("name", sa.String(128), primary_key=True),
         sa.Column("role", sa.String(16), nullable=False),
         sa.Column("salt", sa.LargeBinary, nullable=False),
         sa.Column("password_hash", sa.LargeBinary, nullable=False),
         sa.Column("created_at", sa.DateTime, nullable=False))


def make_old(url: str, version: int) -> None:
    """A database as ``version`` (1 or 2) left it, with one user whose password is 'old-password'."""
    eng = db.make_engine(url)
    db.create_schema(eng)
    salt = b"s" * users.SALT_BYTES
    with eng.begin() as conn:
        conn.execute(sa.text('DROP TABLE "user"'))
        if version == 1:
            conn.execute(sa.text("DROP TABLE classalias"))
        V1.create_all(conn)
        conn.execute(V1.tables["user"].insert().values(
            name="ann", role="reviewer", salt=salt, password_hash=users.hash_password("old-password", salt),
            created_at=sa.func.now()))
        conn.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value=str(version)))
    eng.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_are_upgraded_in_place(store_url: str, version: int) -> None:
    make_old(store_url, version)
    eng = db.open_engine(store_url)
    with db.session(eng) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        ann = users.verify(s, "ann", "old-password")
        assert ann is not None and ann.role == "reviewer" and not ann.disabled and ann.generation == 0
        assert users.session_generations(s) == {"ann": 0}
    # The new columns work like a new database's.
    db.write(eng, lambda s: users.set_disabled(s, "ann", True))
    db.write(eng, lambda s: users.add(s, "bob", "bob-password"))
    with db.session(eng) as s:
        assert users.verify(s, "ann", "old-password") is None
        assert [u.name for u in s.exec(select(User).where(User.disabled == False))] == ["bob"]  # noqa: E712
    eng.dispose()
    again = db.open_engine(store_url)  # opening an upgraded database changes nothing more
    with db.session(again) as s:
        assert s.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
    again.dispose()


def test_new_sqlite_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "active.db"
    eng = db.make_engine(f"sqlite:///{path}")
    db.create_schema(eng)
    db.write(eng, lambda s: users.add(s, "ann", "ann-password"))
    for f in (path, path.with_name("active.db-wal"), path.with_name("active.db-shm")):
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    eng.dispose()
