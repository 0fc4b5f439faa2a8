"""The query strategies on hand-made arrays (no torch, no SQL)."""

from __future__ import annotations

import numpy as np
import pytest

from active import strategies as S

# Five items, three classes; the comments give each item's uncertainty profile.
PROBS = np.array([
    [0.90, 0.05, 0.05],  # id 10: confident
    [0.40, 0.35, 0.25],  # id 11: small margin (0.05), low top (0.40)
    [0.34, 0.33, 0.33],  # id 12: nearly uniform: most uncertain by every measure
    [0.50, 0.50, 0.00],  # id 13: margin 0, but only two classes in play (lower entropy)
    [0.70, 0.20, 0.10],  # id 14
])
IDS = np.array([10, 11, 12, 13, 14])


def test_least_confidence_orders_by_top_probability() -> None:
    ids, scores = S.least_confidence(PROBS, IDS, 5)
    assert ids.tolist() == [12, 11, 13, 14, 10]
    np.testing.assert_allclose(scores, [0.66, 0.60, 0.50, 0.30, 0.10])


def test_margin_orders_by_top_two_gap() -> None:
    sel = S.margin(PROBS, IDS, 3)
    assert sel.ids.tolist() == [13, 12, 11]
    np.testing.assert_allclose(sel.scores, [0.0, 0.01, 0.05], atol=1e-12)
    assert sel.score_name == "margin"


def test_entropy_orders_by_entropy() -> None:
    ids, scores = S.entropy(PROBS, IDS, 5)
    # Unlike least confidence, entropy ranks id 14 (mass spread over three classes) above id 13.
    assert ids.tolist() == [12, 11, 14, 13, 10]
    assert np.all(np.diff(scores) <= 0)
    assert scores[0] == pytest.approx(np.log(3), abs=1e-3)


def test_random_is_reproducible_and_a_permutation() -> None:
    a = S.random(IDS, 5, rng=np.random.default_rng(7))
    b = S.random(IDS, 5, rng=np.random.default_rng(7))
    assert a.ids.tolist() == b.ids.tolist()
    assert sorted(a.ids.tolist()) == IDS.tolist()
    assert np.all(np.diff(a.scores) >= 0)  # the draws that ordered them


def test_ties_break_by_smaller_id_whatever_the_input_order() -> None:
    probs = np.array([[0.5, 0.5]] * 4)
    for perm in ([3, 1, 0, 2], [0, 1, 2, 3], [2, 3, 1, 0]):
        ids = np.array([40, 7, 19, 3])[perm]
        for name in ("least_confidence", "margin", "entropy"):
            assert S.select(name, ids, 4, probs=probs[perm]).ids.tolist() == [3, 7, 19, 40]


def test_n_larger_than_pool_returns_whole_pool_ranked() -> None:
    for name in ("least_confidence", "margin", "entropy", "random"):
        sel = S.select(name, IDS, 50, probs=PROBS)
        assert sorted(sel.ids.tolist()) == IDS.tolist()
        assert len(sel) == len(sel.scores) == 5
    emb = np.eye(5)
    assert sorted(S.kcenter(emb, IDS, 99).ids.tolist()) == IDS.tolist()
    assert sorted(S.hybrid(PROBS, IDS, 99, embeddings=emb).ids.tolist()) == IDS.tolist()


def test_empty_pool_raises_named_error() -> None:
    empty = np.array([], dtype=np.int64)
    for name in S.REGISTRY:
        with pytest.raises(S.EmptyPoolError):
            S.select(name, empty, 3, probs=np.zeros((0, 3)), embeddings=np.zeros((0, 2)))


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(S.UnknownStrategyError) as err:
        S.select("bald", IDS, 2, probs=PROBS)
    for name in S.REGISTRY:
        assert name in str(err.value)


@pytest.mark.parametrize("bad", [
    dict(ids=IDS, n=0, probs=PROBS),
    dict(ids=IDS, n=2, probs=PROBS[:4]),  # shape mismatch
    dict(ids=IDS, n=2, probs=PROBS * 2),  # rows do not sum to 1
    dict(ids=np.array([1, 1, 2, 3, 4]), n=2, probs=PROBS),  # duplicate ids
    dict(ids=IDS, n=2, probs=None),  # margin needs probs
])
def test_bad_input_is_refused(bad: dict) -> None:
    with pytest.raises(S.StrategyError):
        S.select("margin", bad.pop("ids"), bad.pop("n"), **bad)


