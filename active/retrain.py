"""Train a new model version on the current labels and publish it atomically.

Both modes snapshot the labels at the start (annotators keep labelling), train a *fresh* model,
calibrate it by temperature scaling on a stratified validation slice of the labelled pool (never
the holdout), evaluate on the labelled ``holdout`` split when there is one, and publish (files
first, row last). A crash anywhere leaves the previous version serving.

- ``head``: a class-balanced logistic regression on the cached embeddings of the latest network
  version (pretrained or full): seconds on CPU.
- ``full``: fine-tunes the whole configured backbone from its pretrained weights
  (`models.train.fine_tune`).

Training data: pool items whose current label is in the taxonomy (imported labels included: they
are the given labels, the best we have until humans say otherwise).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from active import modelstore, scoring
from active.errors import UserError
from storage import aliases, db, items, labels, versions
from storage.enums import Split
from storage.snapshots import labels_hash
from storage.tables import ModelVersion

if TYPE_CHECKING:
    from active.project import Project

MODES = ("head", "full")
MIN_CLASSES = 2


@dataclass
class LabelledSet:
    """A frozen view of the labels: item ids, class indices and paths of the training pool
    (train + validation slice) and of the labelled holdout."""

    snapshot: str  # sha256 of the (item, label) pairs trained on
    max_alias_id: int  # with max_label_id, pins the labels as read then (see `reproduce_snapshot`)
    holdout_snapshot: str  # sha256 of the holdout's (item, label) pairs evaluated on
    max_label_id: int
    train_ids: np.ndarray
    train_y: np.ndarray
    val_ids: np.ndarray
    val_y: np.ndarray
    holdout_ids: np.ndarray
    holdout_y: np.ndarray
    paths: dict[int, str]
    skipped: int  # labelled pool items whose class is not in the taxonomy

    @property
    def n_labels(self) -> int:
        return len(self.train_ids) + len(self.val_ids)


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


def holdout_labels(project: Project) -> list[tuple[int, str]]:
    """The holdout's (item id, class) pairs that a version is evaluated on: readable holdout items
    whose current label is in the taxonomy (what `take_snapshot` puts in ``holdout_ids``)."""
    classes = set(project.config.classes)
    with db.session(project.engine) as s:
        current = labels.current(s, items.ids(s, split=Split.HOLDOUT))
    return sorted((i, c.label) for i, c in current.items() if c.label in classes)


def holdout_hash(project: Project) -> str:
    """`storage.snapshots.labels_hash` of today's `holdout_labels` (versions record theirs)."""
    return labels_hash(holdout_labels(project))


@dataclass(frozen=True)
class Comparison:
    """A new version against the previous one with a head, on the new version's holdout labels."""

    previous_id: int
    same_holdout: bool  # False: the previous one was re-evaluated on these labels from its stored predictions
    previous: dict  # accuracy, macro_f1 (and the rest of `models.calibration.evaluate`)
    current: dict

    @property
    def worse(self) -> bool:
        return (self.current.get("accuracy", 0.0) < self.previous.get("accuracy", 0.0)
                or self.current.get("macro_f1", 0.0) < self.previous.get("macro_f1", 0.0))


def compare_on_holdout(project: Project, version: ModelVersion) -> Comparison | None:
    """``version`` against the newest earlier version with a head, both on the holdout labels
    ``version`` was evaluated on. None when there is nothing to compare (no holdout, no earlier
    head, or one whose classes or holdout predictions do not fit)."""
    current = (version.metrics or {}).get("holdout")
    if not current or not current.get("n"):
        return None
    with db.session(project.engine) as s:
        earlier = [v for v in versions.all_versions(s) if v.id < version.id and v.classes]
    if not earlier:
        return None
    prev = earlier[-1]
    recorded = (prev.metrics or {}).get("holdout") or {}
    if recorded.get("n") and prev.metrics.get("holdout_labels_sha256") == version.metrics.get("holdout_labels_sha256"):
        return Comparison(int(prev.id), True, recorded, current)
    if list(prev.classes) != list(version.classes):
        return None
    pairs = holdout_labels(project)
    with db.session(project.engine) as s:
        preds = versions.predictions(s, prev.id, [i for i, _ in pairs])
    index = {c: k for k, c in enumerate(version.classes)}
    kept = [(preds[i].probs, index[c]) for i, c in pairs if i in preds and preds[i].probs is not None]
    if not kept:
        return None
    probs = np.array([p for p, _ in kept], dtype=np.float64)
    return Comparison(int(prev.id), False, _evaluate(probs, np.array([y for _, y in kept]), list(version.classes)),
                      current)


