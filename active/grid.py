"""Labelling a page at a time: what the labeller's Grid tab does, as functions.

A page is up to 48 thumbnails the serving model puts in one class, most confident first (or the
nearest unlabelled neighbours of one item, "more like this"). The annotator marks the ones that do
not belong and confirms the page: every other thumbnail becomes a human label of the page's class
(``accepted`` where that is the model's top class for it, ``corrected`` otherwise), given on the page
(the label's round is the page, see `storage.pages`); the marked ones are queued for the
single-item Label tab with a note. Only thumbnails still leased to the annotator are recorded, so a
page left open past its lease cannot label what a colleague has taken meanwhile. Undo takes back
the whole latest page (append-only ``undo`` rows).

A page is about one label field (`storage.fields`, ``Page.field``; the default unless one is
named): its thumbnails are the items not labelled in that field that the serving version's head
for the field puts in the class, and its labels are of that field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlmodel import Session

from active.errors import UserError
from active.labeling import merged_probs
from active.project import Project
from storage import db, labels, pages, versions, work
from storage.enums import Decision, Kind
from storage.fields import DEFAULT_FIELD, field_classes, field_prediction
from storage.tables import Label, ModelVersion

PAGE_SIZE = 48
MIN_PAGE_SIZE = 1
MAX_PAGE_SIZE = 96
HUMAN = Kind.HUMAN


@dataclass(frozen=True)
class Page:
    """One leased page as the annotator sees it."""

    page_id: int
    cls: str
    version_id: int | None
    thumbs: tuple[pages.Thumb, ...]
    score_name: str  # what each thumbnail's score is: "confidence" or "cosine"
    seed_item: int | None = None  # the item a "more like this" page started from
    field: str = DEFAULT_FIELD  # the label field the page labels (``cls`` is one of its classes)

    @property
    def item_ids(self) -> list[int]:
        return [t.item_id for t in self.thumbs]

    def to_state(self) -> dict[str, Any]:
        return {"page_id": self.page_id, "cls": self.cls, "version_id": self.version_id,
                "item_ids": self.item_ids, "seed_item": self.seed_item, "field": self.field}


@dataclass(frozen=True)
class Confirmed:
    page_id: int
    cls: str
    labelled: list[int]  # items labelled as the page's class
    queued: list[int]  # marked items sent to the single-item queue
    lost: list[int]  # thumbnails shown whose lease had gone (not recorded)


def _ttl(project: Project) -> timedelta:
    return timedelta(minutes=project.config.labeling.lease_minutes)


def _size(size: int) -> int:
    if not MIN_PAGE_SIZE <= size <= MAX_PAGE_SIZE:
        raise UserError(f"a page holds {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE} thumbnails, not {size}")
    return size


def serving_version(session: Session, field: str = DEFAULT_FIELD) -> ModelVersion | None:
    """The serving version (`storage.versions.serving`) when it has a classifier head for
    ``field``: its predictions sort the pages."""
    version = versions.serving(session)
    return version if version is not None and field_classes(version, field) else None


def serving_id(project: Project, field: str = DEFAULT_FIELD) -> int | None:
    """The id of `serving_version`, or None."""
    with db.session(project.engine) as s:
        version = serving_version(s, field)
    return version.id if version is not None else None


def class_counts(project: Project, field: str = DEFAULT_FIELD) -> tuple[int | None, dict[str, int]]:
    """(serving version, class of ``field`` -> items it puts there that could go on a page now),
    in the field's class order; (None, {}) before a version with a head for the field exists."""
    with db.session(project.engine) as s:
        version = serving_version(s, field)
        if version is None:
            return None, {}
        counts = pages.class_counts(s, version.id, field=field)
    ordered = {c: counts[c] for c in project.classes_of(field) if c in counts}
    return version.id, ordered | {c: n for c, n in counts.items() if c not in ordered}


def next_class(counts: dict[str, int], after: str | None) -> str | None:
    """The class after ``after`` (cyclically, in ``counts``' order) that has items; else None."""
    names = [c for c, n in counts.items() if n > 0]
    if not names:
        return None
    if after not in names:
        return names[0]
    return names[(names.index(after) + 1) % len(names)]


def _page(s: Session, rnd: Any, cls: str, score_name: str, seed: int | None = None,
          field: str = DEFAULT_FIELD) -> Page | None:
    if rnd is None:
        return None
    return Page(rnd.id, cls, rnd.model_version_id, tuple(pages.thumbs(s, rnd.id, field=field)), score_name, seed,
                field)


