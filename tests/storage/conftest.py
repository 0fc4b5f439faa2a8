"""Store fixtures: every storage test runs on a SQLite file (WAL) and, when ACTIVE_TEST_PG_URL
names a reachable server, on a fresh PostgreSQL database too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from storage import db, items
from storage.tables import Item


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    """A schema-stamped store on ``store_url``."""
    eng = db.make_engine(store_url)
    db.create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def memory_engine() -> Iterator[Engine]:
    """The store on ``sqlite://`` (one shared connection through StaticPool)."""
    eng = db.make_engine("sqlite://")
    db.create_schema(eng)
    yield eng
    eng.dispose()


def _add_items(engine: Engine, n: int, *, split: str = "pool", start: int = 0) -> list[int]:
    def tx(s) -> list[int]:  # noqa: ANN001
        rows = [Item(sha256=f"{start + i:064x}", path=f"/img/{start + i}.jpg", width=8, height=8, mode="RGB",
                     split=split) for i in range(n)]
        return [r.id for r in items.add(s, rows)]

    return db.write(engine, tx)


@pytest.fixture
def add_items() -> Callable[..., list[int]]:
    """``add_items(engine, n, *, split="pool", start=0) -> item ids``: rows with fake hashes."""
    return _add_items
