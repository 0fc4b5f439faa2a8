"""A linear classifier on cached embeddings: the fast `head` retrain (seconds on CPU).

numpy + scikit-learn only: the embeddings are already computed, so no torch is needed here.

`fit_head` fits one multinomial logistic regression at a given L2 strength. `fit_head_cv` is
what a retrain uses: it chooses that strength by cross-validation on the labels it is given
(scikit-learn's `LogisticRegressionCV`, which walks the whole grid warm-started within each
fold), weighs each label by how much it is trusted (``sample_weight``), and returns the
out-of-fold logits at the chosen strength so that the temperature can be fitted on predictions
no head made for its own training labels. Label noise is what makes the choice matter: a
catalogue with a tenth of its labels wrong needs a far stronger penalty than a clean one, and
only the labels themselves can say how much.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

# L2 strength for the head. 1.0 on standardised features is sklearn's default and is not tuned
# to any one dataset.
DEFAULT_C = 1.0
MAX_ITER = 1000
# Logit given to classes absent from the training labels: they are never predicted.
ABSENT_LOGIT = -1e4
# The grid cross-validation chooses from, as C scaled by the set's size: C = scaled_c / (total
# sample weight), because scikit-learn sums the loss over items, so a fixed C would regularise
# a set of 50 labels far more than one of 50,000. From 0.1 (a strong penalty: little beyond the
# class means) to 10^4 (almost none): wide enough for clean and very noisy label sets of any
# size, with nothing tuned to one catalogue.
SCALED_C_GRID = tuple(float(r) for r in np.logspace(-1, 4, 11))
CV_FOLDS = 5
# Log-loss, not accuracy: it ranks neighbouring strengths on every item instead of on the few
# whose argmax changes, and it punishes confident fits to wrong labels, which is what noise does.
CV_SCORING = "neg_log_loss"


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

    def as_linear(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight (n_classes, dim), bias (n_classes,)) of one Linear layer on raw embeddings
        giving the same logits (the standardisation folded in; before temperature): how a
        network's final layer starts from this head before fine-tuning."""
        weight = self.weight / self.scale
        return weight.astype(np.float32), (self.bias - weight @ self.mean).astype(np.float32)

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
    sample_weight: np.ndarray | None = None,
) -> Head:
    """Fit a class-balanced multinomial logistic regression at L2 strength ``C``.

    embeddings: (n, dim) float; labels: (n,) ints in [0, num_classes); sample_weight: (n,) or
    None. Classes with no label get a logit that is never chosen, so the head always has
    ``num_classes`` outputs.
    """
    x, y = _check(embeddings, labels, num_classes)
    mean, scale, z = _standardise(x)
    weight, bias = _one_class(y, num_classes, x.shape[1])
    if weight is None:
        clf = LogisticRegression(C=C, max_iter=MAX_ITER, class_weight="balanced" if balanced else None,
                                 random_state=seed)
        clf.fit(z, y, sample_weight=sample_weight)
        weight, bias = _expand(clf, num_classes)
    return Head(weight, bias, mean, scale)


@dataclass
class CVHead:
    """What `fit_head_cv` found.

    head: fitted on every item at the chosen strength (temperature 1); C, scaled_c: that
    strength (``C = scaled_c / total weight``); scores: mean CV score (negative log-loss) per
    scaled_c of the grid; oof_logits: (n, num_classes) logits of each item from the fold head
    that did not see it, at the chosen strength (None when there were too few items per class
    to cross-validate: then scaled_c is `FALLBACK_SCALED_C` and no out-of-fold logits exist); folds.
    """

    head: Head
    C: float
    scaled_c: float
    scores: dict[float, float]
    oof_logits: np.ndarray | None
    folds: int


# Used when a class has a single label and no split can put it on both sides: a moderate penalty
# from the middle of the grid, since there is nothing to choose with.
FALLBACK_SCALED_C = 10.0


