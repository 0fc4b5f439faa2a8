"""Pool scoring: run a model version over every readable item it has not scored yet.

Resumable: results are committed in chunks, each chunk one transaction (its embedding file is
written inside that transaction, before the rows), so a killed run loses at most one chunk and
the next run continues with the items still unscored. Files that cannot be decoded are marked
``Item.error`` with the reason (never retried) and do not stop the run.

- The first scoring of a project publishes version 1: the pretrained backbone (no head for our
  classes: Prediction.pred/probs are None) and stores its embeddings.
- A network version (pretrained, full) stores its own embeddings; Prediction.row indexes them.
  A fine-tune trained on several label fields has one output block per field
  (`modelstore.output_layout`): each block's softmax is that field's prediction.
- A head version reuses the embeddings of the network version it sits on: scoring it is the
  head on cached embeddings; only items that version has not embedded yet run the network.
  Its heads for label fields other than the default one score the same embeddings; their
  outputs go in ``Prediction.fields`` (`storage.fields`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from active import modelstore
from active.atomic import write_atomic
from active.errors import UserError
from storage import db, items, versions
from storage.fields import DEFAULT_FIELD, field_classes, field_prediction
from storage.tables import ModelVersion

if TYPE_CHECKING:
    from active.project import Project

# Items per committed chunk of network scoring: what a killed run can lose at most.
DEFAULT_CHUNK = 256
# Rows per transaction when a head scores cached embeddings (cheap: no network).
HEAD_CHUNK = 5000
CPU_BATCH = 32
GPU_BATCH = 256


@dataclass
class ScoreReport:
    version_id: int
    scored: int = 0  # new Prediction rows written by this run (network + head)
    embedded: int = 0  # items run through the network by this run
    failed: dict[int, str] = field(default_factory=dict)  # item id -> reason
    seconds: float = 0.0
    published: bool = False  # this run published the pretrained version 1

    @property
    def images_per_s(self) -> float:
        return (self.embedded + len(self.failed)) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"version": self.version_id, "scored": self.scored, "embedded": self.embedded,
                "failed": {str(k): v for k, v in self.failed.items()}, "seconds": round(self.seconds, 2),
                "images_per_s": round(self.images_per_s, 2), "published_pretrained": self.published}


# ---------------------------------------------------------------- uncertainty

def uncertainty(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """probs: (n, c) -> (pred index (n,), confidence = max prob, margin = top1 - top2,
    entropy in nats), each (n,)."""
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=1)
    top = -np.sort(-p, axis=1)
    conf = top[:, 0]
    margin = conf - (top[:, 1] if p.shape[1] > 1 else 0.0)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    return pred, conf, margin, entropy


def _predictions(version: ModelVersion, item_ids: list[int], rows: list[int], probs: np.ndarray | None,
                 others: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Column values of the predictions of ``item_ids`` (n,) at embedding ``rows`` (n,), with
    their uncertainty when the version has a head (``probs``: (n, c)), computed for all at once;
    ``others``: the other label fields' heads' probabilities, field -> (n, c_f), kept under
    ``fields`` (`storage.fields`)."""
    base = [{"item_id": i, "model_version_id": version.id, "row": r} for i, r in zip(item_ids, rows, strict=True)]
    if others and base:
        parts = {name: _field_values(p, field_classes(version, name)) for name, p in others.items()}
        for k, row in enumerate(base):
            row["fields"] = {name: values[k] for name, values in parts.items()}
    if probs is None or not version.classes or not base:
        return base
    for row, values in zip(base, _field_values(probs, version.classes), strict=True):
        row.update(values)
    return base


def _field_values(probs: np.ndarray, classes: list[str]) -> list[dict]:
    """Per item of ``probs`` (n, c): pred, confidence, margin, entropy and the rounded probs."""
    probs = np.asarray(probs)
    pred, conf, margin, ent = uncertainty(probs)
    rounded = np.round(probs.astype(np.float64), 6).tolist()
    return [{"pred": classes[int(pred[k])], "confidence": float(conf[k]), "margin": float(margin[k]),
             "entropy": float(ent[k]), "probs": rounded[k]} for k in range(len(rounded))]


