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

Label fields (`storage.fields`): a ``head`` retrain fits one head per field on the same cached
embeddings, each on that field's current labels with the same trust, calibration and holdout
evaluation; the default field's head is the version's own (``classes``, ``head.npz``, the
top-level metrics), another field's is ``artifacts["fields"][name]`` (its classes and head file)
and ``metrics["fields"][name]`` (its figures, or why it was skipped: fewer than two classes
labelled). A ``full`` fine-tune gives the network one output block per field with labels of two
classes (`models.train.fine_tune` with ``outputs``): the loss sums the fields' trust-weighted
cross-entropies, early stopping follows their mean validation accuracy, each field has its own
temperature and holdout figures, recorded in the same places as a head retrain's, and
``artifacts["fields"][name]["outputs"]`` says where its block lies (`modelstore.output_layout`).
A single-field project's network is exactly what it was: one block, the default field's.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from active import modelstore, scoring
from active.errors import UserError
from storage import aliases, db, disputes, items, labels, versions
from storage.enums import DisputeReason, Source, Split
from storage.fields import DEFAULT_FIELD, field_classes, field_metrics
from storage.snapshots import labels_hash
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
# A head refresh every few dozen labels reuses the L2 strength that the last cross-validation
# chose while fewer label rows of its field than this share of the labels it was chosen on have been added
# since (human decisions, re-imports, flips; any of them may move the choice), on the same
# classes, class aliases and embeddings. Walking the whole grid costs ~10x the refit, and on a
# small shared machine that CPU is taken from the annotators' requests.
REUSE_STRENGTH_CHANGE = 0.05


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
    field_rows: int = 0  # label rows of the field up to max_label_id (`storage.labels.count_rows`)
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


def holdout_labels(project: Project, field: str = DEFAULT_FIELD) -> list[tuple[int, str]]:
    """The holdout's (item id, class) pairs that a version is evaluated on: readable holdout items
    whose current label of ``field`` is in its classes (what `take_snapshot` puts in ``holdout_ids``)."""
    classes = set(project.classes_of(field))
    with db.session(project.engine) as s:
        current = labels.current(s, items.ids(s, split=Split.HOLDOUT), field=field)
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


