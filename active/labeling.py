"""What one annotator does, as functions the labeller UI calls: lease the next item with its
suggestions, record a decision, undo, and the figures around it (progress, similar items).

Every call is a short unit of work with targeted queries (one item, one annotator), never a scan
of all labels, so the cost of serving the next item does not grow with the size of the project.

Label fields (`storage.fields`): a task is about one field of its item (``Task.field``, the
default field first) with that field's suggestions. In a project with several fields a decision
on one field keeps the item leased and serves its next field still open for the annotator
(`storage.meaning.open_fields`: not decided by them, and not yet decided by ``overlap``
annotators or settled by review); the item is released after its last one. An item left midway
(the lease ran out) is served again to whoever asks next, its own annotator first, for its open
fields only. `switch_field` moves to the next open field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
from sqlmodel import Session

from active.errors import UserError
from active.project import Project
from active.similarity import SimilarityIndex
from storage import db, items, labels, meaning, versions, work
from storage import disputes as store_disputes
from storage.enums import CLASS_DECISIONS, SEEN_DECISIONS, Decision, Kind
from storage.fields import DEFAULT_FIELD, field_classes, field_prediction
from storage.tables import Label

HUMAN = Kind.HUMAN
# Decisions an annotator makes on the Label tab (the `undo` row is written by `undo_last`).
LABEL_DECISIONS = SEEN_DECISIONS


@dataclass(frozen=True)
class Task:
    """One leased item as the annotator sees it."""

    item_id: int
    path: str
    round_id: int | None
    score: float
    score_name: str
    strategy: str
    version_id: int | None  # the model version whose suggestions are shown (None: no suggestions)
    ranked: tuple[tuple[str, float], ...] = ()  # every class by calibrated probability, best first
    meta: dict[str, Any] = field(default_factory=dict)
    field: str = DEFAULT_FIELD  # the label field this task decides (``ranked`` are its classes)

    @property
    def top(self) -> tuple[str, float] | None:
        return self.ranked[0] if self.ranked else None

    def why(self) -> str:
        """Why this item was picked, e.g. "round 4, margin 0.03"."""
        if not self.round_id:
            return "re-served after undo"
        what = self.score_name or self.strategy or "score"
        return f"round {self.round_id}, {what} {self.score:.2f}"

    def to_state(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "path": self.path, "round_id": self.round_id, "score": self.score,
                "score_name": self.score_name, "strategy": self.strategy, "version_id": self.version_id,
                "ranked": [list(r) for r in self.ranked], "meta": self.meta, "field": self.field}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Task:
        return cls(d["item_id"], d["path"], d["round_id"], d["score"], d["score_name"], d["strategy"],
                   d["version_id"], tuple((c, float(p)) for c, p in d["ranked"]), d.get("meta") or {},
                   d.get("field") or DEFAULT_FIELD)


def _ttl(project: Project) -> timedelta:
    return timedelta(minutes=project.config.labeling.lease_minutes)


def merged_probs(classes: list[str], probs: Any) -> dict[str, float]:
    """class -> probability, summed per class name: after `classes remove X --into Y` a version
    lists Y twice, and the probability of the merged class is the sum of its outputs."""
    merged: dict[str, float] = {}
    for cls, p in zip(classes, probs, strict=False):
        merged[cls] = merged.get(cls, 0.0) + float(p)
    return merged


def _tasks(session: Session, queued: list[work.Queued], label_field: str = DEFAULT_FIELD) -> list[Task]:
    """The tasks of queued items, with the serving version's suggestions: a few queries for all
    of them (the labeller builds the next items' tasks after every label)."""
    ids = [q.item_id for q in queued]
    rows = items.many(session, ids)
    version, preds = versions.serving_predictions(session, ids, field=label_field)
    out = []
    for q in queued:
        item = rows.get(q.item_id)
        if item is None:
            raise UserError(f"item {q.item_id} is queued but missing from the store")
        ranked: tuple[tuple[str, float], ...] = ()
        version_id = None
        pred = preds.get(q.item_id)
        if pred is not None and version is not None:
            merged = merged_probs(field_classes(version, label_field), field_prediction(pred, label_field).probs)
            ranked = tuple(sorted(merged.items(), key=lambda cp: -cp[1]))  # stable: ties keep class order
            version_id = version.id
        out.append(Task(q.item_id, item.path, q.round_id or None, q.score, q.score_name, q.strategy, version_id,
                        ranked, dict(item.meta or {}), label_field))
    return out


def _task(session: Session, q: work.Queued, label_field: str = DEFAULT_FIELD) -> Task:
    return _tasks(session, [q], label_field)[0]


def _fields_left(s: Session, project: Project, annotator: str, item_id: int,
                 rows: list[Label] | None = None) -> list[str]:
    """The fields of the item still open for this annotator (`storage.meaning.open_fields`), in
    order; ``rows``: the item's label rows when the caller has them already."""
    return labels.open_fields(s, annotator, item_id, project.field_names, overlap=project.config.labeling.overlap,
                              rows=rows)


def switch_field(project: Project, annotator: str, task: Task) -> Task:
    """The same item's task for the next field (after ``task.field``, wrapping round) that the
    annotator has not decided yet; ``task`` again when there is no other."""
    names = project.field_names
    if len(names) < 2:
        return task
    with db.session(project.engine) as s:
        left = set(_fields_left(s, project, annotator, task.item_id))
        start = names.index(task.field) if task.field in names else 0
        nxt = next((f for f in names[start + 1:] + names[:start] if f in left), None)
        if nxt is None:
            return task
        q = work.Queued(task.item_id, task.round_id or 0, 0, task.score, task.score_name, task.strategy)
        return _task(s, q, nxt)


def _lease(s: Session, project: Project, annotator: str) -> work.Queued | None:
    """The annotator's current item: their lease, kept (and renewed), or a new one."""
    return work.lease_next(s, annotator, fields=project.field_names, ttl=_ttl(project),
                           overlap=project.config.labeling.overlap)


def _task_of(s: Session, q: work.Queued | None, project: Project, annotator: str) -> Task | None:
    """The task of a leased item: its first field still open for the annotator (with one field,
    the default field without asking). An item they hold whose fields were all settled meanwhile
    (a reviewer decided its last open field) is released for their next item."""
    if q is None or len(project.field_names) < 2:
        return None if q is None else _task(s, q)
    left = _fields_left(s, project, annotator, q.item_id)
    if not left:
        work.release(s, annotator, q.item_id)
        q = _lease(s, project, annotator)  # a new candidate has a field open for them
        left = _fields_left(s, project, annotator, q.item_id) if q is not None else []
    return None if q is None else _task(s, q, left[0] if left else DEFAULT_FIELD)


def next_task(project: Project, annotator: str) -> Task | None:
    """Lease (or keep) the annotator's next item; None when the open rounds hold nothing for them.
    With several label fields an item they left midway (its lease ran out) comes back to them first."""
    return db.write(project.engine, lambda s: _task_of(s, _lease(s, project, annotator), project, annotator))

def upcoming(project: Project, annotator: str, *, n: int = 1) -> list[Task]:
    """The items this annotator would get after the current one (read-only, for prefetching)."""
    with db.session(project.engine) as s:
        ids = work.peek_next(s, annotator, n=n, overlap=project.config.labeling.overlap, fields=project.field_names)
        return _tasks(s, [work.Queued(i, 0, 0, 0.0, "", "") for i in ids])


def decide(task: Task, label: str) -> str:
    """accepted when ``label`` is the top suggestion shown, corrected otherwise."""
    top = task.top
    return Decision.ACCEPTED if top is not None and top[0] == label else Decision.CORRECTED


def record(project: Project, annotator: str, task: Task, *, decision: str,
           label: str | None = None) -> tuple[Label | None, Task | None]:
    """Append the annotator's decision on ``task`` (the item whose photo they were shown) and lease
    their next item, in one transaction.

    Recorded only when ``task`` is the annotator's current item (the one `next_task` would show
    now). Otherwise nothing is written and the label is None: a key pressed on a page that had
    not caught up (a double press, a second tab, a stale script) must never label an item whose
    photo was not on screen. A lease that ran out is renewed when the item is still theirs to
    take, so a slow annotator's work is kept unless a colleague took the item meanwhile.
    """
    if decision not in LABEL_DECISIONS:
        raise UserError(f"unknown decision {decision!r}: use one of {', '.join(LABEL_DECISIONS)}")
    if decision in CLASS_DECISIONS:
        if not label:
            raise UserError(f"a {decision} label needs a class")
        project.check_class(label, task.field)
    else:
        label = None
    top = task.top
    several = len(project.field_names) > 1
    # One field: the item is seen once anything was decided on it (the hand-out's rule).
    seen_field = task.field if several else None

    # The transaction decides and leases; with one field the next item's task (its photo path and
    # suggestions) is read after the commit, so the write lock is not held for reads every writer
    # waits on.
    def fn(s: Session) -> tuple[Label | None, work.Queued | None, str | None]:
        work.lock_annotator(s, annotator)  # a second tab's submit waits, then sees this label
        # The common case first: the item on screen is still the one leased to them (read-only).
        # Otherwise the hand-out decides (it renews a lapsed lease when the item is still theirs).
        if work.current_item(s, annotator) != task.item_id:
            cur = _lease(s, project, annotator)
            if cur is None or cur.item_id != task.item_id:
                return None, cur, None
        rows = labels.item_rows(s, task.item_id)  # read once: the seen check and the dispute check
        if meaning.seen_by(rows, annotator, seen_field):
            return None, _lease(s, project, annotator), None
        row = labels.append(s, Label(
            item_id=task.item_id, field=task.field, annotator=annotator, label=label, kind=HUMAN, decision=decision,
            suggestion=top[0] if top else None, confidence=top[1] if top else None,
            model_version_id=task.version_id, round_id=task.round_id,
        ))
        # A confirmed given label is no longer suspect.
        store_disputes.follow_label(s, row, item_rows=[*rows, row])
        if several:
            left = _fields_left(s, project, annotator, task.item_id, [*rows, row])
            if left:  # the item's next field: it stays leased (and renewed) to this annotator
                return row, _lease(s, project, annotator), left[0]
        work.release(s, annotator)
        return row, _lease(s, project, annotator), None

    if several:  # choosing the next field may release an item settled meanwhile and lease another: a write
        def whole(s: Session) -> tuple[Label | None, Task | None]:
            row, q, next_field = fn(s)
            return row, _task(s, q, next_field) if q is not None and next_field else _task_of(s, q, project, annotator)

        return db.write(project.engine, whole)
    row, q, _ = db.write(project.engine, fn)
    with db.session(project.engine) as s:  # one field: the task is a read (`_task`), made after the commit
        return row, _task_of(s, q, project, annotator)


def set_aside(project: Project, item_id: int, reason: str) -> None:
    """The item's photo cannot be shown: mark it unreadable (never served or trained on again)
    and drop every lease on it, so nobody is stuck on it."""

    def fn(s: Session) -> None:
        items.mark_unreadable(s, item_id, reason)
        work.drop_leases(s, item_id)

    db.write(project.engine, fn)


class NotCurrent(UserError):
    """A decision named an item that is not the annotator's current one; nothing was written."""

    def __init__(self, named: int | None, task: Task | None) -> None:
        now = f"#{task.item_id} is" if task else "nothing is"
        super().__init__(f"not recorded: #{named} is not your current item ({now} on your screen now)")
        self.task = task


def undo_last(project: Project, annotator: str, *, shown: int | None) -> tuple[Label | None, Task | None]:
    """Cancel the annotator's latest label (appends an `undo` row) and serve that item again, unless
    someone else has taken or labelled it meanwhile (then the next item).

    ``shown`` is the item on the annotator's screen (None: the "nothing left" page): an undo from
    a page that is not showing their current item raises `NotCurrent` and writes nothing.
    Returns (the undone label or None when there is nothing to undo, the task now shown)."""
    def fn(s: Session) -> tuple[bool, Label | None, Task | None]:
        work.lock_annotator(s, annotator)  # two undos at once undo two labels, not one twice
        cur = _lease(s, project, annotator)
        if (cur.item_id if cur else None) != shown:
            return False, None, _task_of(s, cur, project, annotator)  # committed: the lease the page is sent to is held
        last = labels.last_human(s, annotator)
        if last is None:
            return True, None, _task_of(s, cur, project, annotator)
        labels.append(s, Label(item_id=last.item_id, annotator=annotator, kind=HUMAN, decision=Decision.UNDO,
                               undoes_id=last.id, model_version_id=last.model_version_id,
                               round_id=last.round_id))
        store_disputes.reopen(s, last.id)  # a suspicion the undone label settled is open again
        # The undone field is open for them again unless a colleague has decided it (or holds
        # the item) meanwhile: then their next item.
        q = work.lease_item(s, annotator, last.item_id, ttl=_ttl(project), overlap=project.config.labeling.overlap,
                            fields=project.field_names)
        q = q or _lease(s, project, annotator)
        return True, last, _task_of(s, q, project, annotator)

    ok, undone, task = db.write(project.engine, fn)
    if not ok:
        raise NotCurrent(shown, task)
    return undone, task


def progress(project: Project, annotator: str, round_id: int | None) -> dict[str, int]:
    """Figures for the Label tab's progress line: the round's items by state (`work.RoundProgress`),
    labelled items of all (in every label field: done), and the annotator's effective decisions
    (an undone one is not counted)."""
    with db.session(project.engine) as s:
        rnd = work.round_progress(s, round_id, project.field_names) if round_id else work.RoundProgress(0, 0, 0, 0, 0)
        labelled = labels.count_done(s, project.field_names)
        n_items = items.count(s)
        mine = sum(labels.decisions_by_annotator(s, annotator).get(annotator, {}).values())
    return {"round_labelled": rnd.labelled, "round_skipped": rnd.skipped, "round_unsure": rnd.unsure,
            "round_total": rnd.total, "labelled": labelled, "items": n_items, "mine": mine}


def human_label_count(session: Session) -> int:
    """Effective human class labels (what the retrain policy counts)."""
    return labels.count_human_class(session)


def similar_labelled(project: Project, item_id: int, index: SimilarityIndex, *,
                     k: int = 6) -> list[tuple[int, str, str, float]]:
    """The ``k`` labelled items nearest to ``item_id`` in ``index`` (one model version's embeddings).

    Returns [(item_id, path, current label, cosine)] nearest first; empty when the item has no
    embedding in this version.
    """
    query = index.vector(item_id)
    if query is None:
        return []

    def has_label(ids: np.ndarray) -> np.ndarray:
        with db.session(project.engine) as s:
            current = labels.current(s, ids.tolist())
        return np.array([int(i) in current for i in ids], dtype=bool)

    found = index.neighbours(query, k, allow=has_label, exclude=[item_id])
    ids = [i for i, _ in found]
    with db.session(project.engine) as s:
        current = labels.current(s, ids)
        paths = items.paths(s, ids)
    return [(i, paths[i], current[i].label, sim) for i, sim in found if i in current and i in paths]
