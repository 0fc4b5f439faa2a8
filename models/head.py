"""A linear classifier on cached embeddings: the fast `head` retrain (seconds on CPU).

numpy + scikit-learn only: the embeddings are already computed, so no torch is needed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

# L2 strength for the head. 1.0 on standardised features is sklearn's default and is not tuned
# to any one dataset.
DEFAULT_C = 1.0
MAX_ITER = 1000
# Logit given to classes absent from the training labels: they are never predicted.
ABSENT_LOGIT = -1e4


@dataclass
class Head:
    """Standardise, then a linear map to logits.

    weight: (n_classes, dim); bias: (n_classes,); mean, scale: (dim,)
    """

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    temperature: float = 1.0

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """embeddings: (n, dim) -> logits: (n, n_classes), before temperature."""
        z = (np.asarray(embeddings, dtype=np.float32) - self.mean) / self.scale
        return z @ self.weight.T + self.bias

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: (n, n_classes), rows sum to 1."""
        return softmax(self.logits(embeddings), self.temperature)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias, "mean": self.mean, "scale": self.scale,
                "temperature": np.array(self.temperature, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Head:
        return cls(arrays["weight"], arrays["bias"], arrays["mean"], arrays["scale"],
                   float(arrays["temperature"]))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature: (n, c) -> (n, c) float32 (rows sum to 1)."""
    z = np.asarray(logits, dtype=np.float32) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    balanced: bool = True,
    C: float = DEFAULT_C,
    seed: int = 0,
) -> Head:
    """Fit a class-balanced multinomial logistic regression.

    embeddings: (n, dim) float; labels: (n,) ints in [0, num_classes). Classes with no label get
    a logit that is never chosen, so the head always has ``num_classes`` outputs.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"embeddings must be (n, dim) and labels (n,); got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("cannot fit a head on zero labelled items")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    present = np.unique(y)
    weight = np.zeros((num_classes, x.shape[1]), dtype=np.float32)
    bias = np.full(num_classes, ABSENT_LOGIT, dtype=np.float32)
    if len(present) == 1:  # one class only: it wins everywhere
        bias[present[0]] = 0.0
    else:
        clf = LogisticRegression(C=C, max_iter=MAX_ITER, class_weight="balanced" if balanced else None,
                                 random_state=seed)
        clf.fit(z, y)
        coef, icpt = clf.coef_, clf.intercept_
        if len(present) == 2:  # sklearn's binary form: one row for the second class
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
        weight[clf.classes_] = coef
        bias[clf.classes_] = icpt
    return Head(weight, bias, mean.astype(np.float32), scale.astype(np.float32))
