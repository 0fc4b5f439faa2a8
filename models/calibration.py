"""Temperature scaling and evaluation metrics. numpy only.

Temperature scaling (Guo et al. 2017): one scalar T fitted on a validation slice by minimising
the negative log-likelihood of softmax(logits / T); it changes confidence, never the argmax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
# Search range of 1/T. The NLL is convex in 1/T, so a golden-section search finds the optimum.
INV_T_RANGE = (0.02, 20.0)
SEARCH_STEPS = 60
# Fewer validation items than this give a temperature that is mostly noise: keep T = 1.
MIN_CALIBRATION_ITEMS = 10


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood. logits: (n, c); labels: (n,) ints."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising NLL of softmax(logits / T). logits: (n, c); labels: (n,).

    Returns 1.0 when there are fewer than `MIN_CALIBRATION_ITEMS` items.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (n, c) and labels (n,); got {logits.shape} and {labels.shape}")
    if len(labels) < MIN_CALIBRATION_ITEMS:
        return 1.0
    lo, hi = INV_T_RANGE
    ratio = (math.sqrt(5) - 1) / 2

    def f(inv_t: float) -> float:
        return nll(logits, labels, 1.0 / inv_t)

    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(SEARCH_STEPS):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return float(1.0 / ((a + b) / 2))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, *, bins: int = ECE_BINS) -> float:
    """ECE: the bin-weighted |accuracy - confidence| over equal-width confidence bins.
    probs: (n, c); labels: (n,)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def evaluate(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall, confusion matrix and ECE, as JSON-able values.

    probs: (n, c) calibrated probabilities; labels: (n,) ints into ``classes``. Macro-F1 averages
    over the classes that occur in the labels or the predictions (as scikit-learn does).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(classes)
    if probs.shape != (len(labels), n_classes):
        raise ValueError(f"probs must be (n, {n_classes}) for n={len(labels)} labels; got {probs.shape}")
    if len(labels) == 0:
        return {"n": 0}
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, labels=np.arange(n_classes))
    present = np.flatnonzero(cm.sum(axis=1) > 0)
    recall = recall_score(labels, preds, labels=present, average=None, zero_division=0)
    return {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, labels),
        "nll": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()),
        "per_class_recall": {classes[int(k)]: float(r) for k, r in zip(present, recall, strict=True)},
        "confusion": cm.tolist(),
        "classes": list(classes),
    }
