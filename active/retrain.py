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

import hashlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from active import modelstore, scoring
from active.errors import UserError
from storage import db, items, labels, versions
from storage.enums import Split
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
