"""models.head: the cross-validated, trust-weighted head on embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from models.head import SCALED_C_GRID, fit_head, fit_head_cv


def _blobs(rng: np.random.Generator, n_classes: int, per_class: int, dim: int, spread: float):  # noqa: ANN202
    centres = rng.normal(0, 1.0, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    return centres[y] + rng.normal(0, spread, (y.size, dim)), y


def _flip(y: np.ndarray, n_classes: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    noisy = y.copy()
    which = rng.random(y.size) < rate
    noisy[which] = (y[which] + rng.integers(1, n_classes, which.sum())) % n_classes
    return noisy


def test_cv_head_gives_out_of_fold_logits_and_its_choice() -> None:
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 3, 40, dim=12, spread=0.6)
    cv = fit_head_cv(x, y, 4)  # a fourth class nobody carries
    assert cv.folds == 5 and cv.oof_logits.shape == (120, 4)
    assert cv.scaled_c in SCALED_C_GRID and pytest.approx(cv.scaled_c) == cv.C * 120
    assert len(cv.scores) == len(SCALED_C_GRID) and max(cv.scores.values()) == cv.scores[round(cv.scaled_c, 4)]
    assert (cv.oof_logits.argmax(1) == y).mean() > 0.9 and (cv.head.predict_proba(x).argmax(1) == y).mean() > 0.9
    assert cv.head.predict_proba(x)[:, 3].max() < 1e-6  # the absent class is never predicted


def test_noisy_labels_make_cross_validation_choose_a_stronger_penalty() -> None:
    rng = np.random.default_rng(1)
    x, y = _blobs(rng, 4, 100, dim=64, spread=1.5)
    clean = fit_head_cv(x, y, 4)
    noisy = fit_head_cv(x, _flip(y, 4, 0.3, rng), 4)
    assert noisy.scaled_c < clean.scaled_c


def test_weights_decide_between_conflicting_labels() -> None:
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 2, 30, dim=4, spread=0.3)
    # Twenty items at one point: twelve say class 0, eight say class 1.
    point = np.tile(rng.normal(0, 1.0, (1, 4)), (20, 1))
    xs = np.vstack([x, point])
    ys = np.concatenate([y, [0] * 12 + [1] * 8])
    probe = point[:1]
    plain = fit_head_cv(xs, ys, 2)
    assert plain.head.predict_proba(probe).argmax() == 0
    w = np.ones(len(ys))
    w[-8:] = 2.0  # the eight are trusted twice as much: 16 against 12
    weighted = fit_head_cv(xs, ys, 2, sample_weight=w)
    assert weighted.head.predict_proba(probe).argmax() == 1


def test_too_few_labels_per_class_fall_back_without_out_of_fold() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one label: no split keeps it on both sides
    cv = fit_head_cv(x, y, 3)
    assert cv.oof_logits is None and cv.folds == 0 and cv.head.num_classes == 3
    with pytest.raises(ValueError, match="positive"):
        fit_head_cv(x, y, 3, sample_weight=np.array([1, 1, 0, 1, 1, 1.0]))
    assert fit_head(x, np.zeros(6, dtype=int), 3).predict_proba(x).argmax(1).tolist() == [0] * 6