def fit_head_cv(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    sample_weight: np.ndarray | None = None,
    balanced: bool = True,
    folds: int = CV_FOLDS,
    grid: tuple[float, ...] = SCALED_C_GRID,
    seed: int = 0,
    scaled_c: float | None = None,
) -> CVHead:
    """A head whose L2 strength is chosen by stratified K-fold cross-validation.

    embeddings: (n, dim); labels: (n,) ints in [0, num_classes); sample_weight: (n,) > 0, how
    much each label is trusted (it weighs both the fit and the CV score, so distrusted labels
    neither pull the head nor judge the strength). Items a caller wants left out are not passed.
    scaled_c: a strength chosen by an earlier cross-validation on (nearly) the same labels, to
    reuse instead of walking the grid again (K + 1 fits instead of K x grid + K + 1; `scores`
    is then empty); the out-of-fold logits are computed at it all the same.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from threadpoolctl import threadpool_limits

    x, y = _check(embeddings, labels, num_classes)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if w.shape != y.shape or not np.all(w > 0):
        raise ValueError("sample_weight must be (n,) and positive: leave distrusted items out instead of 0")
    total = float(w.sum())
    present, counts = np.unique(y, return_counts=True)
    k = int(min(folds, counts.min()))
    if len(present) < 2 or k < 2:
        c = FALLBACK_SCALED_C / total
        head = fit_head(x, y, num_classes, balanced=balanced, C=c, seed=seed, sample_weight=w)
        return CVHead(head, c, FALLBACK_SCALED_C, {}, None, 0)
    mean, scale, z = _standardise(x)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    class_weight = "balanced" if balanced else None
    scores: dict[float, float] = {}
    # Small BLAS calls on a shared machine: one thread each (see `active.disputes`).
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # lbfgs may stop short of full convergence at the weakest penalties of the grid on
        # separable sets; the log-loss there is already near its floor, so the choice stands.
        warnings.filterwarnings("ignore", category=UserWarning, message=".*converge")
        warnings.filterwarnings("ignore", message=".*lbfgs failed to converge")
        if scaled_c is None:
            fitted: LogisticRegression | LogisticRegressionCV = LogisticRegressionCV(
                Cs=[r / total for r in grid], cv=splitter, scoring=CV_SCORING, class_weight=class_weight,
                max_iter=MAX_ITER, random_state=seed, l1_ratios=(0.0,), use_legacy_attributes=False)
            fitted.fit(z, y, sample_weight=w)  # refits on every item at the chosen strength
            c = float(fitted.C_)
            mean_scores = fitted.scores_.mean(axis=0)[0]  # (n_folds, 1, n_Cs) -> (n_Cs,)
            scores = {round(r, 4): float(sc) for r, sc in zip(grid, mean_scores, strict=True)}
        else:
            c = scaled_c / total
            fitted = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight, random_state=seed)
            fitted.fit(z, y, sample_weight=w)
        at_c = LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight, random_state=seed)
        log_p = cross_val_predict(at_c, z, y, cv=splitter, method="predict_log_proba",
                                  params={"sample_weight": w})
    weight, bias = _expand(fitted, num_classes)
    oof = np.full((len(y), num_classes), ABSENT_LOGIT, dtype=np.float32)
    # Log-probabilities are logits up to a per-row constant, which softmax and temperature
    # scaling both ignore; classes a fold never saw come back as -inf.
    oof[:, present] = np.maximum(log_p, ABSENT_LOGIT)
    return CVHead(Head(weight, bias, mean, scale), c, c * total, scores, oof, k)


def _check(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"embeddings must be (n, dim) and labels (n,); got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("cannot fit a head on zero labelled items")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return x, y.astype(np.int64)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    return mean.astype(np.float32), scale.astype(np.float32), (x - mean) / scale


def _one_class(y: np.ndarray, num_classes: int, dim: int) -> tuple[np.ndarray | None, np.ndarray]:
    """(None, _) when y holds two classes or more; else the head where that one class wins."""
    present = np.unique(y)
    bias = np.full(num_classes, ABSENT_LOGIT, dtype=np.float32)
    if len(present) > 1:
        return None, bias
    bias[present[0]] = 0.0
    return np.zeros((num_classes, dim), dtype=np.float32), bias


def _expand(clf: LogisticRegression | LogisticRegressionCV, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A fitted sklearn classifier as (weight (num_classes, dim), bias (num_classes,)); classes it
    never saw get a logit that never wins."""
    coef, icpt = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # sklearn's binary form: one row for the second class
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
    weight = np.zeros((num_classes, coef.shape[1]), dtype=np.float32)
    bias = np.full(num_classes, ABSENT_LOGIT, dtype=np.float32)
    weight[clf.classes_] = coef
    bias[clf.classes_] = icpt
    return weight, bias