def test_kcenter_spreads_out_and_starts_from_the_labelled_set() -> None:
    # Three tight blobs; the labelled set already covers blob A.
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    emb = np.vstack([c + rng.normal(0, 0.1, (5, 2)) for c in centres])
    ids = np.arange(15)
    sel = S.kcenter(emb, ids, 2, labelled=centres[:1])
    assert {int(i) // 5 for i in sel.ids} == {1, 2}  # one from each uncovered blob
    assert np.all(sel.scores > 9)  # each was ~10 from the nearest centre when picked
    unlabelled = S.kcenter(emb, ids, 3)
    assert {int(i) // 5 for i in unlabelled.ids} == {0, 1, 2}


def _blobs(rng: np.random.Generator, n_blobs: int, per_blob: int, dim: int = 8) -> np.ndarray:
    centres = rng.normal(0, 1, (n_blobs, dim)) * 10
    return np.vstack([c + rng.normal(0, 0.05, (per_blob, dim)) for c in centres])


def test_hybrid_takes_one_item_per_tight_cluster() -> None:
    # Blob 0 holds the 20 most uncertain items; margin sampling spends the whole batch on it,
    # the hybrid takes one from each of 5 blobs.
    rng = np.random.default_rng(1)
    emb = _blobs(rng, 5, 20)
    ids = np.arange(100)
    p_top = np.where(ids < 20, 0.36 + 0.001 * ids, 0.6 + 0.003 * (ids % 20))
    probs = np.stack([p_top, 1 - p_top - 0.3, np.full(100, 0.3)], axis=1)
    plain = S.margin(probs, ids, 5)
    assert {int(i) // 20 for i in plain.ids} == {0}
    sel = S.hybrid(probs, ids, 5, embeddings=emb, rng=np.random.default_rng(0))
    assert sorted(int(i) // 20 for i in sel.ids) == [0, 1, 2, 3, 4]
    # Within blob 0 it still took the most uncertain one (smallest margin).
    assert 0 in sel.ids.tolist()


def test_hybrid_balances_over_predicted_classes() -> None:
    # 90 items predicted class 0 (three looks) are all more uncertain than the 15 predicted
    # class 1 and the 15 predicted class 2: margin sampling only ever sees class 0; the hybrid
    # shares its candidates out per predicted class, so classes 1 and 2 get picks too.
    rng = np.random.default_rng(2)
    predicted = np.r_[np.zeros(90, int), np.ones(15, int), np.full(15, 2)]
    look = np.r_[np.repeat([0, 1, 2], 30), np.full(15, 3), np.full(15, 4)]
    emb = _blobs(rng, 5, 1)[look] + rng.normal(0, 0.5, (120, 8))
    n_items = len(predicted)
    gap = np.where(predicted == 0, rng.uniform(0.0, 0.1, n_items), rng.uniform(0.5, 0.7, n_items))
    probs = np.zeros((n_items, 3))
    probs[np.arange(n_items), predicted] = 0.1 + (0.9 + gap) / 2
    probs[np.arange(n_items), (predicted + 1) % 3] = (0.9 - gap) / 2
    probs[np.arange(n_items), (predicted + 2) % 3] = 0.1 - 1e-9
    probs /= probs.sum(axis=1, keepdims=True)
    assert (probs.argmax(axis=1) == predicted).all()
    ids = np.arange(n_items)
    assert set(predicted[S.margin(probs, ids, 6).ids].tolist()) == {0}
    sel = S.hybrid(probs, ids, 6, embeddings=emb, rng=np.random.default_rng(0))
    counts = np.bincount(predicted[sel.ids], minlength=3)
    assert counts.min() >= 1, counts  # every predicted class gets a pick


def test_hybrid_is_deterministic_given_the_seed() -> None:
    rng = np.random.default_rng(3)
    emb = rng.normal(0, 1, (200, 5))
    probs = rng.dirichlet(np.ones(4), 200)
    ids = np.arange(1000, 1200)
    a = S.hybrid(probs, ids, 10, embeddings=emb, rng=5)
    b = S.hybrid(probs, ids, 10, embeddings=emb, rng=5)
    assert a.ids.tolist() == b.ids.tolist()
    assert len(set(a.ids.tolist())) == 10
    assert np.all(np.diff(a.scores) >= 0)  # most uncertain first
