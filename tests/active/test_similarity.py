"""Nearest neighbours: exact and graph search agree, filters, saved graphs, background builds."""

from __future__ import annotations

import numpy as np
import pytest

from active import similarity


def clustered(n: int, d: int = 16, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    emb = centres[rng.integers(0, 8, n)] + rng.normal(scale=0.3, size=(n, d))
    return np.arange(100, 100 + n, dtype=np.int64), emb.astype(np.float32)


def test_exact_search_is_cosine_order():
    ids = np.array([5, 6, 7])
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    index = similarity.build(ids, emb)
    assert index.exact
    got, sims = index.search(np.array([1.0, 0.0]), 3)
    assert got[0].tolist() == [5, 6, 7]
    assert sims[0][0] == pytest.approx(1.0) and sims[0][2] == pytest.approx(0.0, abs=1e-6)


def test_graph_finds_the_exact_neighbours():
    ids, emb = clustered(600)
    exact = similarity.build(ids, emb)
    graph = similarity.build(ids, emb, exact_max=0)
    assert graph.graph is not None
    queries = similarity.normalise(emb[:20])
    a, sa = exact.search(queries, 10)
    b, sb = graph.search(queries, 10)
    recall = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)])
    assert recall >= 0.95
    np.testing.assert_allclose(sb[:, 0], sa[:, 0], rtol=1e-5)  # re-ranked: exact similarities


def test_neighbours_filter_and_exclude():
    ids, emb = clustered(300)
    index = similarity.build(ids, emb)
    query = index.vector(100)
    even = index.neighbours(query, 5, allow=lambda got: got % 2 == 0, exclude=[100])
    assert len(even) == 5 and all(i % 2 == 0 and i != 100 for i, _ in even)
    assert [s for _, s in even] == sorted((s for _, s in even), reverse=True)
    # A filter that almost nothing passes falls back to scanning every item.
    only = index.neighbours(query, 3, allow=lambda got: got == 399)
    assert only == [(399, pytest.approx(float(index.vector(399) @ query), rel=1e-5))]


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="3 ids but 2"):
        similarity.SimilarityIndex(np.arange(3), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        similarity.normalise(np.zeros(4))


def test_saved_graph_is_reused_and_a_broken_one_rebuilt(tmp_path):
    ids, emb = clustered(200)
    path = similarity.index_path(tmp_path, 3, ids)
    similarity.save_graph(similarity.build(ids, emb, exact_max=0), path)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    loaded = similarity.load_graph(path, ids, emb)
    assert loaded is not None and loaded.graph is not None
    assert loaded.search(similarity.normalise(emb[:1]), 1)[0][0][0] == ids[0]
    assert similarity.load_graph(path, ids[:-1], emb[:-1]) is None  # other items: not this graph
    path.write_bytes(b"not an index")
    assert similarity.load_graph(path, ids, emb) is None


def test_cache_answers_exactly_while_the_graph_builds(tmp_path):
    ids, emb = clustered(400)
    calls = []

    def load(version_id: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(version_id)
        return ids, emb

    cache = similarity.IndexCache(tmp_path, load, exact_max=100)
    first = cache.get(1)
    assert first.exact  # no graph on disk yet: exact now, the graph in the background
    cache.wait(60)
    assert similarity.index_path(tmp_path, 1, ids).is_file()
    assert cache.get(1).graph is not None
    fresh = similarity.IndexCache(tmp_path, load, exact_max=100)  # another process: reads the file
    assert fresh.get(1).graph is not None
    small = similarity.IndexCache(tmp_path, load, exact_max=1000)
    assert small.get(2).exact and not similarity.index_path(tmp_path, 2, ids).exists()
