"""Query strategies: pure numpy functions that turn model scores into a ranked batch.

The contract (one per concept, next to its errors; STYLE.md 1-4):

    strategy(probs | embeddings, ids, n, *, rng, ...) -> Selection(ids, scores, score_name)

- ``probs``: (n_items, n_classes) class probabilities, rows summing to 1;
  ``embeddings``: (n_items, dim) float features; ``ids``: (n_items,) int item ids, unique.
- ``n`` items are returned, best first; when ``n`` is at least the pool size the whole pool
  comes back, ranked. ``scores[i]`` is the score that picked ``ids[i]`` (what the UI shows:
  "picked: margin 0.03"). Ties are broken by the smaller item id, so a call is deterministic
  given ``rng``.
- An empty pool raises `EmptyPoolError`; an unknown name raises `UnknownStrategyError`, which
  lists the valid names. Inputs are validated once, in the public entry points; the private
  twins in `REGISTRY` assume clean arrays.

Strategies never see SQL or torch: the loop (`active.selection`) owns the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# How many candidates per batch slot the hybrid considers before clustering (Zhdanov 2019,
# "Diverse mini-batch active learning", uses 10): large enough for diversity to matter,
# small enough that every candidate is still among the uncertain ones.
HYBRID_PREFILTER = 10
# No predicted class takes more than this many times its equal share of the candidates or of
# the batch (while other classes are on offer). 2 = a guard against one class taking over,
# loose enough not to spend picks on classes the model already gets right.
HYBRID_CLASS_SHARE = 2.0
# k-means restarts for the hybrid's clustering (seeded from ``rng``).
KMEANS_INIT = 3
KMEANS_MAX_ITER = 100
# Chunk size for pairwise distances (bounds memory to CHUNK x n_centres floats).
DISTANCE_CHUNK = 2048
EPS = 1e-12


class StrategyError(ValueError):
    """Base of the errors a strategy raises on bad input."""


class EmptyPoolError(StrategyError):
    """There is nothing to select from."""


class UnknownStrategyError(StrategyError, KeyError):
    """No strategy of that name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Selection:
    """A ranked batch: ``ids`` (n,) int64 best first, ``scores`` (n,) float64, what they mean."""

    ids: np.ndarray
    scores: np.ndarray
    score_name: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __iter__(self):  # noqa: ANN204 - lets callers write `ids, scores = strategy(...)`
        return iter((self.ids, self.scores))


# --------------------------------------------------------------------------- uncertainty math


def least_confidence_scores(probs: np.ndarray) -> np.ndarray:
    """1 - max_k p_k: (n, c) -> (n,); higher is more uncertain."""
    return 1.0 - probs.max(axis=1)


def margin_scores(probs: np.ndarray) -> np.ndarray:
    """p_top1 - p_top2: (n, c) -> (n,); LOWER is more uncertain."""
    if probs.shape[1] < 2:
        return np.ones(probs.shape[0])
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats: (n, c) -> (n,); higher is more uncertain."""
    p = np.clip(probs, EPS, 1.0)
    return -(probs * np.log(p)).sum(axis=1)


def _rank(keys: np.ndarray, ids: np.ndarray, *, descending: bool) -> np.ndarray:
    """Positions sorted by ``keys`` (ties: smaller id first)."""
    primary = -keys if descending else keys
    return np.lexsort((ids, primary))


# --------------------------------------------------------------------------- private twins
# Each takes validated arrays and returns (order of positions, scores of those positions).


def _random(ids: np.ndarray, n: int, *, rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
    draw = rng.random(ids.shape[0])
    order = _rank(draw, ids, descending=False)[:n]
    return order, draw[order]


def _by_score(scores: np.ndarray, ids: np.ndarray, n: int, *, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    order = _rank(scores, ids, descending=descending)[:n]
    return order, scores[order]


def _least_confidence(ids: np.ndarray, n: int, *, probs: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    return _by_score(least_confidence_scores(probs), ids, n, descending=True)


def _margin(ids: np.ndarray, n: int, *, probs: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    return _by_score(margin_scores(probs), ids, n, descending=False)


def _entropy(ids: np.ndarray, n: int, *, probs: np.ndarray, **_: object) -> tuple[np.ndarray, np.ndarray]:
    return _by_score(entropy_scores(probs), ids, n, descending=True)


def _sq_dists(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (len(x), len(centres)), computed in chunks."""
    out = np.empty((x.shape[0], centres.shape[0]), dtype=np.float64)
    cn = (centres.astype(np.float64) ** 2).sum(axis=1)
    for s in range(0, x.shape[0], DISTANCE_CHUNK):
        xs = x[s : s + DISTANCE_CHUNK].astype(np.float64)
        d = (xs**2).sum(axis=1)[:, None] + cn[None, :] - 2.0 * xs @ centres.T.astype(np.float64)
        out[s : s + DISTANCE_CHUNK] = np.maximum(d, 0.0)
    return out


