"""Agreement between annotators: Cohen's kappa (two raters) and Fleiss' kappa (any number).

Pure functions on labels and count tables (numpy, scikit-learn), so the dashboard and tests share
them. Fleiss' kappa is written here: scikit-learn has none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

# Fewer items than this shared by two annotators give a kappa too noisy to show.
MIN_OVERLAP = 2


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters who labelled the same items (``a[i]`` and ``b[i]`` per item).

    scikit-learn's ``cohen_kappa_score``, except when both raters always use one and the same
    class: then chance agreement is 1, scikit-learn gives NaN, and agreement is perfect: 1.0.
    """
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b):
        raise ValueError(f"the two raters must label the same items ({len(a)} != {len(b)})")
    if not a:
        raise ValueError("cohen_kappa needs at least one item")
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(cohen_kappa_score(list(a), list(b)))


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from a count table.

    counts: (n_items, n_classes), ``counts[i, j]`` = raters who put item i in class j. Items may
    have different numbers of raters (each needs at least 2); per-item agreement is
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), chance agreement P_e = sum_j p_j^2 with p_j the
    share of all ratings in class j.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError("counts must be a non-empty (n_items, n_classes) table")
    if (counts < 0).any():
        raise ValueError("counts cannot be negative")
    n_i = counts.sum(axis=1)
    if (n_i < 2).any():
        raise ValueError("every item needs at least 2 ratings for Fleiss' kappa")
    p_i = ((counts**2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1.0:
        return 1.0
    return float((p_bar - p_e) / (1.0 - p_e))


def count_table(ratings: Mapping[int, Mapping[str, str]], classes: Sequence[str]) -> np.ndarray:
    """ratings: item -> {annotator: class} -> counts (n_items, n_classes) in ``classes`` order.

    Classes not in ``classes`` get extra columns at the end (a renamed class still counts)."""
    columns = list(classes) + sorted({c for r in ratings.values() for c in r.values()} - set(classes))
    index = {c: i for i, c in enumerate(columns)}
    out = np.zeros((len(ratings), len(columns)), dtype=np.int64)
    for row, given in enumerate(ratings.values()):
        for cls in given.values():
            out[row, index[cls]] += 1
    return out


def agreement(ratings: Mapping[int, Mapping[str, str]], classes: Sequence[str]) -> dict:
    """Agreement on items labelled by two or more annotators.

    ratings: item -> {annotator: class} (each annotator's current class for the item).
    Returns {"items": n overlapping, "fleiss": kappa | None, "pairs": [{"a", "b", "items", "cohen"}]}.
    """
    shared = {i: r for i, r in ratings.items() if len(r) >= 2}
    fleiss = fleiss_kappa(count_table(shared, classes)) if len(shared) >= MIN_OVERLAP else None
    names = sorted({a for r in shared.values() for a in r})
    pairs = []
    for a, b in combinations(names, 2):
        both = [(r[a], r[b]) for r in shared.values() if a in r and b in r]
        if len(both) >= MIN_OVERLAP:
            xs, ys = zip(*both, strict=True)
            pairs.append({"a": a, "b": b, "items": len(both), "cohen": cohen_kappa(xs, ys)})
    return {"items": len(shared), "fleiss": fleiss, "pairs": pairs}
