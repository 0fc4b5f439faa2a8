"""How long asking for the serving version takes, next to a plain lookup of the newest version.

The labeller asks `storage.versions.serving` for every item it shows. The answer needs a check
that a version's predictions cover every pool item (a read of the whole pool), so it is cached
until the store changes; this prints both figures on a synthetic store (no photos, no torch) with
three versions, the newest still being scored, plus the uncached check.

    python bench/serving.py --items 50000

Last line: ``serving_ms=<n> uncached_ms=<n> latest_ms=<n>``.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time

import _common  # noqa: F401  (puts the repository on sys.path)

from storage import db, items, versions
from storage.tables import Item, ModelVersion, Prediction


def build(n: int, folder: str):  # noqa: ANN201
    engine = db.make_engine(f"sqlite:///{folder}/bench.db")
    db.create_schema(engine)

    def fill(s):  # noqa: ANN001, ANN202
        added = items.add(s, [Item(sha256=hashlib.sha256(str(k).encode()).hexdigest(), path=f"/bench/{k}.jpg",
                                   width=1, height=1, mode="RGB") for k in range(n)])
        for v in range(3):
            mv = versions.publish(s, ModelVersion(backbone="b", weights="w", mode="head", classes=["a", "b"]))
            scored = added if v < 2 else added[: n // 2]  # the newest is still being scored
            s.add_all(Prediction(item_id=i.id, model_version_id=mv.id, pred="a", probs=[0.5, 0.5], row=k)
                      for k, i in enumerate(scored))

    db.write(engine, fill)
    return engine


def per_call_ms(engine, fn, repeat: int) -> float:  # noqa: ANN001
    with db.session(engine) as s:
        fn(s)
        started = time.perf_counter()
        for _ in range(repeat):
            fn(s)
        return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=50_000, help="pool items (default: 50000)")
    p.add_argument("--repeat", type=int, default=20, help="calls timed (default: 20)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        engine = build(args.items, folder)

        def uncached(s):  # noqa: ANN001, ANN202
            versions._serving_cache.clear()
            return versions.serving(s)

        serving = per_call_ms(engine, versions.serving, args.repeat)
        cold = per_call_ms(engine, uncached, max(1, args.repeat // 4))
        latest = per_call_ms(engine, versions.latest, args.repeat)
        engine.dispose()
    print(f"{args.items} pool items: serving {serving:.1f} ms per call (uncached {cold:.1f} ms), "
          f"newest-version lookup {latest:.1f} ms")
    print(f"serving_ms={serving:.2f} uncached_ms={cold:.2f} latest_ms={latest:.2f}")


if __name__ == "__main__":
    main()