def _min_sq_dist(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """min over centres of the squared distance, (len(x),), without holding the full matrix."""
    best = np.full(x.shape[0], np.inf)
    for s in range(0, centres.shape[0], DISTANCE_CHUNK):
        best = np.minimum(best, _sq_dists(x, centres[s : s + DISTANCE_CHUNK]).min(axis=1))
    return best


def _kcenter(
    ids: np.ndarray,
    n: int,
    *,
    embeddings: np.ndarray,
    labelled: np.ndarray | None = None,
    **_: object,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy core-set (Sener & Savarese 2018): repeatedly take the item farthest from every
    centre so far. Centres start as the labelled set's embeddings; with none, the first pick is
    the item nearest the pool's mean (the most central one, and no randomness needed)."""
    x = embeddings.astype(np.float64)
    has_centres = labelled is not None and labelled.shape[0] > 0
    if has_centres:
        dist = _min_sq_dist(x, labelled)
    else:
        dist = _sq_dists(x, x.mean(axis=0, keepdims=True))[:, 0]
        dist = dist.max() - dist + 1.0  # nearest the mean goes first, then farthest-first
    picked: list[int] = []
    scores: list[float] = []
    taken = np.zeros(x.shape[0], dtype=bool)
    for _step in range(n):
        cand = np.where(taken, -np.inf, dist)
        best = cand.max()
        # Ties: the smaller id among the farthest.
        j = int(np.flatnonzero(cand == best)[np.argmin(ids[cand == best])])
        picked.append(j)
        scores.append(float(np.sqrt(dist[j])) if has_centres or len(picked) > 1 else 0.0)
        taken[j] = True
        dist = np.minimum(dist, _sq_dists(x, x[j : j + 1])[:, 0])
    return np.asarray(picked, dtype=np.int64), np.asarray(scores)


def _kmeans(x: np.ndarray, k: int, *, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means labels (len(x),). Seeded from ``rng``; sklearn's k-means++ + Lloyd."""
    from sklearn.cluster import KMeans

    seed = int(rng.integers(0, 2**31 - 1))
    km = KMeans(n_clusters=k, n_init=KMEANS_INIT, max_iter=KMEANS_MAX_ITER, random_state=seed)
    return km.fit_predict(x, sample_weight=weights)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPS)


def _class_cap(share: float, total: int, n_classes: int) -> int:
    """At most ``share`` times an equal share of ``total`` per class (at least 1)."""
    return max(1, int(np.ceil(share * total / max(n_classes, 1))))


def _capped_candidates(
    uncertainty: np.ndarray, predicted: np.ndarray, ids: np.ndarray, m: int, *, cap: int
) -> np.ndarray:
    """Positions of the ``m`` most uncertain items, taking at most ``cap`` of any predicted
    class while others are left; when the other classes run out, the skipped items fill up."""
    order = _rank(uncertainty, ids, descending=True)
    taken: dict[int, int] = {}
    out: list[int] = []
    skipped: list[int] = []
    for pos in order:
        if len(out) == m:
            break
        c = int(predicted[pos])
        if taken.get(c, 0) < cap:
            taken[c] = taken.get(c, 0) + 1
            out.append(int(pos))
        else:
            skipped.append(int(pos))
    out.extend(skipped[: m - len(out)])
    return np.asarray(out, dtype=np.int64)


def _one_per_group(
    cand: np.ndarray,
    groups: np.ndarray,
    uncertainty: np.ndarray,
    predicted: np.ndarray,
    ids: np.ndarray,
    n: int,
    *,
    cap: int,
) -> np.ndarray:
    """Positions of ``n`` picks, one per group: the group's most uncertain member whose
    predicted class has fewer than ``cap`` picks, else its most uncertain member. Groups are
    visited most uncertain first. Groups k-means left empty are made up with the most
    uncertain candidates left."""
    members_of = {}
    for g in np.unique(groups):
        members = cand[groups == g]
        members_of[int(g)] = members[_rank(uncertainty[members], ids[members], descending=True)]
    visit = sorted(members_of, key=lambda g: (-uncertainty[members_of[g][0]], ids[members_of[g][0]]))
    taken: dict[int, int] = {}
    chosen: list[int] = []
    for g in visit:
        members = members_of[g]
        open_ = [int(p) for p in members if taken.get(int(predicted[p]), 0) < cap]
        pick = open_[0] if open_ else int(members[0])
        taken[int(predicted[pick])] = taken.get(int(predicted[pick]), 0) + 1
        chosen.append(pick)
    if len(chosen) < n:
        rest = np.setdiff1d(cand, chosen)
        rest = rest[_rank(uncertainty[rest], ids[rest], descending=True)][: n - len(chosen)]
        chosen.extend(int(p) for p in rest)
    return np.asarray(chosen[:n], dtype=np.int64)


def _hybrid(
    ids: np.ndarray,
    n: int,
    *,
    probs: np.ndarray,
    embeddings: np.ndarray,
    rng: np.random.Generator,
    prefilter: int = HYBRID_PREFILTER,
    class_share: float = HYBRID_CLASS_SHARE,
    **_: object,
) -> tuple[np.ndarray, np.ndarray]:
    """Uncertain, diverse and class-balanced (after Zhdanov 2019, "Diverse mini-batch active
    learning"):

    1. uncertainty = 1 - margin; take the ``prefilter * n`` most uncertain items as candidates,
       no predicted class taking more than ``class_share`` times its equal share;
    2. cluster the candidates' L2-normalised embeddings into ``n`` groups with k-means weighted
       by uncertainty (seeded from ``rng``);
    3. from each group take its most uncertain item, again with no predicted class taking more
       than ``class_share`` times its equal share of the batch while another class is on offer.

    Plain uncertainty sampling spends a batch on near-duplicates of one confusing look; one
    pick per cluster spends it on ``n`` different looks, and the class cap keeps one confusing
    class from taking the batch over. The cap is loose on purpose: forcing exactly equal shares
    spends picks on classes the model already gets right. Scores are margins (lower = more
    uncertain); the batch is ordered most uncertain first.
    """
    margin = margin_scores(probs)
    uncertainty = 1.0 - margin
    if n >= ids.shape[0]:
        return _by_score(margin, ids, n, descending=False)
    predicted = probs.argmax(axis=1)
    n_classes = int(np.unique(predicted).shape[0])
    m = min(ids.shape[0], max(prefilter, 1) * n)
    cand = _capped_candidates(uncertainty, predicted, ids, m, cap=_class_cap(class_share, m, n_classes))
    if cand.shape[0] <= n:
        chosen = cand
    else:
        groups = _kmeans(_normalise_rows(embeddings[cand]), n, weights=uncertainty[cand] + EPS, rng=rng)
        chosen = _one_per_group(cand, groups, uncertainty, predicted, ids, n,
                                cap=_class_cap(class_share, n, n_classes))
    order = chosen[_rank(margin[chosen], ids[chosen], descending=False)]
    return order, margin[order]


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: what it needs and what its scores mean."""

    name: str
    fn: Callable[..., tuple[np.ndarray, np.ndarray]]
    needs_probs: bool
    needs_embeddings: bool
    score_name: str
    help: str
    display: str = ""  # for lists shown to people; the name when empty
    uses_labelled: bool = False  # also given the labelled items' embeddings (``labelled=``)


REGISTRY: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("random", _random, False, False, "random", "uniformly at random", "Random"),
        Strategy("least_confidence", _least_confidence, True, False, "least_confidence",
                 "lowest top-class probability", "Least confidence"),
        Strategy("margin", _margin, True, False, "margin", "smallest gap between the top two classes", "Margin"),
        Strategy("entropy", _entropy, True, False, "entropy", "highest predictive entropy", "Entropy"),
        Strategy("kcenter", _kcenter, False, True, "distance",
                 "greedy core-set: farthest from the labelled set and each other", "k-center core-set",
                 uses_labelled=True),
        Strategy("hybrid", _hybrid, True, True, "margin",
                 "most uncertain, one per k-means cluster, balanced over predicted classes", "Hybrid"),
    )
}
DEFAULT_STRATEGY = "hybrid"
# Used when the model has no head for our classes yet (no probabilities).
COLD_START_STRATEGY = "kcenter"


def get(name: str) -> Strategy:
    """The registered strategy ``name``, or `UnknownStrategyError` listing the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}: use one of {', '.join(REGISTRY)}"
        ) from None


