"""Import throughput: every shared image into a fresh project, next to the raw hash+decode
throughput of the same files in the same run (what the import cannot beat), and the ratio.

    python bench/import.py [--source ../shared/datasets/clothing-small] [--db URL]

The page cache is warmed first so both passes read from memory; the raw pass uses the same
worker count and the same checks (`read_image_bytes`, sha256, `inspect_bytes`) as the importer.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from active.importer import IMPORT_WORKERS, Candidate, import_candidates, scan_folder  # noqa: E402
from active.project import Config, Project  # noqa: E402
from models.images import ImageError, inspect_bytes, read_image_bytes  # noqa: E402
from storage.db import create_schema, make_engine  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "datasets" / "clothing-small"
# Folder -> split, as `make run` imports the sample project.
SPLITS = {"train": "pool", "validation": "pool", "test": "holdout"}


def gather(source: Path) -> list[tuple[str, list[Candidate]]]:
    """(split, candidates) per sub-folder of ``source`` (or the folder itself when it has none)."""
    parts = [(SPLITS[d], source / d) for d in SPLITS if (source / d).is_dir()] or [("pool", source)]
    return [(split, scan_folder(folder)[0]) for split, folder in parts]


def raw_check(path: Path) -> bool:
    """What the importer does to each file, without the store: read, hash, decode."""
    try:
        data = read_image_bytes(path)
        hashlib.sha256(data).hexdigest()
        inspect_bytes(data)
    except ImageError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--db", help="database URL for the fresh project (default: SQLite in a temp folder)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"{args.source}: not found (the shared images live in ../shared/datasets/clothing-small)")

    parts = gather(args.source)
    paths = [c.path for _, cands in parts for c in cands]
    n = len(paths)
    warm_bytes = sum(len(p.read_bytes()) for p in paths)  # page cache: both passes read from memory
    print(f"{n} files, {warm_bytes / 2**20:.0f} MiB, {IMPORT_WORKERS} workers, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(IMPORT_WORKERS) as pool:
        ok = sum(pool.map(raw_check, paths))
    raw_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="active-bench-") as tmp:
        project = Project(Path(tmp), Config(db=args.db or "sqlite:///active.db"))
        create_schema(make_engine(project.db_url))
        project.save()
        t0 = time.perf_counter()
        added = 0
        for split, cands in parts:
            report = import_candidates(project, cands, split=split, progress=True)
            added += report.added
        import_s = time.perf_counter() - t0
        project.engine.dispose()

    raw_rate, import_rate = n / raw_s, n / import_s
    print(f"raw hash+decode: {ok}/{n} readable in {raw_s:.2f} s = {raw_rate:.0f} images/s")
    print(f"import:          {added} items added in {import_s:.2f} s = {import_rate:.0f} images/s")
    print(f"import / raw = {import_rate / raw_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
