"""Nearest-neighbour search at catalogue scale: queries/s and recall@10 of `active.similarity`.

Synthetic embeddings of mobilenet_v2's real dimension (1280): non-negative (the network's last
features pass a ReLU6 and an average pool) and clustered around ``--clusters`` product "types",
which is how real catalogue embeddings look; uniform noise would have no neighbours worth finding.
Queries are fresh points from the same distribution (like an uploaded photo), one at a time, as the
labeller asks them. For each size the graph index (faiss HNSW, 8-bit vectors, exact re-rank) is
timed next to exact search (numpy, one matrix-vector product) on the same data; recall@10 is the
share of the exact top 10 that the graph returns.

    python bench/similar.py                       # 10k and 100k items
    python bench/similar.py --sizes 20000 --queries 100

Last line: ``ms_per_query_100k=<n> recall_at_10=<r>`` (the graph index at the largest size).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from active import similarity  # noqa: E402

DIM = 1280  # mobilenet_v2's penultimate features
K = 10


def synthetic(n: int, *, clusters: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(centres (clusters, DIM), points (n, DIM)) float32, non-negative, clustered."""
    centres = np.maximum(rng.normal(0.0, 1.0, (clusters, DIM)), 0).astype(np.float32)
    points = np.empty((n, DIM), dtype=np.float32)
    step = 10_000
    for start in range(0, n, step):
        m = min(step, n - start)
        which = rng.integers(0, clusters, m)
        points[start:start + m] = np.maximum(centres[which] + rng.normal(0.0, noise, (m, DIM)), 0)
    return centres, points


def queries_from(centres: np.ndarray, q: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    which = rng.integers(0, len(centres), q)
    return similarity.normalise(np.maximum(centres[which] + rng.normal(0.0, noise, (q, DIM)), 0))


def timed(index: similarity.SimilarityIndex, queries: np.ndarray) -> tuple[float, np.ndarray]:
    """(ms per query, ids (q, K)) answering one query at a time."""
    out = np.empty((len(queries), K), dtype=np.int64)
    t0 = time.perf_counter()
    for j, qv in enumerate(queries):
        out[j] = index.search(qv, K)[0][0]
    return (time.perf_counter() - t0) * 1000 / len(queries), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="pool sizes, comma-separated")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--noise", type=float, default=1.0, help="spread of items around their cluster centre")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads for the build (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    sizes = [int(s) for s in args.sizes.split(",")]
    last = (float("nan"), float("nan"))
    print(f"{'items':>8} {'build_s':>8} {'exact_ms':>9} {'exact_qps':>10} {'graph_ms':>9} {'graph_qps':>10} "
          f"{'recall@10':>9}  picked")
    for n in sizes:
        centres, points = synthetic(n, clusters=args.clusters, noise=args.noise, rng=rng)
        ids = np.arange(1, n + 1, dtype=np.int64)
        queries = queries_from(centres, args.queries, args.noise, rng)
        exact = similarity.build(ids, points, exact_max=n)
        t0 = time.perf_counter()
        graph = similarity.build(ids, points, exact_max=0, threads=args.threads)
        build_s = time.perf_counter() - t0
        exact_ms, truth = timed(exact, queries)
        graph_ms, got = timed(graph, queries)
        recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(truth, got, strict=True)]))
        picked = "exact" if n <= similarity.EXACT_MAX else "graph"
        print(f"{n:>8} {build_s:>8.1f} {exact_ms:>9.2f} {1000 / exact_ms:>10.0f} {graph_ms:>9.2f} "
              f"{1000 / graph_ms:>10.0f} {recall:>9.3f}  {picked}", flush=True)
        last = (graph_ms, recall)
        del exact, graph, points
    print(f"ms_per_query_{sizes[-1] // 1000}k={last[0]:.2f} recall_at_10={last[1]:.3f}")


if __name__ == "__main__":
    main()
