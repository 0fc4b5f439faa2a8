"""models.calibration: temperature scaling and metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from models.calibration import (
    evaluate,
    expected_calibration_error,
    fit_temperature,
    log_softmax,
    nll,
)


def _sample(n: int, c: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated logits and labels drawn from their softmax."""
    logits = rng.normal(0, 2.0, size=(n, c))
    p = np.exp(log_softmax(logits))
    labels = np.array([rng.choice(c, p=row) for row in p])
    return logits, labels


def test_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    logits, labels = _sample(4000, 5, rng)
    t = fit_temperature(logits * 3.0, labels)  # three times too sharp
    assert t == pytest.approx(3.0, rel=0.15)
    assert nll(logits * 3.0, labels, t) < nll(logits * 3.0, labels, 1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.15)


def test_too_few_items_keep_temperature_one() -> None:
    assert fit_temperature(np.eye(3) * 5, np.array([0, 1, 2])) == 1.0


def test_ece_extremes() -> None:
    onehot = np.eye(4)
    assert expected_calibration_error(onehot, np.arange(4)) == 0.0
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)


def test_evaluate_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, size=50)
    m = evaluate(probs, labels, ["a", "b", "c", "d"])
    preds = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((preds == labels).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    cm = np.array(m["confusion"])
    assert cm.shape == (4, 4) and cm.sum() == 50 and np.trace(cm) == (preds == labels).sum()
    for k, c in enumerate("abcd"):
        assert m["per_class_recall"][c] == pytest.approx(cm[k, k] / cm[k].sum())
    with pytest.raises(ValueError, match="probs must be"):
        evaluate(probs[:, :3], labels, ["a", "b", "c", "d"])


def test_weighted_temperature_equals_repeating_the_items() -> None:
    rng = np.random.default_rng(1)
    logits, labels = _sample(300, 4, rng)
    weights = rng.integers(0, 4, size=300)
    repeated = np.repeat(np.arange(300), weights)
    assert fit_temperature(logits * 2, labels, weights) == pytest.approx(
        fit_temperature(logits[repeated] * 2, labels[repeated]), rel=1e-4)
    with pytest.raises(ValueError, match="sample_weight"):
        fit_temperature(logits, labels, weights[:10])