# ---------------------------------------------------------------- embedding arrays

def embeddings_dir(project: Project, version: ModelVersion) -> Path:
    return modelstore.version_dir(project, version) / version.artifacts.get("embeddings", modelstore.EMBEDDINGS_DIR)


def _chunk_path(folder: Path, start_row: int) -> Path:
    return folder / f"{start_row:09d}.npy"


def _save_chunk(folder: Path, start_row: int, array: np.ndarray) -> None:
    write_atomic(_chunk_path(folder, start_row), lambda fh: np.save(fh, np.ascontiguousarray(array, dtype=np.float32)))


def _read_rows(folder: Path, rows: np.ndarray) -> np.ndarray:
    """Embedding rows ``rows`` (n,) of a version's chunked array -> (n, d) float32.

    Only rows committed in Prediction are asked for, so chunk files of a run killed before its
    commit (overwritten by the next run) are never read.
    """
    chunks = sorted((int(p.stem), p) for p in folder.glob("*.npy")) if folder.is_dir() else []
    starts = np.array([s for s, _ in chunks], dtype=np.int64)
    out: np.ndarray | None = None
    for k, (start, path) in enumerate(chunks):
        lo = start
        hi = starts[k + 1] if k + 1 < len(chunks) else np.iinfo(np.int64).max
        mask = (rows >= lo) & (rows < hi)
        if not mask.any():
            continue
        arr = np.load(path, mmap_mode="r")
        local = rows[mask] - start
        if local.max() >= arr.shape[0]:
            raise UserError(f"embedding chunk {path} holds {arr.shape[0]} rows but row {start + local.max()} "
                            "is recorded: the artifacts folder was changed by hand")
        if out is None:
            out = np.empty((len(rows), arr.shape[1]), dtype=np.float32)
        out[mask] = arr[local]
    if len(rows) and out is None:
        raise UserError(f"no embedding files under {folder} for {len(rows)} recorded predictions")
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def rows_of(stored_ids: np.ndarray, embeddings: np.ndarray, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask (n,) of ``item_ids`` that have an embedding, their embeddings (k, d) in that order),
    from the ``stored_ids`` (m,) / ``embeddings`` (m, d) pair `load_embeddings` returns."""
    row_of = {int(i): k for k, i in enumerate(np.asarray(stored_ids).tolist())}
    ids = np.asarray(item_ids).tolist()
    have = np.array([int(i) in row_of for i in ids], dtype=bool)
    return have, embeddings[[row_of[int(i)] for i, h in zip(ids, have, strict=True) if h]].reshape(-1, embeddings.shape[1])


def load_embeddings(project: Project, version_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (n,) int64 ascending, embeddings (n, d) float32) of every item the version scored.

    For a head version these are the cached embeddings of the network it sits on (rows of its
    Prediction rows point there).
    """
    version = modelstore.get_version(project, version_id)
    source = modelstore.embedding_source(project, version)
    with db.session(project.engine) as s:
        pairs = sorted((p.item_id, p.row) for p in versions.predictions(s, version_id).values())
    ids = np.array([i for i, _ in pairs], dtype=np.int64)
    rows = np.array([r for _, r in pairs], dtype=np.int64)
    return ids, _read_rows(embeddings_dir(project, source), rows)


