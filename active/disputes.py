"""Disputed items: labels a human should look at again.

Three reasons (``storage.tables.DISPUTE_REASONS``):

- ``annotators_disagree``: two or more annotators gave an item different classes;
- ``model_disagrees``: a cross-validated head confidently contradicts a human label;
- ``imported_label_suspect``: the same, for a label that came with the import (a catalogue).

The model-side math (`find_label_issues`) is in the manner of confident learning (Northcutt,
Jiang & Chuang, JAIR 2021), written here on numpy + scikit-learn:

1. **Out-of-fold probabilities**: a head (`models.head.fit_head`) is fitted on K-1 folds of the
   labelled embeddings and predicts the K-th, so no item is judged by a head that saw its own
   label. The head is strongly regularised (`DISPUTE_REG_ITEMS`) so it cannot memorise the
   very labels it is checking.
2. **Per-class thresholds** t_j = mean probability of class j over the items labelled j; an
   item is *confidently* class k when p_k >= t_k. Counting given-vs-confident classes gives the
   confident joint, calibrated to the class counts, and from it the noise transition
   T[i, j] = P(given i | true j).
3. **Cleaned second pass**: the items the confident joint puts off the diagonal are left out
   of the training folds and the out-of-fold probabilities are computed again, so the head that
   judges is not trained on the labels most likely to be wrong.
4. **Ranking** by self-confidence (1 - p_given, cleanlab's ``self_confidence``), and the
   **flagged set** by Bayes: the posterior that the given label is wrong,
   1 - p_given T[given, given] / sum_k p_k T[given, k], is above one half. The stock filter
   (every off-diagonal item of the confident joint) flags most errors but at about a third
   precision on photos whose classes look alike; weighing each disagreement by the estimated
   noise transition keeps the flagged set short enough for a reviewer.

Disputes are only ever *suggestions* for human review: nothing here changes a label. Each
label field (`storage.fields`) is checked on its own: its labels, its classes, its disputes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.enums import DisputeReason, Source, Split
from storage.fields import DEFAULT_FIELD


@dataclass(frozen=True)
class DisputeRule:
    """Why an item is disputed: one entry per reason, read by the CLI, the Review tab and `refresh`."""

    reason: DisputeReason
    display: str
    queue: str  # "pool": the review queue; "holdout": its own list (see storage.disputes.QUEUES)
    needs_model: bool  # found from a model version's embeddings (skipped without one)
    help: str


RULES: dict[str, DisputeRule] = {
    r.reason.value: r
    for r in (
        DisputeRule(DisputeReason.ANNOTATORS_DISAGREE, "annotators disagree", "pool", False,
                    "annotators gave different classes"),
        DisputeRule(DisputeReason.MODEL_DISAGREES, "model disagrees", "pool", True,
                    "a cross-validated head confidently contradicts a person's label"),
        DisputeRule(DisputeReason.IMPORTED_LABEL_SUSPECT, "given label suspect", "pool", True,
                    "the model, or people, contradict an imported label"),
        DisputeRule(DisputeReason.HOLDOUT_LABEL_SUSPECT, "holdout label suspect", "holdout", False,
                    "any of the above on a holdout item: settling it changes the evaluation set"),
    )
}


def rule_name(reason: str) -> str:
    """The display name of a dispute reason (the reason itself when unknown)."""
    return RULES[reason].display if reason in RULES else reason


DEFAULT_FOLDS = 5
# L2 strength of the cross-validated heads, as sklearn's C = DISPUTE_REG_ITEMS / n_train: the
# penalty weighs as much as the loss of about this many items, whatever the set's size (sklearn
# sums the loss over items, so a fixed C would regularise small sets far more than large ones).
# Strong on purpose (C ~ 0.01 at 2,500 items, 100x the labelling head's default): the head must
# learn the classes' broad structure, not fit individual labels, some of which are wrong.
DISPUTE_REG_ITEMS = 25.0
# Flag an item when the posterior that its label is wrong exceeds this (the Bayes decision).
FLAG_POSTERIOR = 0.5
# Fewest labelled items for the model-side check (K-fold needs a few per fold).
MIN_ITEMS = 10


@dataclass(frozen=True)
class LabelIssues:
    """Per item (n,) arrays over the checked items, in input order.

    score: 1 - out-of-fold probability of the given label (higher = more suspect);
    posterior: estimated probability that the given label is wrong;
    flagged: the items to send to review; suggested: the head's class (argmax);
    probs: (n, n_classes) out-of-fold probabilities; thresholds: (n_classes,) t_j;
    noise_rate: the share of wrong labels the calibrated confident joint estimates.
    """

    score: np.ndarray
    posterior: np.ndarray
    flagged: np.ndarray
    suggested: np.ndarray
    probs: np.ndarray
    thresholds: np.ndarray
    noise_rate: float

    def ranking(self) -> np.ndarray:
        """Positions from most to least suspect (ties: input order)."""
        return np.argsort(-self.score, kind="stable")


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or y.shape != (p.shape[0],):
        raise ValueError(f"probs must be (n, n_classes) and labels (n,); got {p.shape} and {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be integers in [0, {p.shape[1]})")
    return p, y.astype(np.int64)


def class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j = mean p_j over items labelled j: (n, c), (n,) -> (c,). Classes nobody carries get
    +inf (nothing is confidently a class no label names)."""
    p, y = _check(probs, labels)
    t = np.full(p.shape[1], np.inf)
    for j in np.unique(y):
        t[j] = p[y == j, j].mean()
    return t


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The class each item is confidently (highest p among those with p_k >= t_k), or -1: (n,)."""
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -1.0)
    out = masked.argmax(axis=1)
    out[~above.any(axis=1)] = -1
    return out


def confident_joint(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated confident joint and each item's confident class.

    Returns (joint (c, c) with rows = given class, columns = confident class, each row
    rescaled to that class's label count; confident (n,) with -1 where none).
    """
    p, y = _check(probs, labels)
    c = p.shape[1]
    conf = confident_classes(p, class_thresholds(p, y))
    joint = np.zeros((c, c))
    has = conf >= 0
    np.add.at(joint, (y[has], conf[has]), 1.0)
    counts = np.bincount(y, minlength=c).astype(np.float64)
    rows = joint.sum(axis=1, keepdims=True)
    joint = np.divide(joint, rows, out=np.zeros_like(joint), where=rows > 0) * counts[:, None]
    # A given class with no confident item at all: assume its labels are right.
    empty = (rows[:, 0] == 0) & (counts > 0)
    joint[empty, empty] = counts[empty]
    return joint, conf


