"""Dashboard plots and the review queue's data, for the Review and Dashboard tabs.

Plots are matplotlib (Agg) PNGs, made on a background thread and cached per model version; the
counts come from `active.commands.status.collect` and the kappas from `active.agreement`.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from active.agreement import agreement
from active.attribution_methods import DEFAULT_METHOD
from active.disputes import rule_name
from active.errors import UserError
from active.project import Project
from labeler.services import Services
from storage import db, disputes, items, labels, versions
from storage.enums import Decision, Kind, Split
from storage.fields import DEFAULT_FIELD, field_classes, field_prediction
from storage.meaning import in_field
from storage.tables import DISPUTE_REASONS, Label

log = logging.getLogger(__name__)

PLOT_WAIT_S = 60
DISPUTES_SHOWN = 25


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_text(fn: Callable[..., Path]) -> Callable[..., Path]:
    """Draw with mathtext off: class names are user text, and one like ``$\\frac{x$`` would be
    parsed as TeX and break the plot (or render as a formula)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Path:
        with _plt().rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapped


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@_plain_text
def learning_curve(points: list[tuple[int, int, float]], path: Path) -> Path:
    """points: [(version id, n_labels, holdout accuracy)] -> PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    if points:
        xs = [p[1] for p in points]
        ys = [p[2] for p in points]
        ax.plot(xs, ys, marker="o")
        for v, x, y in points:
            ax.annotate(f"v{v}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_ylim(0, 1)
    else:
        ax.text(0.5, 0.5, "no version with holdout accuracy yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("labels used for training")
    ax.set_ylabel("holdout accuracy")
    ax.grid(alpha=0.3)
    return _save(fig, path)


@_plain_text
def confusion_plot(matrix: np.ndarray, classes: list[str], path: Path, *, title: str) -> Path:
    """matrix: (n_classes, n_classes), rows = true class, columns = predicted."""
    plt = _plt()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * max(n, 4), 1.0 + 0.45 * max(n, 4)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    top = matrix.max() if matrix.size else 0
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


@_plain_text
def distribution_plot(classes: list[str], labelled: Counter, predicted: Counter, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(len(classes))
    lab = np.array([labelled.get(c, 0) for c in classes], dtype=float)
    pred = np.array([predicted.get(c, 0) for c in classes], dtype=float)
    ax.bar(x - 0.2, lab / max(lab.sum(), 1), 0.4, label=f"labels ({int(lab.sum()):,})")
    ax.bar(x + 0.2, pred / max(pred.sum(), 1), 0.4, label=f"model predictions ({int(pred.sum()):,})")
    ax.set_xticks(x, classes, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of the pool")
    ax.legend(fontsize=8)
    return _save(fig, path)


class DashboardCache:
    """Per model version: the plots (one background job) and the class-average maps."""

    def __init__(self, project: Project, services: Services) -> None:
        self.project = project
        self.services = services
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dashboard")
        self._lock = threading.Lock()
        self._plots: dict[int | None, Future] = {}
        self._averages: dict[tuple[int, str], Future] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="active-labeler-dash-")
        self.folder = Path(self._tmp.name)

    def _plots_for(self, version_id: int | None) -> Future:
        with self._lock:
            fut = self._plots.get(version_id)
            if fut is None or (fut.done() and fut.exception() is not None):
                fut = self._plots[version_id] = self._pool.submit(self._make_plots, version_id)
            return fut

    def _make_plots(self, version_id: int | None) -> tuple[Path, Path, Path]:
        from active.commands.status import same_holdout
        from active.retrain import holdout_hash

        classes = list(self.project.config.classes)
        tag = f"v{version_id}"
        holdout = holdout_hash(self.project)
        with db.session(self.project.engine) as s:
            points = []
            for v in versions.all_versions(s):
                acc = (v.metrics or {}).get("holdout", {}).get("accuracy")
                # Only versions measured on today's holdout labels: other points are not comparable.
                if isinstance(acc, int | float) and same_holdout(v.metrics, holdout):
                    points.append((v.id, v.n_labels, float(acc)))
            version = versions.get(s, version_id) if version_id else None
            split = items.splits(s)
            preds = {i: p.pred for i, p in versions.predictions(s, version_id).items()} if version_id else {}
            current = labels.current(s)
        curve = learning_curve(points, self.folder / f"curve-{tag}.png")
        # Confusion on the holdout: the human-checked evaluation set, current label vs this version.
        names = list(version.classes) if version and version.classes else classes
        index = {c: i for i, c in enumerate(names)}
        matrix = np.zeros((len(names), len(names)), dtype=np.int64)
        for item_id, cur in current.items():
            p = preds.get(item_id)
            if split.get(item_id) == Split.HOLDOUT and p in index and cur.label in index:
                matrix[index[cur.label], index[p]] += 1
        title = f"model v{version_id}, {int(matrix.sum()):,} holdout items" if version_id else "no model yet"
        confusion = confusion_plot(matrix, names, self.folder / f"confusion-{tag}.png", title=title)
        pool_labels = Counter(cur.label for i, cur in current.items() if split.get(i) == Split.POOL)
        pool_preds = Counter(p for i, p in preds.items() if split.get(i) == Split.POOL and p)
        dist = distribution_plot(names, pool_labels, pool_preds, self.folder / f"dist-{tag}.png")
        return curve, confusion, dist

    def _average(self, version_id: int, cls: str) -> Future:
        key = (version_id, cls)
        with self._lock:
            fut = self._averages.get(key)
            if fut is None:
                fut = self._averages[key] = self._pool.submit(
                    self.services.class_average, self.project, cls, version_id=version_id, method=DEFAULT_METHOD)
            return fut

    def render(self) -> list[Any]:
        """Outputs: by-class rows, by-annotator rows, agreement text, 3 plot paths, averages, note."""
        from active.commands.status import annotator_table, class_table, collect

        st = collect(self.project)
        names = self.project.field_names
        with db.session(self.project.engine) as s:
            reps = {f: agreement(labels.human_ratings(s, f), self.project.classes_of(f)) for f in names}
        # Agreement is per field: two annotators agree on an item's colour, not on the item.
        agree = "\n\n".join(agreement_markdown(rep, field=f if len(names) > 1 else None) for f, rep in reps.items())
        version_id = st["current_version"]
        notes = []
        earlier = [f"v{v['id']}" for v in st["model_versions"] if v["same_holdout"] is False]
        if earlier:
            notes.append(f"left out of the learning curve, evaluated on earlier holdout labels: {', '.join(earlier)}")
        try:
            curve, confusion, dist = self._plots_for(version_id).result(timeout=PLOT_WAIT_S)
        except Exception as exc:  # noqa: BLE001
            log.exception("dashboard plots failed")
            curve = confusion = dist = None
            notes.append(f"plots failed: {exc}")
        averages = []
        if version_id is not None:
            pending = 0
            for cls in self.project.config.classes:
                fut = self._average(version_id, cls)
                if not fut.done():
                    pending += 1
                elif fut.exception() is not None:
                    notes.append(f"class-average attention for {cls} failed: {fut.exception()}")
                elif fut.result() is None:  # queued for a worker: ask again at the next Refresh
                    pending += 1
                    with self._lock:
                        self._averages.pop((version_id, cls), None)
                else:
                    averages.append((str(fut.result()), cls))
            if pending:
                notes.append(f"class-average attention: {pending} still being computed (Refresh to see them)")
        return [_frame(*class_table(st)), _frame(*annotator_table(st)),
                agree, curve and str(curve), confusion and str(confusion), dist and str(dist), averages,
                "  \n".join(_esc(n) for n in notes)]


def _frame(rows: list[list[Any]], headers: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=headers)


def agreement_markdown(rep: dict, *, field: str | None = None) -> str:
    """The agreement report of `active.agreement.agreement` (of one label ``field``, named when given)."""
    from labeler.app import esc

    title = "**Agreement**" + (f" on **{esc(field)}**" if field else "")
    if not rep["items"]:
        return f"{title}: no item has been labelled by two annotators yet (set `overlap` > 1 in active.toml)."
    lines = [f"{title} on {rep['items']:,} items labelled by several annotators"]
    if rep["fleiss"] is not None:
        lines[0] += f": Fleiss' κ = {rep['fleiss']:.2f}"
    for p in rep["pairs"]:
        lines.append(f"- {esc(p['a'])} / {esc(p['b'])}: Cohen's κ = {p['cohen']:.2f} on {p['items']:,} items")
    return "\n".join(lines)


# -- review ------------------------------------------------------------------------------------
def next_dispute(project: Project, services: Services, *, skip: list[int], dispute_id: int | None = None) -> dict | None:
    """The highest-scoring open dispute not in ``skip`` (or the open dispute ``dispute_id``), with
    everything the Review tab shows."""
    with db.session(project.engine) as s:
        if dispute_id is not None:
            one = disputes.get(s, dispute_id)
            rows = [one] if one is not None and one.status == disputes.OPEN else []
        else:
            rows = [d for d in services.open_disputes(s, limit=DISPUTES_SHOWN + len(skip)) if d.id not in skip]
        if not rows:
            return None
        d = rows[0]
        item = items.get(s, d.item_id)
        history = labels.for_items(s, [d.item_id]).get(d.item_id, [])
        cur = labels.derive(history, d.field)
        found = versions.serving_prediction(s, d.item_id, field=d.field)
    suggestion = confidence = version_id = None
    if found is not None:
        pred, version = found
        version_id = version.id
        probs = field_prediction(pred, d.field).probs
        order = np.argsort(-np.asarray(probs, dtype=np.float64), kind="stable")
        suggestion, confidence = field_classes(version, d.field)[order[0]], float(probs[order[0]])
    if d.detail.get("suggested"):
        # The out-of-fold evidence that raised the dispute: the serving head trained on this very
        # label and tends to agree with it.
        suggestion, confidence = d.detail["suggested"], d.detail.get("p_suggested")
    undone = {r.undoes_id for r in history if r.decision == Decision.UNDO}
    # Every row of the item, undone ones too (marked), so the reviewer sees the whole story.
    people = [(r.annotator, r.kind, r.decision, r.label, r.created_at.strftime("%Y-%m-%d %H:%M"), r.id in undone)
              for r in in_field(history, d.field) if r.decision != Decision.UNDO]
    return {"dispute_id": d.id, "item_id": d.item_id, "path": item.path, "split": item.split, "reason": d.reason,
            "field": d.field,
            "score": d.score, "given": cur.label if cur else None, "given_source": cur.source if cur else None,
            "suggestion": suggestion, "confidence": confidence, "version_id": version_id, "labels": people}


def _esc(text: object) -> str:
    from labeler.app import esc  # late: labeler.app imports this module

    return esc(text)


def dispute_markdown(d: dict, esc: Callable[[object], str]) -> str:
    conf = f" ({d['confidence']:.0%})" if d["confidence"] is not None else ""
    lines = [
        f"**Dispute #{d['dispute_id']}** on item #{d['item_id']} ({esc(d['split'])}) · field "
        f"**{esc(d.get('field', DEFAULT_FIELD))}** · {esc(rule_name(d['reason']))} · score {d['score']:.2f}",
        "",
        f"- given label: **{esc(d['given'] or '—')}** ({esc(d['given_source'] or 'none')})",
        f"- model v{d['version_id']} suggests: **{esc(d['suggestion'] or '—')}**{conf}",
        "",
        "| who | kind | decision | label | when (UTC) |",
        "|---|---|---|---|---|",
    ]
    for a, k, dec, lab, when, undone in d["labels"]:
        dec = f"{dec} (undone)" if undone else dec
        lines.append(f"| {esc(a)} | {esc(k)} | {esc(dec)} | {esc(lab or '—')} | {esc(when)} |")
    return "\n".join(lines)


def dispute_tables(project: Project) -> tuple[list[list[Any]], list[list[Any]]]:
    """Open disputes by score: (the review queue of pool items, the holdout list). Holdout ones
    have their own list: a wrong label there skews every evaluation."""
    with db.session(project.engine) as s:
        return tuple([[d.id, d.item_id, rule_name(d.reason) + ("" if d.field == DEFAULT_FIELD else f" · {d.field}"),
                       round(float(d.score), 3)]  # type: ignore[return-value]
                      for d in disputes.open_disputes(s, limit=DISPUTES_SHOWN, queue=queue)]
                     for queue in disputes.QUEUES)


def dispute_counts(project: Project) -> list[list[Any]]:
    """Rows of reason, open, resolved (every reason, holdout_label_suspect included), then a total."""
    with db.session(project.engine) as s:
        n = disputes.counts(s)
    rows = [[rule_name(reason), n.get((reason, disputes.OPEN), 0), n.get((reason, disputes.RESOLVED), 0)]
            for reason in DISPUTE_REASONS]
    rows.append(["all", sum(r[1] for r in rows), sum(r[2] for r in rows)])
    return rows


def resolve(project: Project, services: Services, d: dict, label: str, reviewer: str) -> Label:
    """Append the reviewer's `review` label and mark the dispute resolved, in one transaction."""
    def fn(s: Any) -> Label:
        row = labels.append(s, Label(item_id=d["item_id"], field=d.get("field", DEFAULT_FIELD), annotator=reviewer,
                                     label=label, kind=Kind.REVIEW,
                                     decision=Decision.RESOLVED, suggestion=d.get("suggestion"),
                                     confidence=d.get("confidence"), model_version_id=d.get("version_id")))
        services.resolve_dispute(s, d["dispute_id"], row)
        return row

    try:
        return db.write(project.engine, fn)
    except ValueError as exc:  # resolved by someone else, or refreshed: nothing was written
        raise UserError(f"{exc}; press n for the next dispute") from None


def undo_review(project: Project, reviewer: str) -> tuple[Label | None, int | None]:
    """Cancel the reviewer's latest review label (appends an `undo` row) and open again the
    disputes it resolved, in one transaction. Returns (the undone label, a reopened dispute id);
    (None, None) when there is nothing to undo."""
    def fn(s: Any) -> tuple[Label | None, int | None]:
        last = labels.last_human(s, reviewer, kind=Kind.REVIEW)
        if last is None:
            return None, None
        labels.append(s, Label(item_id=last.item_id, annotator=reviewer, kind=Kind.REVIEW, decision=Decision.UNDO,
                               undoes_id=last.id, model_version_id=last.model_version_id))
        again = disputes.reopen(s, last.id)
        return last, (again[0].id if again else None)

    return db.write(project.engine, fn)