def load_probs(project: Project, version_id: int, field: str = DEFAULT_FIELD) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids (n,) int64 ascending, probs (n, n_classes) float32, calibrated) of a version's
    head for ``field``.

    A version without a head for the field (the pretrained one has none) returns (0,) ids and a
    (0, 0) array.
    """
    version = modelstore.get_version(project, version_id)
    with db.session(project.engine) as s:
        preds = versions.predictions(s, version_id)
    parts = {i: field_prediction(p, field) for i, p in preds.items()}
    pairs = sorted((i, fp.probs) for i, fp in parts.items() if fp is not None and fp.probs is not None)
    ids = np.array([i for i, _ in pairs], dtype=np.int64)
    n_classes = len(field_classes(version, field))
    probs = np.array([p for _, p in pairs], dtype=np.float32).reshape(len(pairs), n_classes)
    return ids, probs


# ---------------------------------------------------------------- the first version

def ensure_version(project: Project) -> tuple[ModelVersion, bool]:
    """The current version; before any, publish version 1 = the pretrained backbone.

    Returns (version, published_now). Raises `UserError` when the weights cannot be had.
    """
    current = modelstore.current_version(project)
    if current is not None:
        return current, False
    cfg = project.config
    spec = modelstore.weights_spec(cfg.backbone, cfg.weights)  # fails here, before anything is written
    staging = modelstore.new_staging(project)
    artifacts = {"embeddings": modelstore.EMBEDDINGS_DIR, "image_size": cfg.image_size}
    if spec.kind == "none":
        # Random weights differ per build: keep the ones drawn now, so that a resumed run (another
        # process) embeds with the same network.
        import torch

        net = modelstore.build_network(cfg.backbone, None, "none")
        torch.save(net.state_dict(), staging / modelstore.CHECKPOINT)
        artifacts["checkpoint"] = modelstore.CHECKPOINT
    modelstore.write_json(staging / "meta.json", {"mode": "pretrained", "backbone": cfg.backbone,
                                                  "weights": spec.name, "image_size": cfg.image_size})
    version = ModelVersion(backbone=cfg.backbone, weights=spec.name, mode="pretrained", classes=[],
                           artifacts=artifacts)
    published = modelstore.publish(project, version, staging, only_if_first=True)
    return published, published is version


# ---------------------------------------------------------------- scoring

def _default_device(device: str | None):  # noqa: ANN202
    import torch

    from models.infer import default_device

    return torch.device(device) if device else default_device()


def score(
    project: Project,
    *,
    version_id: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> ScoreReport:
    """Score every readable item not yet scored by the version (default: the current one,
    publishing the pretrained version 1 first when the project has none)."""
    from active import jobs

    # Inside a worker's job this is part of it; called directly, it is recorded as a job of this process.
    with jobs.foreground(project, "score", {"version_id": version_id}):
        return _score(project, version_id=version_id, batch_size=batch_size, num_workers=num_workers, device=device,
                      chunk_size=chunk_size, progress=progress)


def _score(project: Project, *, version_id: int | None, batch_size: int | None, num_workers: int | None,
           device: str | None, chunk_size: int, progress: bool) -> ScoreReport:
    started = time.perf_counter()
    if version_id is None:
        version, published = ensure_version(project)
    else:
        version, published = modelstore.get_version(project, version_id), False
    report = ScoreReport(int(version.id), published=published)
    source = modelstore.embedding_source(project, version)
    _score_network(project, source, report, batch_size=batch_size, num_workers=num_workers,
                   device=device, chunk_size=chunk_size, progress=progress)
    if source.id != version.id:
        _score_head(project, version, source, report)
    report.seconds = time.perf_counter() - started
    return report


def _score_network(project: Project, version: ModelVersion, report: ScoreReport, *, batch_size: int | None,
                   num_workers: int | None, device: str | None, chunk_size: int, progress: bool) -> None:
    from active import jobs
    from models.head import softmax
    from models.infer import iter_batches

    with db.session(project.engine) as s:
        todo = versions.unscored_ids(s, version.id)
        paths = items.paths(s, todo)
    if not todo:
        return
    dev = _default_device(device)
    loaded = modelstore.load_model(project, version, field=None)  # every field's outputs in one pass
    layout = modelstore.output_layout(version)
    bs = batch_size or (GPU_BATCH if dev.type == "cuda" else CPU_BATCH)
    folder = embeddings_dir(project, version)
    pending_ids: list[np.ndarray] = []
    pending_emb: list[np.ndarray] = []
    pending_logits: list[np.ndarray] = []
    pending_err: dict[int, str] = {}
    ids = np.array(todo, dtype=np.int64)

    def flush() -> None:
        if not pending_ids and not pending_err:
            return
        chunk_ids = np.concatenate(pending_ids) if pending_ids else np.zeros(0, np.int64)
        emb = np.concatenate(pending_emb) if pending_emb else np.zeros((0, 0), np.float32)
        logits = np.concatenate(pending_logits) if pending_logits and layout else None
        per_field = {name: softmax(logits[:, a:b]) for name, a, b in layout} if logits is not None else {}
        probs = per_field.pop(DEFAULT_FIELD, None)
        n = _write_chunk(project, version, folder, chunk_ids, emb, probs, dict(pending_err), per_field)
        report.scored += n
        report.embedded += n
        report.failed.update(pending_err)
        jobs.report(scored=report.embedded + len(report.failed), to_score=len(todo), version=int(version.id))
        pending_ids.clear()
        pending_emb.clear()
        pending_logits.clear()
        pending_err.clear()

    buffered = 0
    for batch in iter_batches(loaded.model, [paths[i] for i in todo], transform=loaded.transform, batch_size=bs,
                              num_workers=num_workers, device=dev, progress=progress):
        pending_err.update({int(ids[k]): reason for k, reason in batch.errors.items()})
        if len(batch.index):
            pending_ids.append(ids[batch.index])
            pending_emb.append(batch.embeddings)
            pending_logits.append(batch.logits)
        buffered += len(batch.index) + len(batch.errors)
        if buffered >= chunk_size:
            flush()
            buffered = 0
    flush()


def _write_chunk(project: Project, version: ModelVersion, folder: Path, item_ids: np.ndarray,
                 embeddings: np.ndarray, probs: np.ndarray | None, errors: dict[int, str],
                 others: dict[str, np.ndarray] | None = None) -> int:
    """One transaction: the chunk's embedding file at the next free row, then its Prediction
    rows (``others``: the other label fields' probabilities, field -> (n, c_f)) and the
    unreadable marks. Returns the number of predictions written."""

    def fn(s) -> int:  # noqa: ANN001
        done = versions.scored_ids(s, version.id, item_ids.tolist())  # a concurrent run got there
        keep = np.array([i not in done for i in item_ids.tolist()], dtype=bool)
        row0 = versions.next_row(s, version.id)
        if keep.any():
            _save_chunk(folder, row0, embeddings[keep])
        n = int(keep.sum())
        rows = _predictions(version, item_ids[keep].tolist(), list(range(row0, row0 + n)),
                            None if probs is None else probs[keep],
                            {name: p[keep] for name, p in (others or {}).items()})
        versions.add_predictions(s, rows)
        for item_id, reason in errors.items():
            items.mark_unreadable(s, item_id, reason)
        return len(rows)

    return db.write(project.engine, fn)


def _score_head(project: Project, version: ModelVersion, source: ModelVersion, report: ScoreReport) -> None:
    from models.head import Head

    with db.session(project.engine) as s:
        todo = set(versions.unscored_ids(s, version.id))
    if not todo:
        return
    ids, emb = load_embeddings(project, source.id)
    with db.session(project.engine) as s:
        rows = versions.embedding_rows(s, source.id)
    want = np.array([i in todo for i in ids.tolist()], dtype=bool)
    ids, emb = ids[want], emb[want]
    def run_head(file: str) -> np.ndarray:
        with np.load(modelstore.version_dir(project, version) / file) as d:
            head = Head.from_arrays({k: d[k] for k in d.files})
        return head.predict_proba(emb).astype(np.float32) if len(ids) else np.zeros((0, head.num_classes))

    probs = run_head(version.artifacts.get("head", modelstore.HEAD_FILE))
    others = {name: run_head(spec["head"]) for name, spec in (version.artifacts.get("fields") or {}).items()}
    for start in range(0, len(ids), HEAD_CHUNK):
        part = slice(start, start + HEAD_CHUNK)

        def fn(s, part=part) -> int:  # noqa: ANN001
            done = versions.scored_ids(s, version.id, ids[part].tolist())
            new = np.array([i not in done for i in ids[part].tolist()], dtype=bool)
            chunk = ids[part][new].tolist()
            versions.add_predictions(s, _predictions(version, chunk, [rows[i] for i in chunk], probs[part][new],
                                                     {name: o[part][new] for name, o in others.items()}))
            return len(chunk)

        report.scored += db.write(project.engine, fn)

