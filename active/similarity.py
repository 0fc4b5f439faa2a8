"""Nearest neighbours in one model version's embedding space, from a handful of items to a catalogue.

Cosine similarity on L2-normalised embeddings. A pool of up to ``EXACT_MAX`` items is searched
exactly (one matrix product, a few milliseconds); a larger one through a faiss HNSW graph whose
vectors are stored as 8-bit scalars, with the candidates it returns re-ranked exactly on the
float32 embeddings (so the similarities shown are exact, and recall@10 stays above 0.95 at 100k
items, see ``bench/similar.py``).

An index belongs to one model version and one set of scored items. It is saved under
``artifacts/similarity/`` with a key of the item ids in its name, written atomically
(`active.atomic`), so a second process reads a whole file or builds its own. `IndexCache` builds a slow index
in a background thread and answers exactly meanwhile: nobody waits for a build.

Pure numpy + faiss; no torch, no SQL.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from active.atomic import write_atomic

log = logging.getLogger(__name__)

SIMILARITY_DIR = "similarity"
# Up to this many items, exact search: no graph to build or keep, and exact results. Its cost grows
# with the pool (bench/similar.py on the shared 2-core box: 3-13 ms at 10k, 100 ms at 100k), so
# beyond it a graph pays off (2.6 ms at 100k).
EXACT_MAX = 20_000
# HNSW graph degree and beam widths: M=32 is faiss's usual choice for high-dimensional vectors;
# the search beam of 64 gave recall@10 >= 0.95 at 100k in bench/similar.py.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
# Candidates fetched per wanted neighbour before exact re-ranking (8-bit vectors blur close ties).
RERANK_FACTOR = 4
# Candidates a filtered search asks for at first, as a multiple of k, doubled while too few pass.
FILTER_FACTOR = 4
# Past this many candidates, a filtered search scans the allowed items exactly instead.
FILTER_MAX_CANDIDATES = 4096
# OpenMP threads of a background build inside the web server: one, so serving keeps a core.
BACKGROUND_BUILD_THREADS = 1


def normalise(embeddings: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 rows scaled to unit length (zero rows stay zero)."""
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {emb.shape}")
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.maximum(norm, 1e-12)