def _as_2d(name: str, a: np.ndarray | None, n_items: int) -> np.ndarray:
    if a is None:
        raise StrategyError(f"this strategy needs {name}")
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[0] != n_items:
        raise StrategyError(f"{name} must be ({n_items}, k) to match ids; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise StrategyError(f"{name} must be finite numbers")
    return arr


def validate(
    ids: np.ndarray,
    n: int,
    *,
    probs: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labelled: np.ndarray | None = None,
    needs_probs: bool = False,
    needs_embeddings: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check and convert inputs once; returns (ids int64, probs, embeddings, labelled)."""
    ids_arr = np.asarray(ids)
    if ids_arr.ndim != 1:
        raise StrategyError(f"ids must be one-dimensional; got shape {ids_arr.shape}")
    if ids_arr.shape[0] == 0:
        raise EmptyPoolError("the pool is empty: nothing to select (import items or finish open rounds)")
    if not np.issubdtype(ids_arr.dtype, np.integer):
        raise StrategyError("ids must be integers")
    ids_arr = ids_arr.astype(np.int64)
    if np.unique(ids_arr).shape[0] != ids_arr.shape[0]:
        raise StrategyError("ids must be unique")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise StrategyError(f"n must be a positive integer; got {n!r}")
    p = e = lab = None
    if needs_probs or probs is not None:
        p = _as_2d("probs", probs, ids_arr.shape[0]).astype(np.float64)
        if (p < -1e-6).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
            raise StrategyError("probs must be non-negative with rows summing to 1")
    if needs_embeddings or embeddings is not None:
        e = _as_2d("embeddings", embeddings, ids_arr.shape[0])
    if labelled is not None:
        lab = np.asarray(labelled)
        if lab.ndim != 2 or (e is not None and lab.shape[0] and lab.shape[1] != e.shape[1]):
            raise StrategyError(f"labelled embeddings must be (m, {e.shape[1] if e is not None else 'dim'}); "
                                f"got shape {lab.shape}")
    return ids_arr, p, e, lab


def select(
    name: str,
    ids: np.ndarray,
    n: int,
    *,
    probs: np.ndarray | None = None,
    embeddings: np.ndarray | None = None,
    labelled: np.ndarray | None = None,
    rng: np.random.Generator | int | None = None,
) -> Selection:
    """Run strategy ``name`` over the pool ``ids``; see the module docstring for the contract.

    labelled: (m, dim) embeddings of already-labelled items (``kcenter`` starts from them).
    rng: a Generator or a seed; None means seed 0 (selection is reproducible by default).
    """
    strategy = get(name)
    ids_arr, p, e, lab = validate(ids, n, probs=probs, embeddings=embeddings, labelled=labelled,
                                  needs_probs=strategy.needs_probs, needs_embeddings=strategy.needs_embeddings)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    n = min(int(n), ids_arr.shape[0])
    order, scores = strategy.fn(ids_arr, n, probs=p, embeddings=e, labelled=lab, rng=gen)
    return Selection(ids_arr[order], np.asarray(scores, dtype=np.float64), strategy.score_name)


# --------------------------------------------------------------------------- public functions
# The same contract, one function per strategy: ``(scores, ids, n, *, rng) -> Selection``.


def random(ids: np.ndarray, n: int, *, rng: np.random.Generator | int | None = None) -> Selection:
    """Uniformly at random (scores: the uniform draws that ordered them)."""
    return select("random", ids, n, rng=rng)


def least_confidence(probs: np.ndarray, ids: np.ndarray, n: int, *,
                     rng: np.random.Generator | int | None = None) -> Selection:
    """probs: (n_items, n_classes). Highest 1 - max p first."""
    return select("least_confidence", ids, n, probs=probs, rng=rng)


def margin(probs: np.ndarray, ids: np.ndarray, n: int, *,
           rng: np.random.Generator | int | None = None) -> Selection:
    """probs: (n_items, n_classes). Smallest top-1 minus top-2 first."""
    return select("margin", ids, n, probs=probs, rng=rng)


def entropy(probs: np.ndarray, ids: np.ndarray, n: int, *,
            rng: np.random.Generator | int | None = None) -> Selection:
    """probs: (n_items, n_classes). Highest entropy first."""
    return select("entropy", ids, n, probs=probs, rng=rng)


def kcenter(embeddings: np.ndarray, ids: np.ndarray, n: int, *,
            rng: np.random.Generator | int | None = None,
            labelled: np.ndarray | None = None) -> Selection:
    """embeddings: (n_items, dim); labelled: (m, dim) or None. Farthest-first traversal."""
    return select("kcenter", ids, n, embeddings=embeddings, labelled=labelled, rng=rng)


def hybrid(probs: np.ndarray, ids: np.ndarray, n: int, *,
           rng: np.random.Generator | int | None = None,
           embeddings: np.ndarray) -> Selection:
    """probs: (n_items, n_classes); embeddings: (n_items, dim). See `_hybrid`."""
    return select("hybrid", ids, n, probs=probs, embeddings=embeddings, rng=rng)
