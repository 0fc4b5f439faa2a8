"""Crash safety of `active import`: SIGKILL at a random moment after the first committed batch
leaves whole batches only, and re-running finishes the work with no duplicates."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

from killing import sigkill_when
from sqlalchemy import text

from active.importer import scan_folder
from storage import db
from tests.conftest import REPO, draw_image

N_IMAGES = 320
BATCH = 8  # small batches so a kill lands between (or inside) many transactions
# Runs the real CLI with smaller batches and a slower check, so a random kill lands mid-import.
RUNNER = f"""
import sys, time
import active.importer as imp
imp.BATCH_SIZE = {BATCH}
_check = imp._check
def slow(c):
    time.sleep(0.006)
    return _check(c)
imp._check = slow
from active.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _count(db_file: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM item").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_during_import_leaves_whole_batches(cli, project_dir: Path, tmp_path: Path) -> None:  # noqa: ANN001
    photos = tmp_path / "many"
    for n in range(N_IMAGES):
        draw_image(photos / ["dress", "shirt", "shoes"][n % 3] / f"{n:04d}.png", n % 3, seed=n, size=(24, 20))
    seed = int.from_bytes(os.urandom(4), "little")
    delay = random.Random(seed).uniform(0.0, 0.4)
    db_file = project_dir / "active.db"
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, "--project", str(project_dir), "import", str(photos),
                             "--no-progress"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    alive = sigkill_when(proc, lambda: _count(db_file) >= BATCH, delay=delay, timeout=60)
    assert alive, f"the import finished before the kill (seed {seed}); stderr: {proc.stderr.read()[-500:]}"

    engine = db.open_engine(f"sqlite:///{db_file}")  # the store opens and passes the schema check
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
        n_items = conn.execute(text("SELECT count(*) FROM item")).scalar()
        per_item = conn.execute(text("SELECT count(*) FROM label GROUP BY item_id")).scalars().all()
        paths = conn.execute(text("SELECT path FROM item ORDER BY id")).scalars().all()
    engine.dispose()
    assert 0 < n_items < N_IMAGES, f"seed {seed}"
    assert n_items % BATCH == 0, f"a partial batch is visible: {n_items} items (seed {seed})"
    assert per_item == [1] * n_items  # each committed item came with its imported label
    order = [str(c.path) for c in scan_folder(photos)[0]]
    assert paths == order[:n_items]  # whole batches, in the order they were committed

    again = cli("--project", project_dir, "import", photos, "--json", "--no-progress").data
    assert (again["added"], again["already_imported"], again["skipped"]) == (N_IMAGES - n_items, n_items, [])
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sha256), count(DISTINCT path) FROM item").fetchone() \
            == (N_IMAGES, N_IMAGES, N_IMAGES)
        assert conn.execute("SELECT count(*), count(DISTINCT item_id) FROM label").fetchone() == (N_IMAGES, N_IMAGES)
