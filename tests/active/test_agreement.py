import numpy as np
import pytest

from active.agreement import agreement, cohen_kappa, count_table, fleiss_kappa


def test_cohen_kappa_known_value():
    # Classic 2x2 example: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> p_o .7, p_e .5, kappa .4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_perfect_and_chance():
    assert cohen_kappa(["a", "b", "c"], ["a", "b", "c"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) == 1.0
    # Systematic disagreement is below chance.
    assert cohen_kappa(["a", "b", "a", "b"], ["b", "a", "b", "a"]) < 0


def test_cohen_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.choice(list("abcd"), 200)
    b = np.where(rng.random(200) < 0.6, a, rng.choice(list("abcd"), 200))
    assert cohen_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a, b))


def test_cohen_kappa_bad_input():
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        cohen_kappa([], [])


def test_fleiss_kappa_wikipedia_example():
    # The worked example of Fleiss (1971) as given on Wikipedia: 10 items, 14 raters, kappa 0.210.
    table = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ])
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_equals_perfect_agreement_and_rejects_single_ratings():
    assert fleiss_kappa(np.array([[2, 0], [0, 3]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        fleiss_kappa(np.array([[1, 0], [0, 2]]))


def test_agreement_report_uses_only_overlapping_items():
    ratings = {
        1: {"ann": "dress", "bob": "dress"},
        2: {"ann": "shirt", "bob": "shoes"},
        3: {"ann": "shoes", "bob": "shoes", "cy": "shoes"},
        4: {"ann": "dress"},  # one rater: not an overlap
    }
    rep = agreement(ratings, ["dress", "shirt", "shoes"])
    assert rep["items"] == 3
    assert rep["fleiss"] == pytest.approx(fleiss_kappa(count_table({k: ratings[k] for k in (1, 2, 3)},
                                                                   ["dress", "shirt", "shoes"])))
    pair = next(p for p in rep["pairs"] if (p["a"], p["b"]) == ("ann", "bob"))
    assert pair["items"] == 3
    assert pair["cohen"] == pytest.approx(cohen_kappa(["dress", "shirt", "shoes"], ["dress", "shoes", "shoes"]))
    assert all(p["b"] != "cy" for p in rep["pairs"])  # cy shares only one item with each


def test_count_table_keeps_unknown_classes():
    t = count_table({1: {"a": "x", "b": "new"}}, ["x"])
    assert t.tolist() == [[1, 1]]
