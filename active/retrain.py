"""Train a new model version on the current labels and publish it atomically.

Both modes snapshot the labels at the start (annotators keep labelling), train a *fresh* model,
calibrate it by temperature scaling on a stratified validation slice of the labelled pool (never
the holdout), evaluate on the labelled ``holdout`` split when there is one, and publish (files
first, row last). A crash anywhere leaves the previous version serving.

- ``head``: a class-balanced logistic regression on the cached embeddings of the latest network
  version (pretrained or full), its L2 strength chosen by cross-validation on the labels given
  (`models.head.fit_head_cv`): seconds on CPU. It trains on every labelled pool item and is
  calibrated on out-of-fold predictions instead of a slice held back.
- ``full``: fine-tunes the whole configured backbone from its pretrained weights
  (`models.train.fine_tune`).

Training data: pool items whose current label is in the taxonomy, each weighted by how far it is
trusted (`TRUST_WEIGHTS`: review > human > imported). Imported labels are the catalogue's given
labels, the best we have until humans say otherwise, except those the latest out-of-fold
dispute check (`active disputes --refresh`) finds suspect: an open ``imported_label_suspect``
dispute on the very label still current leaves that item out (`trust_weights`). The metrics of
every version say what it trusted, how many labels it left out, and what it was calibrated on.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from active import modelstore, scoring
from active.errors import UserError
from storage import db, disputes, items, labels, versions
from storage.enums import DisputeReason, Source, Split
from storage.tables import ModelVersion

if TYPE_CHECKING:
    from active.project import Project

MODES = ("head", "full")
MIN_CLASSES = 2
# How much one label of each source weighs in training (storage.labels.SOURCES): a reviewer's
# decision over an annotator's, an annotator's over the catalogue's. Ratios, not tuned values:
# what matters is the order, and that one disputed human label is not outvoted by one look-alike.
TRUST_WEIGHTS = {Source.REVIEW: 4.0, Source.CONSENSUS: 2.0, Source.SINGLE: 2.0, Source.IMPORTED: 1.0}
HUMAN_SOURCES = (Source.REVIEW, Source.CONSENSUS, Source.SINGLE)
# An imported label whose open dispute gives a posterior of being wrong above this is left out;
# below it, it is down-weighted by (1 - posterior). The dispute check flags at the same Bayes
# threshold (`active.disputes.FLAG_POSTERIOR`), so every flagged label is left out.
LEAVE_OUT_POSTERIOR = 0.5
# Temperature on human/review labels only once there are this many among the training labels
# (a one-parameter fit, but on fewer it follows a handful of hard items); else on the
# out-of-fold predictions of every label kept, weighted by trust.
MIN_TRUSTED_FOR_CALIBRATION = 100


@dataclass
class LabelledSet:
    """A frozen view of the labels: item ids, class indices and paths of the training pool
    (train + validation slice) and of the labelled holdout."""

    snapshot: str  # sha256 of the (item, label) pairs trained on
    max_label_id: int
    train_ids: np.ndarray
    train_y: np.ndarray
    val_ids: np.ndarray
    val_y: np.ndarray
    holdout_ids: np.ndarray
    holdout_y: np.ndarray
    paths: dict[int, str]
    skipped: int  # labelled pool items whose class is not in the taxonomy
    # item id -> where its current label comes from (storage.labels.SOURCES)
    source: dict[int, str] = field(default_factory=dict)
    # item id -> posterior that its current (imported) label is wrong, from an open dispute
    suspect: dict[int, float] = field(default_factory=dict)

    @property
    def n_labels(self) -> int:
        return len(self.train_ids) + len(self.val_ids)

    def all_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, classes) of every labelled pool item, train and validation slice together."""
        ids = np.concatenate([self.train_ids, self.val_ids])
        order = np.argsort(ids, kind="stable")
        return ids[order], np.concatenate([self.train_y, self.val_y])[order]


