"""Helpers for the active-learning tests: a store filled directly (items, labels, a model
version with embeddings and probabilities written as `active score` lays them out), so the loop
can be tested on synthetic arrays without running a network."""

from __future__ import annotations

import hashlib

import numpy as np

from active import modelstore, scoring
from active.project import Project
from storage import db, items, labels, versions
from storage.tables import Item, Label, ModelVersion, Prediction


def add_items(project: Project, n: int, *, split: str = "pool", start: int = 0) -> list[int]:
    """``n`` items with made-up paths (nothing reads the files here); returns their ids."""
    rows = [Item(sha256=hashlib.sha256(f"{split}-{start + k}".encode()).hexdigest(), path=f"/fake/{split}/{start + k}.jpg",
                 width=8, height=8, mode="RGB", split=split) for k in range(n)]
    return db.write(project.engine, lambda s: [int(i.id) for i in items.add(s, rows)])


def add_label(project: Project, item_id: int, cls: str, *, kind: str = "imported", annotator: str = "import",
              decision: str | None = None) -> int:
    decision = decision or ("given" if kind == "imported" else "resolved" if kind == "review" else "corrected")
    row = Label(item_id=item_id, annotator=annotator, label=cls, kind=kind, decision=decision)
    return db.write(project.engine, lambda s: int(labels.append(s, row).id))


def add_labels(project: Project, pairs: list[tuple[int, str]], *, kind: str = "imported",
               annotator: str = "import", field: str = "category") -> None:
    decision = "given" if kind == "imported" else "corrected"

    def fn(s):  # noqa: ANN001, ANN202
        for item_id, cls in pairs:
            labels.append(s, Label(item_id=item_id, field=field, annotator=annotator, label=cls, kind=kind,
                                   decision=decision))

    db.write(project.engine, fn)


def publish_version(project: Project, item_ids: list[int], embeddings: np.ndarray,
                    probs: np.ndarray | None = None, *, mode: str = "pretrained",
                    metrics: dict | None = None) -> int:
    """A version that scored ``item_ids``: embeddings (n, d) in its embedding folder, one
    Prediction per item (with ``probs`` (n, c) when it has a head). Returns its id."""
    classes = list(project.config.classes) if probs is not None else []
    version = ModelVersion(backbone="fake", weights="none", mode=mode, classes=classes,
                           artifacts={"embeddings": modelstore.EMBEDDINGS_DIR}, metrics=metrics or {})
    vid = db.write(project.engine, lambda s: int(versions.publish(s, version).id))
    version.id = vid
    scoring._save_chunk(scoring.embeddings_dir(project, version), 0, np.asarray(embeddings, dtype=np.float32))

    def fn(s):  # noqa: ANN001, ANN202
        rows = []
        for r, item_id in enumerate(item_ids):
            p = None if probs is None else [float(v) for v in probs[r]]
            rows.append(Prediction(item_id=item_id, model_version_id=vid, row=r, probs=p,
                                   pred=None if p is None else classes[int(np.argmax(p))]))
        versions.add_predictions(s, rows)

    db.write(project.engine, fn)
    return vid


def blobs(rng: np.random.Generator, n_classes: int, per_class: int, dim: int = 8,
          spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs: (n_classes * per_class, dim) embeddings and their classes."""
    centres = rng.normal(0, 4, (n_classes, dim))
    y = np.repeat(np.arange(n_classes), per_class)
    return centres[y] + rng.normal(0, spread, (y.size, dim)), y


def catalogue_with_two_wrong(project: Project) -> tuple[list[int], np.ndarray]:
    """60 items in three wide blobs with imported labels, two of them wrong (items 0 and 21,
    truly dress and shirt, given shirt and shoes). Returns (item ids, embeddings (60, 32))."""
    classes = project.config.classes  # dress, shirt, shoes
    x, y = blobs(np.random.default_rng(5), 3, 20, dim=32, spread=2.0)
    ids = add_items(project, len(y))
    given = y.copy()
    given[[0, 21]] = [1, 2]
    add_labels(project, [(i, classes[c]) for i, c in zip(ids, given, strict=True)])
    return ids, x


def two_field_catalogue(project: Project, *, n: int = 90, holdout: int = 30, flipped: int = 6,
                        seed: int = 3) -> dict:
    """Items whose embeddings carry two independent label fields: the first 8 dimensions the
    category (3 classes, the project's), the last 8 a ``colour`` (black/white, added as a field).
    Every item has imported labels of both fields; ``flipped`` pool items have a wrong colour.
    Publishes a pretrained-like version with those embeddings. Returns ids, truths and the
    flipped item ids."""
    rng = np.random.default_rng(seed)
    colours = ["black", "white"]
    if "colour" not in project.field_names:
        project.add_field("colour", colours)
    total = n + holdout
    cat = rng.integers(0, 3, total)
    col = rng.integers(0, 2, total)
    cat_centres, col_centres = rng.normal(0, 4, (3, 8)), rng.normal(0, 4, (2, 8))
    x = np.concatenate([cat_centres[cat], col_centres[col]], axis=1) + rng.normal(0, 0.7, (total, 16))
    pool = add_items(project, n)
    hold = add_items(project, holdout, split="holdout")
    ids = pool + hold
    given = col.copy()
    flip = rng.choice(n, flipped, replace=False)
    given[flip] = 1 - given[flip]
    classes = project.config.classes
    add_labels(project, [(i, classes[c]) for i, c in zip(ids, cat, strict=True)])
    add_labels(project, [(i, colours[c]) for i, c in zip(ids, given, strict=True)], field="colour")
    vid = publish_version(project, ids, x)
    return {"ids": ids, "pool": pool, "holdout": hold, "category": cat, "colour": col,
            "flipped": sorted(int(pool[k]) for k in flip), "version": vid, "embeddings": x}