def _training_pairs(current: dict, split: dict[int, str], classes: Iterable[str]) -> list[tuple[int, str]]:
    """(item id, class) of readable pool items whose current label is one of ``classes``."""
    wanted = set(classes)
    return sorted((i, c.label) for i, c in current.items() if split.get(i) == Split.POOL and c.label in wanted)


def reproduce_snapshot(project: Project, version: ModelVersion) -> str | None:
    """The training-set hash of ``version`` recomputed from today's store: labels up to its label
    snapshot read through the aliases of that time, against its classes as published. Equal to
    ``version.snapshot`` because labels are append-only; None for a version not trained on labels."""
    m = version.metrics or {}
    if "label_snapshot_max_id" not in m:
        return None
    with db.session(project.engine) as s:
        _, current = labels.snapshot(s, upto_label_id=int(m["label_snapshot_max_id"]),
                                     upto_alias_id=int(m.get("alias_max_id", 0)))
        published = versions.get(s, version.id, as_stored=True)
        readable = set(items.ids(s))
        split = {i: sp for i, sp in items.splits(s).items() if i in readable}
    return labels_hash(_training_pairs(current, split, published.classes if published else []))


def take_snapshot(project: Project, *, seed: int = 0) -> LabelledSet:
    classes = project.config.classes
    index = {c: k for k, c in enumerate(classes)}
    with db.session(project.engine) as s:
        top, current = labels.snapshot(s)
        top_alias = aliases.max_id(s)
        readable = set(items.ids(s))
        split = {i: sp for i, sp in items.splits(s).items() if i in readable}
        paths = {i: p for i, p in items.paths(s).items() if i in readable}
    pool = _training_pairs(current, split, index)
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
        snapshot=labels_hash(pool), max_alias_id=top_alias, holdout_snapshot=labels_hash(hold), max_label_id=top,
        train_ids=ids[tr], train_y=y[tr], val_ids=ids[va], val_y=y[va],
        holdout_ids=np.array([i for i, _ in hold], dtype=np.int64),
        holdout_y=np.array([index[c] for _, c in hold], dtype=np.int64),
        paths=paths, skipped=skipped,
    )


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
                       "alias_max_id": data.max_alias_id,
                       "holdout_labels_sha256": data.holdout_snapshot,
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
    from models.calibration import fit_temperature
    from models.head import fit_head

    classes = list(project.config.classes)
    source = network_version(project)
    # Items the network has not embedded yet (new imports) run through it now; the rest is cached.
    scoring.score(project, version_id=source.id, batch_size=batch_size, num_workers=num_workers,
                  device=device, progress=progress)
    ids, emb = scoring.load_embeddings(project, source.id)
    row_of = {int(i): k for k, i in enumerate(ids.tolist())}

    def rows(item_ids: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = np.array([int(i) in row_of for i in item_ids.tolist()], dtype=bool)
        return emb[[row_of[int(i)] for i in item_ids[keep].tolist()]].reshape(-1, emb.shape[1]), y[keep]

    x_tr, y_tr = rows(data.train_ids, data.train_y)
    x_va, y_va = rows(data.val_ids, data.val_y)
    fit_started = time.perf_counter()
    head = fit_head(x_tr, y_tr, len(classes), balanced=True, seed=seed)
    head.temperature = fit_temperature(head.logits(x_va), y_va) if len(y_va) else 1.0
    fit_seconds = time.perf_counter() - fit_started
    metrics: dict = {"temperature": head.temperature,
                     "train": {"n": int(len(y_tr)), "per_class": _class_counts(y_tr, classes),
                               "fit_seconds": round(fit_seconds, 3)}}
    if len(y_va):
        metrics["validation"] = _evaluate(head.predict_proba(x_va), y_va, classes)
    x_ho, y_ho = rows(data.holdout_ids, data.holdout_y)
    if len(y_ho):
        metrics["holdout"] = _evaluate(head.predict_proba(x_ho), y_ho, classes)
    staging = modelstore.new_staging(project)
    np.savez(staging / modelstore.HEAD_FILE, **head.to_arrays())
    image_size = int(source.artifacts.get("image_size", project.config.image_size))
    version = ModelVersion(
        backbone=source.backbone, weights=source.weights, mode="head", classes=classes, metrics=metrics,
        artifacts={"head": modelstore.HEAD_FILE, "embeddings_from": source.id, "image_size": image_size,
                   "init_weights": source.artifacts.get("init_weights", source.weights)},
    )
    return version, staging


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
