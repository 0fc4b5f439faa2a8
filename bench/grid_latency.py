"""How long the Grid tab takes to show a page of 48 thumbnails, through the UI, at 3,781 and 50,000 items.

Runs `python -m labeler` as a separate server and drives it like the browser does
(`_common.PageClient`): open a page of one class (`/grid_open`), then, page after page, look at it for ``--think-ms``
and confirm it with one thumbnail marked (`/grid_confirm`, which records 47 labels, queues one item
and returns the next page of the class). The time measured is Enter -> next page on screen: the
confirm, the lease of the next page and its 48 thumbnails (new items on every page, made from the
original photos, by the server's prefetch while the annotator looked, or on demand). Next to it:
the no-op figure of the same run, decoding 48 such thumbnails in-process without server or database
(what a page costs without the prefetch). ``--think-ms 0`` measures without any time to prefetch.

The projects hold the real photos of ../shared/datasets/clothing-small (3,781: train + validation
as the pool, test as the holdout) and a head version whose predictions are synthetic (the imported
class with 0.55-0.99 confidence): showing a page runs no network, so no scoring is needed. The large
project adds item rows pointing at the same photos, to 50,000. ``--project DIR`` measures an
existing scored project instead (one figure).

    python bench/grid_latency.py
    python bench/grid_latency.py --project sample-project

Last line: ``p95_ms_3781=<n> p95_ms_50000=<n>`` (target <= 1000).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_DATA as DATASET
from _common import (
    LARGE_ITEMS,
    PageClient,
    import_clothing,
    labeller_server,
    latency_parser,
    small_and_large,
)

USER, PASSWORD = "bench", "bench-password"
FULL = 48  # thumbnails on a page (active.grid.PAGE_SIZE)


def build_small(root: Path) -> None:
    """3,781 photos and a head version with synthetic predictions that cover the pool."""
    from active.project import Project
    from storage import db, items, labels, versions
    from storage.tables import ModelVersion, Prediction

    import_clothing(root, DATASET)
    project = Project.load(root)
    classes = list(project.config.classes)
    rng = np.random.default_rng(0)

    def fn(s):  # noqa: ANN001, ANN202
        given = {i: c.label for i, c in labels.current(s).items()}
        v = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="IMAGENET1K_V1", mode="head",
                                             classes=classes, metrics={"synthetic": True}))
        rows = []
        for row, item_id in enumerate(items.ids(s)):
            cls = given.get(item_id, classes[row % len(classes)])
            k = classes.index(cls) if cls in classes else 0
            conf = float(rng.uniform(0.55, 0.99))
            probs = np.full(len(classes), (1 - conf) / (len(classes) - 1))
            probs[k] = conf
            rows.append(Prediction(item_id=item_id, model_version_id=v.id, pred=classes[k], confidence=conf,
                                   margin=conf - float(np.sort(probs)[-2]), entropy=0.0, probs=probs.tolist(),
                                   row=row))
        versions.add_predictions(s, rows)
        return len(rows)

    n = db.write(project.engine, fn)
    print(f"built {root.name}: {n:,} items with synthetic predictions", flush=True)


def measure(root: Path, *, pages: int, warmup: int, think_s: float) -> list[float]:
    """Milliseconds from confirming a page to the next page of 48 arriving, per page."""

    from active.project import Project
    from storage import db, users

    project = Project.load(root)
    db.write(project.engine, lambda s: users.get(s, USER) or users.add(s, USER, PASSWORD, role="annotator"))
    with labeller_server(root) as port:
        client = PageClient(f"http://127.0.0.1:{port}/", USER, PASSWORD, files=False)
        out = client.predict("(next class)", api_name="/grid_open")
        times: list[float] = []
        seen = 0
        while len(times) < pages:
            if seen > 5 * (pages + warmup):
                raise SystemExit(f"only {len(times)} full pages in {seen} confirms: is every class empty?")
            html = out[0]
            shown = [int(i) for i in re.findall(r'data-item="(\d+)"', html)]
            if not shown:
                raise SystemExit(f"no page to confirm after {seen} pages: {out[2]}")
            page = int(re.search(r'data-page="(\d+)"', html).group(1))
            cls = re.search(r'data-cls="([^"]+)"', html).group(1)
            payload = json.dumps({"page": page, "cls": cls, "shown": shown, "marked": shown[-1:]})
            time.sleep(think_s)  # the annotator scans the page; the server prepares the next one
            t = time.perf_counter()
            out = client.predict(payload, api_name="/grid_confirm")
            dt = (time.perf_counter() - t) * 1000
            seen += 1
            # Only full pages count: the last page of a class is shorter, and its successor is the
            # next class's first.
            if seen > warmup and len(re.findall(r'data-item="', out[0])) == FULL:
                times.append(dt)
        client.close()
        return times


def noop_ms(root: Path, n: int = 5) -> float:
    """Median time to decode 48 thumbnails nobody asked for yet, in-process (no server, no SQL)."""
    from active.project import Project
    from labeler.grid import Thumbnails
    from storage import db, items

    with db.session(Project.load(root).engine) as s:
        paths = items.paths(s)
    ids = sorted(paths)[-48 * n:]  # the newest items: the least likely to have been paged
    thumbs = Thumbnails()
    times = []
    for k in range(n):
        batch = [(i, paths[i]) for i in ids[48 * k: 48 * (k + 1)]]
        t = time.perf_counter()
        thumbs.many(batch)
        times.append((time.perf_counter() - t) * 1000)
    thumbs.close()
    return float(np.median(times))


def main() -> None:
    ap = latency_parser(__doc__, count="pages", count_default=20, count_help="pages measured per project",
                        warmup=2, think_ms=3000, think_help="time spent scanning each page of 48", large=LARGE_ITEMS)
    args = ap.parse_args()
    if args.project:
        times = measure(args.project, pages=args.pages, warmup=args.warmup, think_s=args.think_ms / 1000)
        p95 = float(np.percentile(times, 95))
        print(f"p50 {np.median(times):.0f} ms, p95 {p95:.0f} ms; no-op 48 thumbnails {noop_ms(args.project):.0f} ms")
        print(f"p95_ms={p95:.0f}")
        return
    work, small, large = small_and_large(args, DATASET, build_small, prefix="grid-latency-")
    results = {}
    for name, root in (("small", small), ("large", large)):
        times = measure(root, pages=args.pages, warmup=args.warmup, think_s=args.think_ms / 1000)
        results[name] = times
        print(f"{name}: {args.pages} pages of 48, confirm -> next page shown: p50 {np.median(times):.0f} ms, "
              f"p95 {np.percentile(times, 95):.0f} ms, max {max(times):.0f} ms", flush=True)
    noop = noop_ms(large)
    p95s, p95l = (float(np.percentile(results[k], 95)) for k in ("small", "large"))
    print(f"no-op (48 fresh thumbnails decoded in-process): {noop:.0f} ms; p95 / no-op = {p95s / noop:.2f} (small), "
          f"{p95l / noop:.2f} (large); large / small p95 = {p95l / p95s:.2f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"p95_ms_3781={p95s:.0f} p95_ms_{args.large}={p95l:.0f}")


if __name__ == "__main__":
    main()
