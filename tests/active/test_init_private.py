"""`active init` keeps secrets out of sight: the database file is the owner's alone, and a
password in --db is never printed."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from active.cli import main


def test_the_database_file_is_private(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path / "p"), "--classes", "a,b"]) == 0
    assert stat.S_IMODE((tmp_path / "p" / "active.db").stat().st_mode) == 0o600


@pytest.mark.postgres
@pytest.mark.parametrize("as_json", [False, True])
def test_init_never_prints_the_database_password(tmp_path: Path, pg_url: str, capsys, as_json: bool) -> None:  # noqa: ANN001
    import sqlalchemy as sa

    # The throwaway server trusts loopback, so the password is accepted whatever it is.
    url = sa.make_url(pg_url).set(password="hunter2-secret").render_as_string(hide_password=False)
    assert main([*(["--json"] if as_json else []), "init", str(tmp_path / "p"), "--db", url]) == 0
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err
    assert ":***@" in (json.loads(out.out)["db"] if as_json else out.out)