def no_head(field: str) -> UserError:
    """The error of a page asked for before a version has a head for ``field``."""
    what = "this project's classes" if field == DEFAULT_FIELD else f"a head for field {field!r}"
    return UserError(f"no model with {what} yet: run `active retrain` first")


def open_class_page(project: Project, annotator: str, cls: str | None = None, *, after: str | None = None,
                    size: int = PAGE_SIZE, version_id: int | None = None, field: str = DEFAULT_FIELD) -> Page | None:
    """Lease a page of ``cls`` of ``field`` (default: the next class after ``after`` that has items)
    for the annotator, releasing their previous page. None when no class has items left to confirm.
    ``version_id``: the serving version when the caller knows it (finding it scans the pool)."""
    size = _size(size)
    project.check_field(field)
    if cls is not None:
        project.check_class(cls, field)
    if cls is None:  # counting every class's free items is the slow part: only to find the next one
        version_id, counts = class_counts(project, field)
        cls = next_class(counts, after)
    elif version_id is None:
        version_id = serving_id(project, field)
    if version_id is None:
        raise no_head(field)
    if cls is None:
        return None

    def fn(s: Session) -> Page | None:
        rnd = pages.lease_class_page(s, annotator, version_id, cls, size=size, ttl=_ttl(project), field=field)
        return _page(s, rnd, cls, "confidence", field=field)

    return db.write(project.engine, fn)


def upcoming_class_page(project: Project, version_id: int, cls: str, *, size: int = PAGE_SIZE,
                        field: str = DEFAULT_FIELD) -> list[tuple[int, str]]:
    """[(item_id, path)] of the page of ``cls`` that would be leased next (read-only; nothing is
    leased), to prefetch its thumbnails."""
    with db.session(project.engine) as s:
        return pages.peek_class_page(s, version_id, cls, size=size, field=field)


def open_items_page(project: Project, annotator: str, scored: Sequence[tuple[int, float]], *, cls: str,
                    seed_item: int | None = None, size: int = PAGE_SIZE, field: str = DEFAULT_FIELD) -> Page | None:
    """Lease a page of the given [(item_id, cosine)] that are still free in ``field`` (e.g. an
    item's nearest unlabelled neighbours), proposed as ``cls``."""
    size = _size(size)
    project.check_class(cls, project.check_field(field))

    def fn(s: Session) -> Page | None:
        version = serving_version(s, field)
        rnd = pages.lease_items_page(s, annotator, version.id if version else None, scored, score_name="cosine",
                                     size=size, ttl=_ttl(project), field=field)
        return _page(s, rnd, cls, "cosine", seed_item, field)

    return db.write(project.engine, fn)


def release(project: Project, annotator: str) -> None:
    """Give back the annotator's page leases (they left the Grid tab)."""
    db.write(project.engine, lambda s: pages.release_pages(s, annotator))


def confirm(project: Project, annotator: str, page_id: int, shown: Sequence[int], marked: Sequence[int], *,
            cls: str | None = None, field: str = DEFAULT_FIELD) -> Confirmed:
    """Record the page: ``shown`` minus ``marked`` become human labels of ``field`` of the page's
    class (or ``cls``, when the annotator changed it), ``marked`` go to the single-item queue. Only
    items of this page still leased to the annotator count; the rest come back in ``lost``."""
    project.check_field(field)
    shown_ids = list(dict.fromkeys(int(i) for i in shown))
    marked_ids = {int(i) for i in marked}
    if not marked_ids <= set(shown_ids):
        raise UserError("marked thumbnails must be among those shown")

    def fn(s: Session) -> Confirmed:
        work.lock_annotator(s, annotator)  # a second tab's confirm waits, then finds the leases gone
        rnd = pages.get_page(s, page_id)
        if rnd is None:
            raise UserError(f"there is no page {page_id}")
        thumbs = {t.item_id: t for t in pages.thumbs(s, page_id, field=field)}
        page_cls = cls or _page_class(s, page_id, thumbs)
        project.check_class(page_cls, field)
        held = pages.leased_on_page(s, annotator, page_id)
        mine = [i for i in shown_ids if i in thumbs and i in held]
        lost = [i for i in shown_ids if i not in mine]
        good = [i for i in mine if i not in marked_ids]
        bad = [i for i in mine if i in marked_ids]
        preds = versions.predictions(s, rnd.model_version_id, good + bad) if rnd.model_version_id else {}
        version = versions.get(s, rnd.model_version_id) if rnd.model_version_id else None
        rows = []
        for i in good:
            top = _top(preds.get(i), field)
            rows.append(Label(
                item_id=i, field=field, annotator=annotator, label=page_cls, kind=HUMAN,
                decision=Decision.ACCEPTED if top == page_cls else Decision.CORRECTED,
                suggestion=top, confidence=_prob(version, preds.get(i), page_cls, field),
                model_version_id=rnd.model_version_id, round_id=page_id))
        labels.append_many(s, rows)
        if bad:
            note = f"marked not {page_cls} on page {page_id}"
            pages.queue_marked(s, rnd.model_version_id,
                               [(i, _prob(version, preds.get(i), page_cls, field) or 0.0) for i in bad], note)
        pages.release_pages(s, annotator, page_id)
        return Confirmed(page_id, page_cls, good, bad, lost)

    return db.write(project.engine, fn)


