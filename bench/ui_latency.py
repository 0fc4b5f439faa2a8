"""How long after a label the next item (photo + suggestions + Grad-CAM) is ready, through the UI.

Runs `python -m labeler` as a separate server process and drives it like a browser does
(`_common.PageClient`: the page's event protocol, messages read as they arrive, kept-alive
connections): submit a label (`/accept`, naming the item on screen), fetch the photo and map it
names (both at once), or ask for the map
(`/attribution`, Grad-CAM) when it was not ready yet, with a think time between items (the annotator looking
at the photo, which is when the prefetch works). After each label the same signed-in client makes
a no-op round trip (`/noop`) through the same server: the floor any event pays (queue, SSE,
sign-in), so next-item / no-op says what the labeller itself adds. Measured on a 3,781-item project and on a 50,000-item
project (synthetic rows pointing at the same photos, same models), to show that the hot path has
no per-request scan that grows with the project.

    python bench/ui_latency.py                  # builds both projects from ../shared (minutes)
    python bench/ui_latency.py --project DIR    # an existing scored project (one figure)

Last line: ``p95_ms_small=<n> p95_ms_large=<n> p95_ms_noop=<n>`` (the no-op over both servers).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import _common as common
import numpy as np

USER, PASSWORD = "bench", "bench-password"
ROUND_SIZE = 400


def build_small(root: Path) -> None:
    """3,781 photos: train + validation as the pool, test as the holdout; scored; head retrained."""
    from active.project import Project
    from active.retrain import retrain
    from active.scoring import score

    common.import_clothing(root, common.DEFAULT_DATA)
    project = Project.load(root)
    t = time.perf_counter()
    rep = score(project, progress=True)
    print(f"scored {rep.embedded} photos with mobilenet_v2 in {time.perf_counter() - t:.0f} s", flush=True)
    v = retrain(project, mode="head", progress=False)
    print(f"head version v{v.id}: holdout accuracy {v.metrics.get('holdout', {}).get('accuracy')}", flush=True)


def open_round(project) -> int:  # noqa: ANN001
    """Queue the ROUND_SIZE smallest-margin pool items of the current version that the bench's
    annotator has not seen (a project kept with --keep serves fresh items on every run)."""
    from sqlmodel import select

    from storage import db, versions, work
    from storage.meaning import sql_seen_by
    from storage.tables import Item, Prediction

    with db.session(project.engine) as s:
        v = versions.latest(s)
        rows = s.exec(select(Prediction.item_id, Prediction.margin).join(Item, Item.id == Prediction.item_id)
                      .where(Prediction.model_version_id == v.id, Item.split == "pool",
                             ~sql_seen_by(Prediction.item_id, USER))
                      .order_by(Prediction.margin).limit(ROUND_SIZE)).all()
    ids, margins = [r[0] for r in rows], [float(r[1]) for r in rows]
    return db.write(project.engine, lambda s: work.open_round(
        s, strategy="margin", model_version_id=v.id, item_ids=ids, scores=margins, score_name="margin").id)


def model_only_ms(root: Path, n: int = 10) -> float:
    """Median time of one uncached Grad-CAM map (the model's share of the latency)."""
    import torch
    from sqlmodel import select

    from active.explain import explain
    from active.project import Project
    from labeler.prefetch import ATTRIBUTION_THREADS
    from storage import db, versions
    from storage.tables import Prediction

    torch.set_num_threads(ATTRIBUTION_THREADS)  # as the server runs it
    project = Project.load(root)
    with db.session(project.engine) as s:
        v = versions.latest(s)
        preds = list(s.exec(select(Prediction).where(Prediction.model_version_id == v.id)
                            .order_by(Prediction.item_id.desc())))
    times: list[float] = []
    loaded = False
    for p in preds:  # maps already on disk (earlier runs, the UI) are skipped: only fresh ones count
        t = time.perf_counter()
        got = explain(project, p.item_id, version_id=v.id, method="gradcam", target=p.pred)
        if got.cached:
            continue
        if loaded:
            times.append((time.perf_counter() - t) * 1000)
        loaded = True  # the first fresh map also loads the model
        if len(times) == n:
            break
    return float(np.median(times))


def measure(root: Path, *, n: int, think_s: float, warmup: int) -> tuple[list[float], list[float]]:
    """(next item + Grad-CAM round trips, no-op round trips) in ms, ``n`` of each after warm-up."""

    from active.project import Project
    from storage import db, users

    project = Project.load(root)
    db.write(project.engine, lambda s: users.add(s, USER, PASSWORD, role="annotator"))
    with common.labeller_server(root) as port:
        client = common.PageClient(f"http://127.0.0.1:{port}/", USER, PASSWORD)
        item = client.predict(True, "gradcam", api_name="/start")[0]
        client.predict(True, "gradcam", api_name="/attribution")
        times, noops, events, hits = [], [], [], 0
        for k in range(warmup + n):
            time.sleep(think_s)  # the annotator looks at the photo; the server prefetches
            t = time.perf_counter()
            raw = client.events([((item, True, "gradcam"), "/accept")])[0]
            dt_event = (time.perf_counter() - t) * 1000
            out = client.outputs("/accept", raw)  # the photo and the map, fetched as a page does
            item, photo = out[0], out[2]  # the next item's id, for the next decision to name
            overlay = out[-2]  # the map comes with the item when it was prefetched
            if overlay is None:
                overlay, _ = client.predict(True, "gradcam", api_name="/attribution")
            else:
                hits += 1
            dt = (time.perf_counter() - t) * 1000
            if not overlay or not photo:
                raise SystemExit("no photo or no attention map came back")
            t = time.perf_counter()
            client.predict(api_name="/noop")
            dt_noop = (time.perf_counter() - t) * 1000
            if k >= warmup:
                times.append(dt)
                noops.append(dt_noop)
                events.append(dt_event)
        client.close()
        print(f"{root.name}: the Grad-CAM map came with the item {hits} of {warmup + n} times; the /accept "
              f"event alone (before its files): p50 {np.median(events):.0f} ms, p95 {np.percentile(events, 95):.0f} ms",
              flush=True)
        return times, noops


def main() -> None:
    ap = common.latency_parser(__doc__, count="items", count_default=60, count_help="labels measured per project",
                               warmup=5, think_ms=1500, think_help="time spent looking at each item", large=common.LARGE_ITEMS)
    args = ap.parse_args()
    if args.project:
        times, noops = measure(args.project, n=args.items, think_s=args.think_ms / 1000, warmup=args.warmup)
        p95, p95n = float(np.percentile(times, 95)), float(np.percentile(noops, 95))
        print(f"p50 {np.median(times):.0f} ms, p95 {p95:.0f} ms; no-op p95 {p95n:.0f} ms (ratio {p95 / p95n:.2f}); "
              f"model-only Grad-CAM {model_only_ms(args.project):.0f} ms")
        print(f"p95_ms_small={p95:.0f} p95_ms_large=nan p95_ms_noop={p95n:.0f}")
        return
    work, small, large = common.small_and_large(args, common.DEFAULT_DATA, build_small, prefix="ui-latency-")
    from active.project import Project

    results, noop = {}, []
    for name, root in (("small", small), ("large", large)):
        open_round(Project.load(root))
        times, noops = measure(root, n=args.items, think_s=args.think_ms / 1000, warmup=args.warmup)
        results[name] = times
        noop += noops
        print(f"{name}: {args.items} labels, next item + Grad-CAM: p50 {np.median(times):.0f} ms, "
              f"p95 {np.percentile(times, 95):.0f} ms, max {max(times):.0f} ms; no-op round trip: "
              f"p50 {np.median(noops):.0f} ms, p95 {np.percentile(noops, 95):.0f} ms", flush=True)
    model = model_only_ms(small)
    p95s, p95l = (float(np.percentile(results[k], 95)) for k in ("small", "large"))
    print(f"model-only Grad-CAM (uncached, one map): {model:.0f} ms; p95 / model-only = {p95s / model:.2f} (small), "
          f"{p95l / model:.2f} (large); large / small p95 = {p95l / p95s:.2f}")
    p95n = float(np.percentile(noop, 95))
    print(f"next item / no-op p95 = {p95s / p95n:.2f} (small), {p95l / p95n:.2f} (large); target <= 1.5")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"p95_ms_small={p95s:.0f} p95_ms_large={p95l:.0f} p95_ms_noop={p95n:.0f}")


if __name__ == "__main__":
    main()