@dataclass(frozen=True)
class Trust:
    """Per-item training weights of a label set, aligned with its ids (n,).

    weight: 0 for labels left out; sources: each label's source; summary: what a version's
    metrics record (the weights per source, how many labels of each it trained on, how many it
    left out and down-weighted).
    """

    weight: np.ndarray
    sources: np.ndarray
    summary: dict

    @property
    def kept(self) -> np.ndarray:
        return self.weight > 0


def trust_weights(item_ids: np.ndarray, source: dict[int, str], suspect: dict[int, float]) -> Trust:
    """Weights (n,) for ``item_ids`` from their label sources and the open disputes' posteriors.

    Human and review labels get `TRUST_WEIGHTS` of their source; an imported label gets 1, times
    (1 - posterior) when its dispute's posterior is at most `LEAVE_OUT_POSTERIOR`, and 0 (left
    out) above it. ``suspect`` should only hold items whose current label is the disputed one.
    """
    ids = [int(i) for i in np.asarray(item_ids).tolist()]
    sources = np.array([str(source.get(i, Source.IMPORTED)) for i in ids], dtype=object)
    weight = np.array([TRUST_WEIGHTS.get(src, TRUST_WEIGHTS[Source.IMPORTED]) for src in sources], dtype=np.float64)
    left_out: list[int] = []
    down = 0
    for k, i in enumerate(ids):
        if sources[k] != Source.IMPORTED or i not in suspect:
            continue
        post = float(suspect[i])
        if post > LEAVE_OUT_POSTERIOR:
            weight[k] = 0.0
            left_out.append(i)
        else:
            weight[k] *= 1.0 - post
            down += 1
    kept = weight > 0
    human = np.isin(sources, [str(h) for h in HUMAN_SOURCES])
    summary = {
        "weights": {str(k): v for k, v in TRUST_WEIGHTS.items()},
        "trained_on": {"review": int(((sources == Source.REVIEW) & kept).sum()),
                       "human": int((np.isin(sources, [str(Source.CONSENSUS), str(Source.SINGLE)]) & kept).sum()),
                       "imported": int(((sources == Source.IMPORTED) & kept).sum())},
        "left_out_suspect_imported": len(left_out),
        "left_out_items": sorted(left_out),  # the audit trail: which catalogue labels it ignored
        "down_weighted_imported": down,
        "suspects_known": len(suspect),
        "leave_out_posterior": LEAVE_OUT_POSTERIOR,
        "n_human_or_review": int((human & kept).sum()),
    }
    return Trust(weight, sources, summary)


def snapshot_hash(pairs: list[tuple[int, str]]) -> str:
    """sha256 of sorted (item id, label) pairs: what a version was trained on."""
    h = hashlib.sha256()
    for item_id, label in sorted(pairs):
        h.update(f"{item_id}\t{label}\n".encode())
    return h.hexdigest()


def stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, val) of ``y`` (n,): about ``fraction`` of each class goes to val, and
    every class keeps at least one training item."""
    train, val = [], []
    for c in np.unique(y):
        pos = rng.permutation(np.flatnonzero(y == c))
        n_val = min(int(round(len(pos) * fraction)), len(pos) - 1)
        val += pos[:n_val].tolist()
        train += pos[n_val:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def take_snapshot(project: Project, *, seed: int = 0) -> LabelledSet:
    classes = project.config.classes
    index = {c: k for k, c in enumerate(classes)}
    with db.session(project.engine) as s:
        top, current = labels.snapshot(s)
        readable = set(items.ids(s))
        split = {i: sp for i, sp in items.splits(s).items() if i in readable}
        paths = {i: p for i, p in items.paths(s).items() if i in readable}
        open_suspects = disputes.open_disputes(s, reason=DisputeReason.IMPORTED_LABEL_SUSPECT)
    pool = sorted((i, c.label) for i, c in current.items() if split.get(i) == Split.POOL and c.label in index)
    skipped = sum(1 for i, c in current.items() if split.get(i) == Split.POOL and c.label not in index)
    hold = sorted((i, c.label) for i, c in current.items() if split.get(i) == Split.HOLDOUT and c.label in index)
    ids = np.array([i for i, _ in pool], dtype=np.int64)
    y = np.array([index[c] for _, c in pool], dtype=np.int64)
    present = len(set(y.tolist()))
    if present < MIN_CLASSES:
        raise UserError(f"need labelled pool items of at least {MIN_CLASSES} classes to train; "
                        f"have {len(ids)} labels in {present} class(es): label more items first")
    tr, va = stratified_split(y, project.config.retrain.holdout_fraction_for_calibration,
                              np.random.default_rng(seed))
    return LabelledSet(
        snapshot=snapshot_hash(pool), max_label_id=top,
        train_ids=ids[tr], train_y=y[tr], val_ids=ids[va], val_y=y[va],
        holdout_ids=np.array([i for i, _ in hold], dtype=np.int64),
        holdout_y=np.array([index[c] for _, c in hold], dtype=np.int64),
        paths=paths, skipped=skipped,
        source={i: c.source for i, c in current.items() if split.get(i) == "pool"},
        suspect=_suspects(open_suspects, current),
    )


def _suspects(open_suspects: list, current: dict) -> dict[int, float]:  # noqa: ANN001
    """item id -> posterior of being wrong, for open imported-label disputes whose item still
    carries the very imported label that was judged (a later label or re-import makes it moot)."""
    out: dict[int, float] = {}
    for d in open_suspects:
        cur = current.get(d.item_id)
        detail = d.detail or {}
        if cur is None or cur.source != Source.IMPORTED or detail.get("given") != cur.label:
            continue
        post = detail.get("posterior_wrong")
        out[int(d.item_id)] = float(post) if post is not None else 1.0
    return out


def network_version(project: Project) -> ModelVersion:
    """The latest version that runs its own network (its embeddings feed head retrains),
    publishing the pretrained version 1 when the project has none."""
    scoring.ensure_version(project)
    with db.session(project.engine) as s:
        return next(v for v in reversed(versions.all_versions(s)) if v.mode != "head")


def _class_counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = Counter(y.tolist())
    return {classes[k]: int(n) for k, n in sorted(counts.items())}


def retrain(
    project: Project,
    *,
    mode: str = "head",
    epochs: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    score_after: bool = True,
    progress: bool = False,
) -> ModelVersion:
    """Train, calibrate, evaluate and publish a new version; then score the pool with it unless
    ``score_after`` is False. Returns the published `ModelVersion` (metrics["holdout"] holds
    accuracy, macro_f1, ece, per_class_recall, confusion when the project has a labelled holdout)."""
    if mode not in MODES:
        raise UserError(f"unknown retrain mode {mode!r}: use one of {', '.join(MODES)}")
    started = time.perf_counter()
    modelstore.clear_stale_staging(project)
    data = take_snapshot(project, seed=seed)
    parent = modelstore.current_version(project)
    if mode == "head":
        version, staging = _train_head(project, data, seed=seed, progress=progress, batch_size=batch_size,
                                       device=device, num_workers=num_workers)
    else:
        version, staging = _train_full(project, data, epochs=epochs, batch_size=batch_size, device=device,
                                       num_workers=num_workers, seed=seed, progress=progress)
    if parent is None:  # the head path published the pretrained version 1 meanwhile
        parent = modelstore.current_version(project)
    version.parent_id = parent.id if parent is not None else None
    version.snapshot = data.snapshot
    version.n_labels = data.n_labels
    version.metrics = {**version.metrics, "label_snapshot_max_id": data.max_label_id,
                       "skipped_labels_not_in_taxonomy": data.skipped,
                       "seconds": round(time.perf_counter() - started, 2)}
    modelstore.write_json(staging / "meta.json", {"mode": mode, "backbone": version.backbone,
                                                  "weights": version.weights, "classes": version.classes,
                                                  "metrics": version.metrics, "artifacts": version.artifacts})
    version = modelstore.publish(project, version, staging)
    if score_after:
        scoring.score(project, version_id=version.id, batch_size=batch_size, num_workers=num_workers,
                      device=device, progress=progress)
    return version


def _evaluate(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    from models.calibration import evaluate

    return evaluate(probs, y, classes)


def _train_head(project: Project, data: LabelledSet, *, seed: int, progress: bool, batch_size: int | None,
                device: str | None, num_workers: int | None) -> tuple[ModelVersion, object]:
    classes = list(project.config.classes)
    source = network_version(project)
    # Items the network has not embedded yet (new imports) run through it now; the rest is cached.
    scoring.score(project, version_id=source.id, batch_size=batch_size, num_workers=num_workers,
                  device=device, progress=progress)
    ids, emb = scoring.load_embeddings(project, source.id)
    row_of = {int(i): k for k, i in enumerate(ids.tolist())}

    def rows(item_ids: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = np.array([int(i) in row_of for i in item_ids.tolist()], dtype=bool)
        x = emb[[row_of[int(i)] for i in item_ids[keep].tolist()]].reshape(-1, emb.shape[1])
        return x, y[keep], item_ids[keep]

    # Every labelled pool item trains (no slice held back): calibration uses out-of-fold logits.
    pool_ids, pool_y = data.all_pool()
    x_all, y_all, id_all = rows(pool_ids, pool_y)
    fitted, metrics = fit_trusted_head(x_all, y_all, id_all, data, classes, seed=seed)
    x_ho, y_ho, _ = rows(data.holdout_ids, data.holdout_y)
    if len(y_ho):
        metrics["holdout"] = _evaluate(fitted.predict_proba(x_ho), y_ho, classes)
    staging = modelstore.new_staging(project)
    np.savez(staging / modelstore.HEAD_FILE, **fitted.to_arrays())
    image_size = int(source.artifacts.get("image_size", project.config.image_size))
    version = ModelVersion(
        backbone=source.backbone, weights=source.weights, mode="head", classes=classes, metrics=metrics,
        artifacts={"head": modelstore.HEAD_FILE, "embeddings_from": source.id, "image_size": image_size,
                   "init_weights": source.artifacts.get("init_weights", source.weights)},
    )
    return version, staging


def fit_trusted_head(x: np.ndarray, y: np.ndarray, item_ids: np.ndarray, data: LabelledSet, classes: list[str],
                     *, seed: int = 0):  # noqa: ANN201 - models.head.Head, imported lazily
    """The head of a `head` retrain and its metrics: trust weights, CV-chosen L2 strength,
    temperature on trusted out-of-fold predictions.

    x: (n, dim) embeddings of the labelled pool items ``item_ids`` (n,) with classes y (n,).
    Returns (head with its temperature, metrics dict with "train", "trust", "regularisation",
    "calibration", "temperature" and, when there were out-of-fold logits, "validation": the
    out-of-fold evaluation on the calibration labels).
    """
    from models.calibration import fit_temperature
    from models.head import fit_head_cv, softmax

    trust = trust_weights(item_ids, data.source, data.suspect)
    kept = trust.kept
    if len(set(y[kept].tolist())) < MIN_CLASSES:
        raise UserError(f"after leaving out {trust.summary['left_out_suspect_imported']} suspect imported labels, "
                        f"fewer than {MIN_CLASSES} classes remain: review the disputes first (`active disputes`)")
    x_k, y_k, w_k, src_k = x[kept], y[kept], trust.weight[kept], trust.sources[kept]
    fit_started = time.perf_counter()
    cv = fit_head_cv(x_k, y_k, len(classes), sample_weight=w_k, seed=seed)
    head = cv.head
    metrics: dict = {"train": {"n": int(len(y_k)), "per_class": _class_counts(y_k, classes)},
                     "trust": trust.summary,
                     "regularisation": {"C": cv.C, "scaled_c": cv.scaled_c, "folds": cv.folds,
                                        "cv_neg_log_loss": {str(k): round(v, 5) for k, v in cv.scores.items()}}}
    calibration: dict = {"on": "none", "n": 0}
    if cv.oof_logits is not None:
        human = np.isin(src_k, [str(h) for h in HUMAN_SOURCES])
        if human.sum() >= MIN_TRUSTED_FOR_CALIBRATION:
            on, weights = human, None
            calibration["on"] = "human_and_review_out_of_fold"
        else:
            on, weights = np.ones(len(y_k), dtype=bool), w_k
            calibration["on"] = "all_kept_out_of_fold_trust_weighted"
        head.temperature = fit_temperature(cv.oof_logits[on], y_k[on], None if weights is None else weights[on])
        calibration["n"] = int(on.sum())
        metrics["validation"] = {**_evaluate(softmax(cv.oof_logits[on], head.temperature), y_k[on], classes),
                                 "what": "out-of-fold predictions of the calibration labels"}
    metrics["train"]["fit_seconds"] = round(time.perf_counter() - fit_started, 3)
    metrics["calibration"] = {**calibration, "temperature": head.temperature}
    metrics["temperature"] = head.temperature
    return head, metrics


def _train_full(project: Project, data: LabelledSet, *, epochs: int | None, batch_size: int | None,
                device: str | None, num_workers: int | None, seed: int, progress: bool) -> tuple[ModelVersion, object]:
    import torch

    from models.backbones import eval_transform, train_transform
    from models.calibration import fit_temperature
    from models.head import softmax
    from models.infer import embed_and_predict
    from models.train import fine_tune, fold_temperature

    cfg = project.config
    classes = list(cfg.classes)
    epochs = epochs or cfg.retrain.full_epochs
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    spec = modelstore.weights_spec(cfg.backbone, cfg.weights)
    torch.manual_seed(seed)
    model = modelstore.build_network(cfg.backbone, len(classes), cfg.weights)  # fresh, from the factory
    t_eval = eval_transform(spec, image_size=cfg.image_size)
    result = fine_tune(
        model, [data.paths[i] for i in data.train_ids.tolist()], data.train_y,
        [data.paths[i] for i in data.val_ids.tolist()], data.val_y,
        train_transform=train_transform(spec, image_size=cfg.image_size), eval_transform=t_eval,
        epochs=epochs, batch_size=batch_size, device=device, num_workers=num_workers, seed=seed, progress=progress,
    )
    metrics: dict = {"train": {"n": int(len(data.train_y)), "per_class": _class_counts(data.train_y, classes),
                               "epochs": epochs, "best_epoch": result.best_epoch, "history": result.history}}
    temperature = 1.0
    if result.val_logits is not None and len(result.val_index):
        y_va = data.val_y[result.val_index]
        temperature = fit_temperature(result.val_logits, y_va)
        metrics["validation"] = _evaluate(softmax(result.val_logits, temperature), y_va, classes)
    metrics["temperature"] = temperature
    model = fold_temperature(result.model, temperature)
    if len(data.holdout_ids):
        inf = embed_and_predict(model, [data.paths[i] for i in data.holdout_ids.tolist()], transform=t_eval,
                                batch_size=batch_size or 64, num_workers=num_workers, device=device)
        if len(inf.index):
            metrics["holdout"] = _evaluate(inf.probs, data.holdout_y[inf.index], classes)
    staging = modelstore.new_staging(project)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / modelstore.CHECKPOINT)
    version = ModelVersion(
        backbone=cfg.backbone, weights=spec.name, mode="full", classes=classes, metrics=metrics,
        artifacts={"checkpoint": modelstore.CHECKPOINT, "embeddings": modelstore.EMBEDDINGS_DIR,
                   "image_size": cfg.image_size, "init_weights": spec.name},
    )
    return version, staging