def take_snapshot(project: Project, *, seed: int = 0, field: str = DEFAULT_FIELD) -> LabelledSet:
    """The labels of ``field`` as they are now, split for training (see `LabelledSet`)."""
    classes = project.classes_of(field)
    index = {c: k for k, c in enumerate(classes)}
    with db.session(project.engine) as s:
        top, current = labels.snapshot(s, field=field)
        field_rows = labels.count_rows(s, field=field, upto_label_id=top)
        top_alias = aliases.max_id(s)
        readable = set(items.ids(s))
        split = {i: sp for i, sp in items.splits(s).items() if i in readable}
        paths = {i: p for i, p in items.paths(s).items() if i in readable}
        open_suspects = disputes.open_disputes(s, reason=DisputeReason.IMPORTED_LABEL_SUSPECT, field=field)
    pool = _training_pairs(current, split, index)
    skipped = sum(1 for i, c in current.items() if split.get(i) == Split.POOL and c.label not in index)
    hold = sorted((i, c.label) for i, c in current.items() if split.get(i) == Split.HOLDOUT and c.label in index)
    ids = np.array([i for i, _ in pool], dtype=np.int64)
    y = np.array([index[c] for _, c in pool], dtype=np.int64)
    present = len(set(y.tolist()))
    if present < MIN_CLASSES:
        what = "" if field == DEFAULT_FIELD else f" of field {field!r}"
        raise UserError(f"need labelled pool items{what} of at least {MIN_CLASSES} classes to train; "
                        f"have {len(ids)} labels in {present} class(es): label more items first")
    tr, va = stratified_split(y, project.config.retrain.holdout_fraction_for_calibration,
                              np.random.default_rng(seed))
    return LabelledSet(
        snapshot=labels_hash(pool), max_alias_id=top_alias, holdout_snapshot=labels_hash(hold), max_label_id=top,
        train_ids=ids[tr], train_y=y[tr], val_ids=ids[va], val_y=y[va],
        holdout_ids=np.array([i for i, _ in hold], dtype=np.int64),
        holdout_y=np.array([index[c] for _, c in hold], dtype=np.int64),
        paths=paths, skipped=skipped, field_rows=field_rows,
        source={i: c.source for i, c in current.items() if split.get(i) == Split.POOL},
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
    """The network whose embeddings a head retrain uses: the newest version that runs its own
    network (pretrained or fine-tuned), is not held back and covers the pool; before any covers
    it, the newest such version (publishing the pretrained version 1 when the project has none).
    A fine-tune still scoring the pool is not used yet: its embeddings are not all there."""
    scoring.ensure_version(project)
    with db.session(project.engine) as s:
        nets = [v for v in reversed(versions.all_versions(s)) if v.mode != "head" and not modelstore.held_back(v)]
        covering = next((v for v in nets if versions.covers_pool(s, v.id)), None)
    return covering or nets[0]


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
    from active import jobs

    # Run by a worker, this is part of its job; called directly (the CLI), it is recorded as a
    # job of this process, so `active jobs` and the labeller see where it stands.
    with jobs.foreground(project, mode, {"epochs": epochs, "seed": seed, "score_after": score_after}):
        return _retrain(project, mode=mode, epochs=epochs, batch_size=batch_size, device=device,
                        num_workers=num_workers, seed=seed, score_after=score_after, progress=progress)


def _retrain(project: Project, *, mode: str, epochs: int | None, batch_size: int | None, device: str | None,
             num_workers: int | None, seed: int, score_after: bool, progress: bool) -> ModelVersion:
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
    if mode == "full":
        version.metrics["serving"] = serving_decision(version.metrics.get("holdout"),
                                                      modelstore.serving_version(project))
    version = modelstore.publish(project, version, staging)
    if mode == "full":
        _after_fine_tune(project, version, score=score_after, batch_size=batch_size, num_workers=num_workers,
                         device=device, progress=progress)
    elif score_after:
        scoring.score(project, version_id=version.id, batch_size=batch_size, num_workers=num_workers,
                      device=device, progress=progress)
    return version


def _after_fine_tune(project: Project, version: ModelVersion, *, score: bool, batch_size: int | None,
                     num_workers: int | None, device: str | None, progress: bool) -> None:
    """A published fine-tune: held back, it stays unscored (so it never serves) and says so;
    otherwise the pool is scored with the new network, and only then does it serve
    (`storage.versions.serving`: the newest version covering the pool). When a head refreshed
    meanwhile is newer and serves instead, a head is fitted on the new network's embeddings at
    once so that the fine-tune reaches the labeller. (Every label field with labels has its own
    output block in the fine-tune, so its suggestions come with it.)"""
    from active import policy

    reporter = policy.ProgressWriter(project, resume=True)
    decision = version.metrics.get("serving", {})
    if decision.get("held_back"):
        reporter.phase("done", note=f"version {version.id} {decision['reason']}")
        return
    if not score:
        reporter.phase("done", note=f"version {version.id} published; it serves once the pool is scored")
        return
    reporter.phase("scoring the pool", version=version.id)
    scoring.score(project, version_id=version.id, batch_size=batch_size, num_workers=num_workers, device=device,
                  progress=progress)
    serving = modelstore.serving_version(project)
    if serving is not None and serving.id != version.id:
        reporter.phase("fitting a head on the new network", version=version.id)
        retrain(project, mode="head", batch_size=batch_size, num_workers=num_workers, device=device,
                progress=progress)
    reporter.phase("done", note=f"version {version.id} serves")


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

    def rows(item_ids: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep, x = scoring.rows_of(ids, emb, item_ids)
        return x, y[keep], item_ids[keep]

    with db.session(project.engine) as s:
        earlier = versions.all_versions(s)

    def fit(field_data: LabelledSet, names: list[str], field: str = DEFAULT_FIELD):  # noqa: ANN202
        # Every labelled pool item trains (no slice held back): calibration uses out-of-fold logits.
        pool_ids, pool_y = field_data.all_pool()
        x_all, y_all, id_all = rows(pool_ids, pool_y)
        # Each field's head may reuse the L2 strength an earlier head of that field chose.
        fitted, metrics = fit_trusted_head(x_all, y_all, id_all, field_data, names, seed=seed,
                                           earlier=(earlier, source.id), field=field)
        x_ho, y_ho, _ = rows(field_data.holdout_ids, field_data.holdout_y)
        if len(y_ho):
            metrics["holdout"] = _evaluate(fitted.predict_proba(x_ho), y_ho, names)
        return fitted, metrics

    fitted, metrics = fit(data, classes)
    staging = modelstore.new_staging(project)
    np.savez(staging / modelstore.HEAD_FILE, **fitted.to_arrays())
    field_artifacts: dict[str, dict] = {}
    field_metrics: dict[str, dict] = {}
    for name in project.field_names[1:]:
        try:
            field_data = take_snapshot(project, seed=seed, field=name)
            names = list(project.classes_of(name))
            head, field_metrics[name] = fit(field_data, names, name)
        except UserError as exc:  # too few labels of this field yet: the other fields still train
            field_metrics[name] = {"skipped": str(exc)}
            continue
        field_metrics[name].update({"label_snapshot_sha256": field_data.snapshot,
                                    "holdout_labels_sha256": field_data.holdout_snapshot,
                                    "n_labels": field_data.n_labels})
        np.savez(staging / field_head_file(name), **head.to_arrays())
        field_artifacts[name] = {"classes": names, "head": field_head_file(name)}
    if field_metrics:
        metrics["fields"] = field_metrics
    image_size = int(source.artifacts.get("image_size", project.config.image_size))
    artifacts = {"head": modelstore.HEAD_FILE, "embeddings_from": source.id, "image_size": image_size,
                 "init_weights": source.artifacts.get("init_weights", source.weights)}
    if field_artifacts:
        artifacts["fields"] = field_artifacts
    version = ModelVersion(backbone=source.backbone, weights=source.weights, mode="head", classes=classes,
                           metrics=metrics, artifacts=artifacts)
    return version, staging


def field_head_file(field: str) -> str:
    """The head file of a label field other than the default one (its name is checked by storage.fields)."""
    return f"head-{field}.npz"


def strength_to_reuse(earlier: list[ModelVersion], data: LabelledSet, classes: list[str], embeddings_from: int,
                      n_kept: int, *, field: str = DEFAULT_FIELD) -> dict | None:
    """The "regularisation" metrics of label field ``field`` in the newest head version whose
    cross-validated L2 strength for that field still holds for ``data`` with ``n_kept`` labels
    trained on (see `REUSE_STRENGTH_CHANGE`), or None: cross-validate again. The label rows
    counted are the field's own: another field's new labels leave its choice standing."""
    for v in reversed(earlier):
        reg = field_metrics(v.metrics, field).get("regularisation", {})
        if v.mode != "head" or "chosen_at_label_id" not in reg:
            continue
        if (field_classes(v, field) != classes or v.artifacts.get("embeddings_from") != embeddings_from
                or reg.get("chosen_alias_max_id") != data.max_alias_id):
            return None
        # Versions from before per-field counts recorded the label id only: rows of every field since.
        added = (data.field_rows - int(reg["chosen_at_field_rows"]) if "chosen_at_field_rows" in reg
                 else data.max_label_id - int(reg["chosen_at_label_id"]))
        # Labels left out or taken back in (a dispute check) change the set without a label row.
        moved = abs(n_kept - int(reg["chosen_on_n"]))
        if added >= 0 and added + moved <= REUSE_STRENGTH_CHANGE * int(reg["chosen_on_n"]):
            return {**reg, "chosen_in_version": reg.get("chosen_in_version", v.id)}
        return None
    return None


def fit_trusted_head(x: np.ndarray, y: np.ndarray, item_ids: np.ndarray, data: LabelledSet, classes: list[str],
                     *, seed: int = 0, earlier: tuple[list[ModelVersion], int] | None = None,
                     field: str = DEFAULT_FIELD):  # noqa: ANN201
    """The head of label field ``field`` of a `head` retrain and its metrics: trust weights,
    CV-chosen L2 strength (or the one an earlier head of that field chose, when it still holds:
    ``earlier`` = (the versions, the id of the network whose embeddings ``x`` are), see
    `strength_to_reuse`), temperature on trusted out-of-fold predictions.

    x: (n, dim) embeddings of the labelled pool items ``item_ids`` (n,) with classes y (n,).
    Returns (head with its temperature, metrics dict with "train", "trust", "regularisation",
    "calibration", "temperature" and, when there were out-of-fold logits, "validation": the
    out-of-fold evaluation on the calibration labels).
    """
    from models.head import fit_head_cv

    trust = trust_weights(item_ids, data.source, data.suspect)
    kept = trust.kept
    if len(set(y[kept].tolist())) < MIN_CLASSES:
        raise UserError(f"after leaving out {trust.summary['left_out_suspect_imported']} suspect imported labels, "
                        f"fewer than {MIN_CLASSES} classes remain: review the disputes first (`active disputes`)")
    x_k, y_k, w_k, src_k = x[kept], y[kept], trust.weight[kept], trust.sources[kept]
    reuse = strength_to_reuse(earlier[0], data, classes, earlier[1], len(y_k), field=field) if earlier else None
    fit_started = time.perf_counter()
    cv = fit_head_cv(x_k, y_k, len(classes), sample_weight=w_k, seed=seed,
                     scaled_c=float(reuse["scaled_c"]) if reuse else None)
    head = cv.head
    if reuse:
        chosen = {**reuse, "chosen": "reused"}
    elif cv.folds == 0:  # too few labels per class to cross-validate: nothing to reuse later
        chosen = {"chosen": "fallback"}
    else:
        chosen = {"chosen": "cross_validation", "chosen_at_label_id": data.max_label_id,
                  "chosen_at_field_rows": data.field_rows,
                  "chosen_on_n": int(len(y_k)), "chosen_alias_max_id": data.max_alias_id,
                  "cv_neg_log_loss": {str(k): round(v, 5) for k, v in cv.scores.items()}}
    metrics: dict = {"train": {"n": int(len(y_k)), "per_class": _class_counts(y_k, classes)},
                     "trust": trust.summary,
                     "regularisation": {**chosen, "C": cv.C, "scaled_c": cv.scaled_c, "folds": cv.folds}}
    calibration: dict = {"on": "none", "n": 0, "temperature": 1.0}
    if cv.oof_logits is not None:
        head.temperature, calibration, metrics["validation"] = calibrate(
            cv.oof_logits, y_k, src_k, w_k, classes, what="out_of_fold")
    metrics["train"]["fit_seconds"] = round(time.perf_counter() - fit_started, 3)
    metrics["calibration"] = calibration
    metrics["temperature"] = head.temperature
    return head, metrics


def calibrate(logits: np.ndarray, y: np.ndarray, sources: np.ndarray, weights: np.ndarray, classes: list[str], *,
              what: str) -> tuple[float, dict, dict]:
    """The temperature from predictions no model made for its own training labels (out-of-fold,
    or a held-back validation slice): on the human and review labels among them when there are
    `MIN_TRUSTED_FOR_CALIBRATION`, else on all of them weighted by trust. Never the holdout.

    logits: (n, c); y, sources, weights: (n,). Returns (temperature, what it was fitted on, the
    evaluation of those labels at that temperature).
    """
    from models.calibration import fit_temperature
    from models.head import softmax

    human = np.isin(sources, [str(h) for h in HUMAN_SOURCES])
    if human.sum() >= MIN_TRUSTED_FOR_CALIBRATION:
        on, w, name = human, None, f"human_and_review_{what}"
    else:
        on, w, name = np.ones(len(y), dtype=bool), weights, f"all_kept_{what}_trust_weighted"
    t = fit_temperature(logits[on], y[on], None if w is None else w[on])
    evaluation = {**_evaluate(softmax(logits[on], t), y[on], classes), "what": f"{what} predictions of the calibration labels"}
    return t, {"on": name, "n": int(on.sum()), "temperature": t}, evaluation


@dataclass
class _Targets:
    """One side (training or validation) of a fine-tune on several label fields: its items (n,)
    and, one column per field (k), each item's class or `models.train.NO_LABEL`, the label's
    trust weight (0 where none) and source (None where none); ``trust``: per field, the
    `Trust` of that field's labels on this side (left-out labels are NO_LABEL above)."""

    ids: np.ndarray
    y: np.ndarray
    w: np.ndarray
    sources: np.ndarray
    trust: list[Trust]


def _targets(item_ids: np.ndarray, sets: list[LabelledSet], no_label: int) -> _Targets:
    """The labels of ``item_ids`` in each field of ``sets`` (k fields), trust-weighted; items left
    with no label in any field (every one left out as suspect) are dropped."""
    pos = {int(i): r for r, i in enumerate(item_ids.tolist())}
    y = np.full((len(item_ids), len(sets)), no_label, dtype=np.int64)
    w = np.zeros(y.shape)
    sources = np.full(y.shape, None, dtype=object)
    trusts = []
    for f, d in enumerate(sets):
        ids_f, y_f = d.all_pool()
        mine = np.array([int(i) in pos for i in ids_f.tolist()], dtype=bool)
        trust = trust_weights(ids_f[mine], d.source, d.suspect)
        trusts.append(trust)
        rows = np.array([pos[int(i)] for i in ids_f[mine][trust.kept].tolist()], dtype=np.int64)
        y[rows, f] = y_f[mine][trust.kept]
        w[rows, f] = trust.weight[trust.kept]
        sources[rows, f] = trust.sources[trust.kept]
    keep = (y != no_label).any(axis=1)
    return _Targets(item_ids[keep], y[keep], w[keep], sources[keep], trusts)


def _item_split(sets: list[LabelledSet]) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) item ids of a fine-tune on several fields. An image is on one side
    for every field (validated on one field, it must not have been trained on for another): the
    side its first field in project order put it on (each field's `stratified_split`), so the
    default field keeps exactly its own split and the validation share stays the configured one."""
    validation: dict[int, bool] = {}
    for d in sets:
        for i in d.val_ids.tolist():
            validation.setdefault(int(i), True)
        for i in d.train_ids.tolist():
            validation.setdefault(int(i), False)
    return (np.array(sorted(i for i, v in validation.items() if not v), dtype=np.int64),
            np.array(sorted(i for i, v in validation.items() if v), dtype=np.int64))


# A label field a fine-tune trains: (its name, its classes, its labels).
_FieldSet = tuple[str, list[str], LabelledSet]


def _fine_tune_fields(project: Project, data: LabelledSet, *, seed: int) -> tuple[list[_FieldSet], dict[str, dict]]:
    """The label fields a fine-tune trains an output block for, the default field first, with
    their classes and labels; and the metrics of those it leaves out (fewer than two classes
    labelled): {field: {"skipped": why}}."""
    trained = [(DEFAULT_FIELD, list(project.config.classes), data)]
    skipped: dict[str, dict] = {}
    for name in project.field_names[1:]:
        try:
            trained.append((name, list(project.classes_of(name)), take_snapshot(project, seed=seed, field=name)))
        except UserError as exc:
            skipped[name] = {"skipped": str(exc)}
    return trained, skipped


def _both_sides(train: Trust, val: Trust) -> dict:
    """A fine-tune's "trust" metrics for one field: the training side's summary, with the labels
    left out on both sides (training and validation)."""
    return {**train.summary, "left_out_suspect_imported": train.summary["left_out_suspect_imported"]
            + val.summary["left_out_suspect_imported"],
            "left_out_items": sorted(train.summary["left_out_items"] + val.summary["left_out_items"])}


def _calibrate_blocks(result: object, va: _Targets, fields: list[_FieldSet], blocks: list[tuple[int, int]],
                      per_field: list[dict], *, no_label: int) -> list[float]:
    """Each field's temperature from its output block's logits on its validation labels
    (`calibrate`), recorded in ``per_field`` ("calibration", "validation", "temperature");
    1.0 for a field without validation labels. Returns the temperatures, one per block."""
    temperatures = []
    for f, ((_, classes, _), (a, b)) in enumerate(zip(fields, blocks, strict=True)):
        per_field[f]["calibration"] = {"on": "none", "n": 0, "temperature": 1.0}
        t = 1.0
        if result.val_logits is not None and len(result.val_index):
            pos = result.val_index  # rows of the logits: positions in the validation items
            has = va.y[pos, f] != no_label
            if has.any():
                t, per_field[f]["calibration"], per_field[f]["validation"] = calibrate(
                    result.val_logits[has, a:b], va.y[pos, f][has], va.sources[pos, f][has], va.w[pos, f][has],
                    classes, what="validation_slice")
        per_field[f]["temperature"] = t
        temperatures.append(t)
    return temperatures


def _holdout_blocks(model: object, fields: list[_FieldSet], blocks: list[tuple[int, int]], paths: dict[int, str],
                    per_field: list[dict], *, transform: object, batch_size: int, num_workers: int | None,
                    device: str | None) -> None:
    """Every field's holdout figures (`_evaluate` of its block's softmax on its own labelled
    holdout items) into ``per_field`` as "holdout"; the holdout images of every field run once."""
    from models.head import softmax
    from models.infer import embed_and_predict

    ids = sorted(set().union(*(d.holdout_ids.tolist() for _, _, d in fields)))
    if not ids:
        return
    inf = embed_and_predict(model, [paths[i] for i in ids], transform=transform, batch_size=batch_size,
                            num_workers=num_workers, device=device)
    row_of = {ids[k]: r for r, k in enumerate(inf.index.tolist())}  # item id -> row of the logits
    for f, ((_, classes, d), (a, b)) in enumerate(zip(fields, blocks, strict=True)):
        have = [(row_of[i], c) for i, c in zip(d.holdout_ids.tolist(), d.holdout_y.tolist(), strict=True)
                if i in row_of]
        if have:
            rows = np.array([r for r, _ in have], dtype=np.int64)
            per_field[f]["holdout"] = _evaluate(softmax(inf.logits[rows, a:b]), np.array([c for _, c in have]),
                                                classes)


def _train_full(project: Project, data: LabelledSet, *, epochs: int | None, batch_size: int | None,
                device: str | None, num_workers: int | None, seed: int, progress: bool) -> tuple[ModelVersion, object]:
    import torch

    from active import policy
    from models.backbones import eval_transform, output_blocks, train_transform
    from models.train import LR_BACKBONE, LR_HEAD, NO_LABEL, fine_tune, fold_temperature

    cfg = project.config
    epochs = epochs or cfg.retrain.full_epochs
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {epochs}")
    spec = modelstore.weights_spec(cfg.backbone, cfg.weights)
    # One output block per label field with labels of two classes (the default field's first).
    fields, skipped = _fine_tune_fields(project, data, seed=seed)
    sets = [d for _, _, d in fields]
    sizes = [len(c) for _, c, _ in fields]
    blocks = output_blocks(sizes)
    # Trust as in head mode: suspect catalogue labels are left out of training and validation.
    train_ids, val_ids = _item_split(sets)
    tr, va = _targets(train_ids, sets, NO_LABEL), _targets(val_ids, sets, NO_LABEL)
    torch.manual_seed(seed)
    model = modelstore.build_network(cfg.backbone, sum(sizes), cfg.weights)  # fresh, from the factory
    reporter = policy.ProgressWriter(project)
    reporter.phase("fitting a linear probe to start from")
    init_heads = _start_from_linear_probe(project, model, spec.name, tr.ids, tr.y, tr.w,
                                          [(c, a) for (_, c, _), (a, _) in zip(fields, blocks, strict=True)],
                                          no_label=NO_LABEL, seed=seed)
    t_eval = eval_transform(spec, image_size=cfg.image_size)
    result = fine_tune(
        model, [data.paths[i] for i in tr.ids.tolist()], tr.y, [data.paths[i] for i in va.ids.tolist()], va.y,
        train_transform=train_transform(spec, image_size=cfg.image_size), eval_transform=t_eval,
        epochs=epochs, batch_size=batch_size, device=device, num_workers=num_workers, seed=seed, progress=progress,
        train_weights=tr.w, balanced=True, patience=cfg.retrain.full_patience, on_progress=reporter,
        # A final layer that starts from the probes already sees well: one small rate for all.
        lr_head=LR_BACKBONE if all(i["from"] == "linear_probe" for i in init_heads) else LR_HEAD,
        outputs=sizes,
    )
    reporter.phase("evaluating")
    per_field = [{"train": {"n": int((tr.y[:, f] != NO_LABEL).sum()),
                            "per_class": _class_counts(tr.y[tr.y[:, f] != NO_LABEL, f], classes),
                            "init_head": init_heads[f]},
                  "trust": _both_sides(tr.trust[f], va.trust[f])} for f, (_, classes, _) in enumerate(fields)]
    temperatures = _calibrate_blocks(result, va, fields, blocks, per_field, no_label=NO_LABEL)
    model = fold_temperature(result.model, temperatures, outputs=sizes)
    _holdout_blocks(model, fields, blocks, data.paths, per_field, transform=t_eval, batch_size=batch_size or 64,
                    num_workers=num_workers, device=device)
    top = per_field[0]
    metrics: dict = {**top, "train": {"n": top["train"]["n"], "per_class": top["train"]["per_class"],
                                      "epochs": epochs, "best_epoch": result.best_epoch,
                                      "epochs_run": len(result.history), "history": result.history,
                                      "balanced_sampling": True, "init_head": init_heads[0]}}
    field_metrics: dict[str, dict] = dict(skipped)
    field_artifacts: dict[str, dict] = {}
    for f in range(1, len(fields)):
        name, classes, d = fields[f]
        field_metrics[name] = {**per_field[f], "label_snapshot_sha256": d.snapshot,
                               "holdout_labels_sha256": d.holdout_snapshot, "n_labels": d.n_labels}
        field_artifacts[name] = {"classes": classes, "outputs": list(blocks[f])}
    if field_metrics:
        metrics["fields"] = field_metrics
    staging = modelstore.new_staging(project)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / modelstore.CHECKPOINT)
    artifacts = {"checkpoint": modelstore.CHECKPOINT, "embeddings": modelstore.EMBEDDINGS_DIR,
                 "image_size": cfg.image_size, "init_weights": spec.name}
    if field_artifacts:
        artifacts["fields"] = field_artifacts
    version = ModelVersion(backbone=cfg.backbone, weights=spec.name, mode="full", classes=fields[0][1],
                           metrics=metrics, artifacts=artifacts)
    return version, staging


def _start_from_linear_probe(project: Project, model: object, weights: str, ids: np.ndarray, y: np.ndarray,
                             w: np.ndarray, blocks: list[tuple[list[str], int]], *, no_label: int,
                             seed: int) -> list[dict]:
    """Start the network's new final layer from linear probes (LP-FT, Kumar et al. 2022, "Fine-
    Tuning can Distort Pretrained Features"): per label field, a head fitted as in `head` mode on
    the pretrained network's stored embeddings of the training items labelled in that field,
    folded into that field's output block. A randomly started layer sends large, wrong
    gradients into the pretrained features for the first epochs; started from the probe, the
    fine-tune begins at the head's accuracy and only improves on it, which matters on a CPU
    that affords two or three epochs.

    ids: (n,) training items; y, w: (n, k) their class and trust weight per field (``no_label``
    where none); blocks: per field, (its classes, the first output of its block).
    Returns per field what the metrics record: {"from": "linear_probe", ...} or {"from": "random", "why": ...}.
    """
    from models.backbones import set_final_linear
    from models.head import fit_head_cv

    cfg = project.config
    with db.session(project.engine) as s:
        nets = [v for v in versions.all_versions(s) if v.mode == "pretrained" and v.backbone == cfg.backbone
                and v.weights == weights and int(v.artifacts.get("image_size", cfg.image_size)) == cfg.image_size]
    if not nets:
        return [{"from": "random", "why": "no scored pretrained version of this backbone and weights"} for _ in blocks]
    source = nets[-1]
    stored = scoring.load_embeddings(project, source.id)
    out = []
    for f, (classes, start) in enumerate(blocks):
        labelled = y[:, f] != no_label
        have, x = scoring.rows_of(*stored, ids[labelled])
        y_f, w_f = y[labelled, f][have], w[labelled, f][have]
        if len(set(y_f.tolist())) < MIN_CLASSES:
            out.append({"from": "random", "why": f"version {source.id} has embedded too few training items"})
            continue
        probe = fit_head_cv(x, y_f, len(classes), sample_weight=w_f, seed=seed)
        set_final_linear(model, *probe.head.as_linear(), start=start)
        out.append({"from": "linear_probe", "embeddings_of": source.id, "n": int(have.sum()),
                    "scaled_c": probe.scaled_c})
    return out


def serving_decision(new_holdout: dict | None, serving: ModelVersion | None) -> dict:
    """Whether a fine-tuned version may serve: not when it is worse on the holdout than the
    version serving now (accuracy, on a holdout of the same size). Returns the metrics' "serving"
    entry: {"held_back": bool, "reason": str}."""
    old = ((serving.metrics or {}).get("holdout") if serving is not None else None) or {}
    if not new_holdout or not old.get("n") or old.get("n") != new_holdout.get("n"):
        return {"held_back": False, "reason": "no holdout result to compare with the serving version"}
    new_acc, old_acc = float(new_holdout["accuracy"]), float(old["accuracy"])
    if new_acc < old_acc:
        return {"held_back": True, "compared_with": serving.id,
                "reason": f"holdout accuracy {new_acc:.4f} is below serving version {serving.id}'s {old_acc:.4f}: "
                          "kept, not served"}
    return {"held_back": False, "compared_with": serving.id,
            "reason": f"holdout accuracy {new_acc:.4f} >= serving version {serving.id}'s {old_acc:.4f}"}