def noise_transition(joint: np.ndarray) -> np.ndarray:
    """T[i, j] = P(given i | true j) from a calibrated joint (c, c); columns sum to 1.
    A true class nobody is confidently in keeps its labels (identity column)."""
    col = joint.sum(axis=0, keepdims=True)
    t = np.divide(joint, col, out=np.zeros_like(joint), where=col > 0)
    for j in np.flatnonzero(col[0] == 0):
        t[j, j] = 1.0
    return t


def posterior_wrong(probs: np.ndarray, labels: np.ndarray, transition: np.ndarray) -> np.ndarray:
    """P(true class != given | x, given) = 1 - p_y T[y, y] / sum_k p_k T[y, k]: (n,)."""
    p, y = _check(probs, labels)
    weighted = p * transition[y]
    total = weighted.sum(axis=1)
    right = weighted[np.arange(len(y)), y]
    return np.where(total > 0, 1.0 - right / np.maximum(total, 1e-300), 0.0)


def issues_from_probs(probs: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Rank and flag label issues from out-of-fold ``probs`` (n, c) and given ``labels`` (n,)."""
    p, y = _check(probs, labels)
    joint, _conf = confident_joint(p, y)
    transition = noise_transition(joint)
    post = posterior_wrong(p, y, transition)
    total = joint.sum()
    return LabelIssues(
        score=1.0 - p[np.arange(len(y)), y],
        posterior=post,
        flagged=post > FLAG_POSTERIOR,
        suggested=p.argmax(axis=1),
        probs=p,
        thresholds=class_thresholds(p, y),
        noise_rate=float(1.0 - np.trace(joint) / total) if total > 0 else 0.0,
    )


FitFn = Callable[..., Any]


def out_of_fold_probs(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    exclude: np.ndarray | None = None,
    C: float | None = None,
    fit: FitFn | None = None,
) -> np.ndarray:
    """Cross-validated probabilities (n, num_classes): item i is predicted by a head fitted on
    the folds that do not hold i. ``exclude`` (n,) bool leaves items out of every training
    fold (they are still predicted). ``C`` defaults to ``DISPUTE_REG_ITEMS / n_train`` per fold;
    ``fit`` defaults to `models.head.fit_head`.
    """
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    if fit is None:
        from models.head import fit_head as fit
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"embeddings must be (n, dim) and labels (n,); got {x.shape} and {y.shape}")
    if folds < 2:
        raise ValueError("folds must be at least 2")
    n = x.shape[0]
    if n < 2:
        raise ValueError("out-of-fold probabilities need at least 2 labelled items")
    counts = np.bincount(y, minlength=num_classes)
    k = int(min(folds, n, max(2, counts.max())))
    keep = np.ones(n, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    out = np.zeros((n, num_classes))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Classes rarer than K cannot sit in every fold; that is expected on small sets.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(n), y))
    # Small BLAS calls: one thread each (a shared machine's thread pools otherwise spin more
    # than they compute: 3.5 min instead of 5 s for 3,800 items on 2 busy cores).
    with threadpool_limits(limits=1):
        for train, test in splits:
            kept = train[keep[train]]
            if kept.size == 0:  # everything in these folds was excluded: use them all after all
                kept = train
            c_fold = C if C is not None else DISPUTE_REG_ITEMS / kept.size
            head = fit(x[kept], y[kept], num_classes, C=c_fold, seed=seed)
            out[test] = head.predict_proba(x[test])
    return out


def find_label_issues(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    C: float | None = None,
    fit: FitFn | None = None,
) -> LabelIssues:
    """Confident-learning label issues from embeddings (n, dim) and given labels (n,).

    Two passes of out-of-fold probabilities: the second leaves the first pass's off-diagonal
    items (those confidently another class) out of training. See the module docstring.
    """
    first = out_of_fold_probs(embeddings, labels, num_classes, folds=folds, seed=seed, C=C, fit=fit)
    y = np.asarray(labels, dtype=np.int64)
    _joint, conf = confident_joint(first, y)
    suspect = (conf >= 0) & (conf != y)
    if not suspect.any():
        return issues_from_probs(first, y)
    second = out_of_fold_probs(embeddings, y, num_classes, folds=folds, seed=seed, exclude=suspect, C=C, fit=fit)
    return issues_from_probs(second, y)


# --------------------------------------------------------------------------- detector metrics


def detection_metrics(truth: np.ndarray, score: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """How a ranking and a flagged set match known errors (all (n,)): average precision of the
    ranking, precision and recall of the flagged set."""
    from sklearn.metrics import average_precision_score

    t = np.asarray(truth, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    tp = int((t & f).sum())
    return {
        "average_precision": float(average_precision_score(t, score)) if t.any() else float("nan"),
        "precision": tp / int(f.sum()) if f.any() else float("nan"),
        "recall": tp / int(t.sum()) if t.any() else float("nan"),
        "flagged": int(f.sum()),
        "errors": int(t.sum()),
    }


# --------------------------------------------------------------------------- annotators


@dataclass(frozen=True)
class Disagreement:
    item_id: int
    score: float  # 1 - share of the majority class (0.5 for a 1:1 split)
    labels: dict[str, str] = field(default_factory=dict)  # annotator -> class


def annotator_disagreements(votes: Iterable[tuple[int, str, str]]) -> list[Disagreement]:
    """Items whose annotators disagree, from (item_id, annotator, class) votes in time order
    (an annotator's latest vote counts). Most divided first, ties by item id."""
    latest: dict[int, dict[str, str]] = {}
    for item_id, annotator, cls in votes:
        latest.setdefault(int(item_id), {})[annotator] = cls
    out = []
    for item_id, by_annotator in latest.items():
        classes = list(by_annotator.values())
        if len(by_annotator) < 2 or len(set(classes)) < 2:
            continue
        top = max(classes.count(c) for c in set(classes))
        out.append(Disagreement(item_id, 1.0 - top / len(classes), dict(sorted(by_annotator.items()))))
    out.sort(key=lambda d: (-d.score, d.item_id))
    return out


# --------------------------------------------------------------------------- the store


@dataclass
class RefreshReport:
    """What `refresh` found: counts per reason and the detector's own estimates."""

    counts: dict[str, int]  # per reason, all fields together
    checked: int
    noise_rate: float | None  # the default field's
    version_id: int | None
    skipped: list[str]
    by_field: dict[str, dict] = field(default_factory=dict)  # field -> counts, checked, noise_rate


def _holdout_apart(by_reason: dict[str, list[tuple[int, float, dict]]],
                   split_of: dict[int, str]) -> dict[str, list[tuple[int, float, dict]]]:
    """Move every suspicion on a holdout item to ``holdout_label_suspect`` (one row per item, the
    highest score, with the reasons found): settling one changes the evaluation set, so they
    never join the pool's review queue."""
    out: dict[str, list[tuple[int, float, dict]]] = {r: [] for r in (*by_reason, DisputeReason.HOLDOUT_LABEL_SUSPECT)}
    holdout: dict[int, tuple[float, dict]] = {}
    for reason, rows in by_reason.items():
        for item_id, score, detail in rows:
            if split_of.get(item_id) != Split.HOLDOUT:
                out[reason].append((item_id, score, detail))
                continue
            best, merged = holdout.get(item_id, (score, {**detail, "reasons": []}))
            merged["reasons"].append(str(reason))
            holdout[item_id] = (max(best, score), merged)
    out[DisputeReason.HOLDOUT_LABEL_SUSPECT] = [(i, s, d) for i, (s, d) in sorted(holdout.items())]
    return out


def _model_rows(
    item_ids: Sequence[int], sources: Sequence[str], given: Sequence[str], classes: Sequence[str],
    issues: LabelIssues,
) -> dict[str, list[tuple[int, float, dict]]]:
    rows: dict[str, list[tuple[int, float, dict]]] = {DisputeReason.MODEL_DISAGREES: [],
                                                      DisputeReason.IMPORTED_LABEL_SUSPECT: []}
    for pos in np.flatnonzero(issues.flagged):
        reason = (DisputeReason.IMPORTED_LABEL_SUSPECT if sources[pos] == Source.IMPORTED
                  else DisputeReason.MODEL_DISAGREES)
        sug = int(issues.suggested[pos])
        detail = {
            "given": given[pos],
            "suggested": classes[sug],
            "p_given": round(float(issues.probs[pos, classes.index(given[pos])]), 4),
            "p_suggested": round(float(issues.probs[pos, sug]), 4),
            "posterior_wrong": round(float(issues.posterior[pos]), 4),
            "source": sources[pos],
        }
        rows[reason].append((int(item_ids[pos]), float(issues.score[pos]), detail))
    return rows


def refresh(project, *, version_id: int | None = None, folds: int = DEFAULT_FOLDS, seed: int = 0) -> RefreshReport:  # noqa: ANN001
    """Recompute the open disputes of every reason and label field from the store and the
    version's cached embeddings; resolved disputes are kept. Items whose current label of a field
    came from a review are not disputed again in that field."""
    from active.errors import UserError
    from storage import db, items, labels, versions
    from storage import disputes as store

    with db.session(project.engine) as s:
        rows = labels.for_items(s)
        split_of = items.splits(s)
        version = versions.get(s, version_id) if version_id is not None else versions.serving(s)
        if version_id is not None and version is None:
            raise UserError(f"no model version {version_id}")
    emb_ids: np.ndarray | None = None
    emb: np.ndarray | None = None
    if version is not None:
        from active.scoring import load_embeddings

        emb_ids, emb = load_embeddings(project, version.id)
    replaced: dict[str, dict[str, list[tuple[int, float, dict]]]] = {}
    by_field: dict[str, dict] = {}
    skipped: list[str] = []
    for name in project.field_names:
        replaced[name], by_field[name], why = _refresh_field(rows, split_of, list(project.classes_of(name)), name,
                                                             version, emb_ids, emb, folds=folds, seed=seed)
        skipped += [w for w in why if w not in skipped]

    def write(s):  # noqa: ANN001, ANN202
        return {name: {reason: store.replace_open(s, reason, found, field=name) for reason, found in per.items()}
                for name, per in replaced.items()}

    written = db.write(project.engine, write)
    counts: dict[str, int] = {}
    for name, per in written.items():
        by_field[name]["counts"] = per
        for reason, n in per.items():
            counts[reason] = counts.get(reason, 0) + n
    main = by_field[project.field_names[0]]
    return RefreshReport(counts, main["checked"], main["noise_rate"], version.id if version else None, skipped,
                         by_field)


def _refresh_field(rows: dict, split_of: dict[int, str], classes: list[str], name: str, version,  # noqa: ANN001
                   emb_ids: np.ndarray | None, emb: np.ndarray | None, *, folds: int,
                   seed: int) -> tuple[dict[str, list[tuple[int, float, dict]]], dict, list[str]]:
    """The disputes of one label field: (reason -> rows to open, {checked, noise_rate}, why a
    check was skipped)."""
    from storage import disputes as store
    from storage import labels
    from storage.meaning import contradicts_import, in_field, is_human_class

    votes = []
    current = {}
    for item_id, group in rows.items():
        cur = labels.derive(group, name)
        if cur is None or cur.source == Source.REVIEW:
            continue
        current[item_id] = cur
        votes += [(item_id, r.annotator, r.label) for r in in_field(labels.effective(group), name) if is_human_class(r)]
    disagreements = annotator_disagreements(votes)
    replaced: dict[str, list[tuple[int, float, dict]]] = {
        DisputeReason.ANNOTATORS_DISAGREE: [(d.item_id, d.score, {"labels": d.labels}) for d in disagreements],
        # People contradicted the given label (kept in step label by label by `store.follow_label`).
        DisputeReason.IMPORTED_LABEL_SUSPECT: [
            (i, store.CONTRADICTED_SCORE, {"given": c.imported, "people_say": c.label, "source": "people"})
            for i, c in current.items() if contradicts_import(c)],
    }
    skipped: list[str] = []
    noise_rate = None
    checked = 0
    what = "" if name == DEFAULT_FIELD else f" of field {name!r}"
    if version is None or emb_ids is None or emb is None:
        skipped.append("no model version yet: run `active score` for the model-side checks")
    else:
        row_of = {int(i): r for r, i in enumerate(np.asarray(emb_ids).tolist())}
        keep = [i for i in sorted(current) if i in row_of and current[i].label in classes]
        if len(keep) < MIN_ITEMS or len({current[i].label for i in keep}) < 2:
            skipped.append(f"model-side checks{what} need at least {MIN_ITEMS} labelled items of 2 classes "
                           f"with embeddings (have {len(keep)})")
        else:
            y = np.array([classes.index(current[i].label) for i in keep])
            issues = find_label_issues(emb[[row_of[i] for i in keep]], y, len(classes), folds=folds, seed=seed)
            for reason, found in _model_rows(keep, [current[i].source for i in keep],
                                             [current[i].label for i in keep], classes, issues).items():
                replaced[reason] = replaced.get(reason, []) + found
            noise_rate = issues.noise_rate
            checked = len(keep)
    return _holdout_apart(replaced, split_of), {"checked": checked, "noise_rate": noise_rate}, skipped