def _page_class(s: Session, page_id: int, thumbs: dict[int, pages.Thumb]) -> str:
    """A class page's class is what its version predicts for its items."""
    preds = {t.pred for t in thumbs.values() if t.pred}
    if len(preds) != 1:
        raise UserError(f"page {page_id} is not of one class: say which class to record")
    return preds.pop()


def top_class(session: Any, version_id: int, item_id: int, field: str = DEFAULT_FIELD) -> str | None:  # noqa: ANN401
    """The version's top class of ``field`` for one item (None without a prediction)."""
    return _top(versions.predictions(session, version_id, [item_id]).get(item_id), field)


def _top(pred: Any, field: str) -> str | None:
    """The top class of ``field`` in a Prediction row (None without one)."""
    part = field_prediction(pred, field) if pred is not None else None
    return part.pred if part is not None else None


def _prob(version: ModelVersion | None, pred: Any, cls: str, field: str = DEFAULT_FIELD) -> float | None:
    """The version's calibrated probability of ``cls`` of ``field`` for the item (merged classes summed)."""
    part = field_prediction(pred, field) if version is not None and pred is not None else None
    if part is None or not part.probs:
        return None
    return merged_probs(field_classes(version, field), part.probs).get(cls, 0.0)


def undo_page(project: Project, annotator: str) -> tuple[int, list[int]] | None:
    """Take back the annotator's latest page: an ``undo`` row for each of its labels that still
    counts. Returns (page id, items) or None when they have no page to undo. The items marked on
    it stay queued: that a person found them out of place is still worth a single look."""
    def fn(s: Session) -> tuple[int, list[int]] | None:
        work.lock_annotator(s, annotator)
        rows = pages.last_page_labels(s, annotator)
        if not rows:
            return None
        labels.append_many(s, [Label(item_id=r.item_id, annotator=annotator, kind=HUMAN, decision=Decision.UNDO,
                                     undoes_id=r.id, model_version_id=r.model_version_id, round_id=r.round_id)
                               for r in rows])
        return int(rows[0].round_id or 0), [r.item_id for r in rows]

    return db.write(project.engine, fn)


def unlabelled_filter(project: Project, field: str = DEFAULT_FIELD):  # noqa: ANN201
    """A filter for `SimilarityIndex.neighbours`: (m,) item ids -> (m,) True where no person has
    labelled ``field`` of the item (one query per batch)."""
    def allow(ids: np.ndarray) -> np.ndarray:
        with db.session(project.engine) as s:
            free = pages.unlabelled(s, ids.tolist(), field=field)
        return np.array([int(i) in free for i in ids], dtype=bool)

    return allow


def embed_photo(project: Project, version_id: int, path: str) -> tuple[np.ndarray, str]:
    """(embedding (d,) float32, top class) of a photo that is not in the project (a search by photo),
    through the network of ``version_id``. Loads torch: call it off the web server's event loop."""
    from active.modelstore import load_model
    from models.infer import embed_and_predict

    loaded = load_model(project, version_id)
    if not loaded.classes:
        raise UserError(f"model version {version_id} has no classifier head: run `active retrain` first")
    out = embed_and_predict(loaded.model, [path], transform=loaded.transform, batch_size=1, num_workers=0)
    if out.errors:
        raise UserError(f"the photo cannot be read: {next(iter(out.errors.values()))}")
    merged = merged_probs(loaded.classes, out.probs[0])
    return out.embeddings[0].astype(np.float32), max(merged, key=merged.__getitem__)
