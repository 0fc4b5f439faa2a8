"""Benchmark `active export` on the shared clothing dataset (3,781 images).

Builds a temp project (train + validation as pool, test as holdout, their folder names as
imported labels), adds seeded human labels to a fraction of the items (so every provenance source
occurs), then times exports as imagefolder and csv (and any other --formats). Each format's
wall time and items/s are printed next to a floor measured in the same run, and the ratio:

- image formats: the I/O floor = hash every original + hard-link (or copy) it, nothing else;
- table formats: the store floor = reading the label snapshot (`storage.labels.snapshot`).

    TORCH_HOME=/work/shared/torch timeout 900 /work/main/.venv/bin/python bench/export.py
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from active import export as ex  # noqa: E402
from active.cli import main  # noqa: E402
from active.project import Project  # noqa: E402
from storage import db, labels  # noqa: E402
from storage.tables import Item, Label  # noqa: E402

DATASET = REPO.parent / "shared" / "datasets" / "clothing-small"
HUMANS = ("ann", "ben", "cleo")


def build(root: Path, dataset: Path, human_fraction: float, seed: int) -> Project:
    t = time.perf_counter()
    assert main(["init", str(root), "--backbone", "mobilenet_v2", "--classes",
                 ",".join(sorted(p.name for p in (dataset / "train").iterdir() if p.is_dir()))]) == 0
    for split, store_split in (("train", "pool"), ("validation", "pool"), ("test", "holdout")):
        assert main(["--project", str(root), "import", str(dataset / split), "--split", store_split,
                     "--no-progress"]) == 0
    project = Project.load(root)
    rng = random.Random(seed)
    classes = project.config.classes

    def tx(s) -> int:  # noqa: ANN001
        ids = list(s.exec(db.select(Item.id).order_by(Item.id)))
        chosen = rng.sample(ids, int(len(ids) * human_fraction))
        for item_id in chosen:
            for who in rng.sample(HUMANS, rng.choice((1, 1, 2, 3))):
                labels.append(s, Label(item_id=item_id, annotator=who, label=rng.choice(classes), kind="human",
                                       decision="corrected"))
        return len(chosen)

    n = db.write(project.engine, tx)
    print(f"built project: {time.perf_counter() - t:.1f} s (import of the 3 splits + human labels on {n} items)")
    return project


def io_floor(project: Project, dest: Path, *, copy: bool) -> tuple[float, int, str]:
    """Hash and link/copy every labelled item's file into ``dest``: what an image export must do."""
    with db.session(project.engine) as s:
        paths = [i.path for i in s.exec(db.select(Item).order_by(Item.id))]
    dest.mkdir(parents=True)
    how = "copy"
    t = time.perf_counter()
    for n, path in enumerate(paths):
        hashlib.sha256(Path(path).read_bytes()).hexdigest()
        target = dest / f"{n}{Path(path).suffix}"
        if not copy:
            try:
                os.link(path, target)
                how = "link"
                continue
            except OSError:
                pass
        shutil.copyfile(path, target)
    return time.perf_counter() - t, len(paths), how


def store_floor(project: Project) -> float:
    t = time.perf_counter()
    with db.session(project.engine) as s:
        labels.snapshot(s)
    return time.perf_counter() - t


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--workdir", type=Path, help="where the temp project goes (default: a temp folder)")
    parser.add_argument("--formats", default="imagefolder,csv")
    parser.add_argument("--human-fraction", type=float, default=0.1)
    parser.add_argument("--copy", action="store_true", help="copy instead of hard-linking images")
    parser.add_argument("--repeat", type=int, default=1, help="exports per format (the best is reported too)")
    args = parser.parse_args()
    if not args.dataset.is_dir():
        sys.exit(f"{args.dataset}: not found (the shared dataset must lie beside the checkout)")
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.workdir))
    try:
        project = build(work / "proj", args.dataset, args.human_fraction, seed=0)
        print(f"{'format':<12} {'items':>6} {'wall s':>8} {'items/s':>9}   {'floor':<26} {'floor s':>8} "
              f"{'items/s':>9} {'ratio':>6}")
        for fmt in args.formats.split(","):
            times = []
            for r in range(args.repeat):
                out = work / "exports" / f"{fmt}-{r}"
                t = time.perf_counter()
                manifest = ex.export(project, ex.ExportOptions(format=fmt, out=out, copy=args.copy, progress=False))
                times.append(time.perf_counter() - t)
            n = manifest["counts"]["exported"]
            if fmt in ex.IMAGE_FORMATS:
                floor_s, n_floor, how = io_floor(project, work / f"floor-{fmt}", copy=args.copy)
                floor_name = f"hash+{how} {n_floor} files"
            else:
                floor_s, n_floor, floor_name = store_floor(project), n, "read label snapshot"
            wall = times[-1] if args.repeat == 1 else min(times)
            print(f"{fmt:<12} {n:>6} {wall:>8.2f} {n / wall:>9.0f}   {floor_name:<26} {floor_s:>8.2f} "
                  f"{n_floor / floor_s:>9.0f} {wall / floor_s:>6.2f}"
                  + (f"   (all runs: {', '.join(f'{x:.2f}' for x in times)} s)" if args.repeat > 1 else ""))
            print(f"{'':<12} files: {manifest['files'] or '-'}; excluded: {manifest['counts']['excluded'] or '-'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