def ids_key(ids: np.ndarray) -> str:
    """12 hex digits naming a set of item ids in order (the rows an index was built on)."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:12]


def _top_k(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of each row of ``sims`` (q, n), largest first."""
    k = min(k, sims.shape[1])
    if k <= 0:
        return np.zeros((sims.shape[0], 0), dtype=np.int64)
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.tile(
        np.arange(sims.shape[1]), (sims.shape[0], 1))
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class SimilarityIndex:
    """Cosine nearest neighbours over one version's items.

    ids: (n,) int64 item ids; unit: (n, d) float32 unit rows in the same order; graph: a faiss
    index over the same rows, or None for exact search.
    """

    ids: np.ndarray
    unit: np.ndarray
    graph: object | None = None
    _row_of: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.unit):
            raise ValueError(f"{len(self.ids)} ids but {len(self.unit)} embeddings")
        self._row_of = {int(i): r for r, i in enumerate(self.ids)}

    @property
    def exact(self) -> bool:
        return self.graph is None

    def __len__(self) -> int:
        return len(self.ids)

    def vector(self, item_id: int) -> np.ndarray | None:
        """The item's unit embedding (d,), or None when this index has no row for it."""
        row = self._row_of.get(int(item_id))
        return None if row is None else self.unit[row]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items to each query.

        queries: (q, d) or (d,) unit vectors. Returns (ids (q, k'), cosine (q, k')), nearest first,
        k' = min(k, n).
        """
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if len(self) == 0 or k <= 0:
            return np.zeros((len(q), 0), dtype=np.int64), np.zeros((len(q), 0), dtype=np.float32)
        rows = self._candidate_rows(q, k)
        return self.ids[rows], np.einsum("qd,qkd->qk", q, self.unit[rows])

    def _candidate_rows(self, q: np.ndarray, k: int) -> np.ndarray:
        if self.graph is None:
            return _top_k(q @ self.unit.T, k)
        fetch = min(len(self), k * RERANK_FACTOR)
        self.graph.hnsw.efSearch = max(HNSW_EF_SEARCH, fetch)  # type: ignore[attr-defined]
        _, cand = self.graph.search(np.ascontiguousarray(q), fetch)  # type: ignore[attr-defined]
        out = np.empty((len(q), min(k, len(self))), dtype=np.int64)
        for j, row in enumerate(cand):
            row = row[row >= 0]  # faiss pads with -1 when the graph yields fewer
            exact = self.unit[row] @ q[j]
            best = row[np.argsort(-exact, kind="stable")][: out.shape[1]]
            if len(best) < out.shape[1]:  # a sparse corner of the graph: finish exactly
                best = _top_k((q[j : j + 1] @ self.unit.T), out.shape[1])[0]
            out[j] = best
        return out

    def neighbours(self, query: np.ndarray, k: int, *, allow: Callable[[np.ndarray], np.ndarray] | None = None,
                   exclude: Collection[int] = ()) -> list[tuple[int, float]]:
        """The k nearest items to one query vector (d,) that pass ``allow`` and are not in ``exclude``.

        allow: (m,) item ids -> (m,) bool, e.g. "not labelled yet" (asked in batches, so it can be
        one query). Candidates are fetched in growing batches; when more than
        ``FILTER_MAX_CANDIDATES`` would be needed, the whole index is scanned exactly instead.
        Returns [(item_id, cosine)] nearest first.
        """
        skip = {int(i) for i in exclude}
        fetch = max(k * FILTER_FACTOR, k + len(skip))
        while True:
            ids, sims = self.search(query, min(fetch, len(self)))
            ids, sims = ids[0], sims[0]
            keep = np.array([int(i) not in skip for i in ids], dtype=bool)
            if allow is not None and keep.any():
                keep[keep] = allow(ids[keep])
            out = [(int(i), float(s)) for i, s in zip(ids[keep], sims[keep], strict=True)][:k]
            if len(out) == k or len(ids) >= len(self):
                return out
            if fetch >= FILTER_MAX_CANDIDATES:
                return self._scan(query, k, allow, skip)
            fetch *= 2

    def _scan(self, query: np.ndarray, k: int, allow: Callable[[np.ndarray], np.ndarray] | None,
              skip: set[int]) -> list[tuple[int, float]]:
        mask = np.array([int(i) not in skip for i in self.ids], dtype=bool)
        if allow is not None:
            mask &= allow(self.ids)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return []
        sims = self.unit[rows] @ np.asarray(query, dtype=np.float32).reshape(-1)
        best = _top_k(sims[None, :], k)[0]
        return [(int(self.ids[rows[b]]), float(sims[b])) for b in best]


def build(ids: np.ndarray, embeddings: np.ndarray, *, exact_max: int = EXACT_MAX,
          threads: int | None = None) -> SimilarityIndex:
    """An index over ``embeddings`` (n, d) of items ``ids`` (n,): exact when n <= ``exact_max``,
    else an HNSW graph on 8-bit scalar-quantised vectors (built with ``threads`` OpenMP threads)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    unit = normalise(embeddings)
    if len(ids) <= exact_max:
        return SimilarityIndex(ids, unit)
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(threads)
    graph = faiss.IndexHNSWSQ(unit.shape[1], faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    graph.train(unit)
    graph.add(unit)
    graph.hnsw.efSearch = HNSW_EF_SEARCH
    return SimilarityIndex(ids, unit, graph)


def index_path(artifacts: Path, version_id: int, ids: np.ndarray) -> Path:
    return Path(artifacts) / SIMILARITY_DIR / f"v{version_id}-n{len(ids)}-{ids_key(ids)}.faiss"


def save_graph(index: SimilarityIndex, path: Path) -> None:
    """Write the index's graph to ``path`` atomically (nothing for an exact index). Not fsynced: a
    graph lost to a power cut is rebuilt from the embeddings."""
    if index.graph is None:
        return
    import faiss

    write_atomic(path, faiss.serialize_index(index.graph).tobytes(), fsync=False)


def load_graph(path: Path, ids: np.ndarray, embeddings: np.ndarray) -> SimilarityIndex | None:
    """The saved index at ``path`` over these items, or None when there is none (or it is unreadable:
    a file that cannot be read is rebuilt, not trusted)."""
    if not path.is_file():
        return None
    import faiss

    try:
        graph = faiss.read_index(str(path))
    except RuntimeError as exc:
        log.warning("similarity index %s cannot be read (%s): rebuilding it", path, exc)
        return None
    if graph.ntotal != len(ids):
        log.warning("similarity index %s holds %d rows, expected %d: rebuilding it", path, graph.ntotal, len(ids))
        return None
    graph.hnsw.efSearch = HNSW_EF_SEARCH
    return SimilarityIndex(np.ascontiguousarray(ids, dtype=np.int64), normalise(embeddings), graph)


class IndexCache:
    """The index of the newest version asked for, per process.

    ``get`` never blocks on a build: for a pool too large for exact search whose graph is not on
    disk yet, it starts one background build and answers with the exact index until it is done.
    """

    def __init__(self, artifacts: Path, load: Callable[[int], tuple[np.ndarray, np.ndarray]], *,
                 exact_max: int = EXACT_MAX) -> None:
        self.artifacts = Path(artifacts)
        self._load = load
        self.exact_max = exact_max
        self._lock = threading.Lock()
        self._current: tuple[int, SimilarityIndex] | None = None
        self._building: set[int] = set()

    def get(self, version_id: int) -> SimilarityIndex:
        with self._lock:
            cur = self._current
        if cur is not None and cur[0] == version_id:
            return cur[1]
        ids, emb = self._load(version_id)
        index: SimilarityIndex | None = None
        if len(ids) > self.exact_max:
            index = load_graph(index_path(self.artifacts, version_id, ids), ids, emb)
            if index is None:
                self._start_build(version_id, ids, emb)
        if index is None:
            index = SimilarityIndex(np.ascontiguousarray(ids, dtype=np.int64), normalise(emb))
        with self._lock:
            if self._current is None or self._current[0] <= version_id:
                self._current = (version_id, index)  # only the newest version stays in memory
        return index

    def _start_build(self, version_id: int, ids: np.ndarray, emb: np.ndarray) -> None:
        with self._lock:
            if version_id in self._building:
                return
            self._building.add(version_id)

        def work() -> None:
            try:
                index = build(ids, emb, exact_max=self.exact_max, threads=BACKGROUND_BUILD_THREADS)
                save_graph(index, index_path(self.artifacts, version_id, ids))
                with self._lock:
                    if self._current is None or self._current[0] <= version_id:
                        self._current = (version_id, index)
            except Exception:  # the exact index keeps answering; the next process tries again
                log.exception("building the similarity index of version %d failed", version_id)
            finally:
                with self._lock:
                    self._building.discard(version_id)

        threading.Thread(target=work, name=f"similarity-v{version_id}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until no build runs (for tests and benchmarks)."""
        for t in threading.enumerate():
            if t.name.startswith("similarity-v"):
                t.join(timeout)
