"""Open a round: the loop's side of the strategies (it owns the pool; strategies see arrays).

The candidates are readable ``pool`` items that no human has labelled yet (no label, or only
an imported one: imported catalogue labels are what the tool checks, not truth) and that no open
round has queued yet. Scores come from the current model version's cached arrays
(`active.scoring.load_probs` / `load_embeddings`). A version without a head for our classes
(the pretrained backbone) has no probabilities: then the round is ``kcenter`` on its
embeddings, or ``random`` when there are none (no model at all).

Label fields (`storage.fields`): a round targets one field (``field``: candidates are items not
labelled in it, scored by its head) or all of them (``field=None``, the default: candidates are
items not *done*, i.e. not labelled in every field). Across fields an item's uncertainty is that
of its most uncertain undecided field (the max of the per-field uncertainties, 1 - margin): the
labeller asks every field of an item it serves, so one hard field makes the whole item worth a
person's look, and a mean would let an easy field hide a hard one. The probability strategies
then see, per item, the probabilities of that field (zero-padded to the widest field, which
changes neither the top two, the maximum nor the entropy). With one field this is exactly the
single-field round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from active import strategies
from active.errors import UserError

if TYPE_CHECKING:
    from active.project import Project
    from storage.tables import Round

# Seed of the strategies' randomness: a round is reproducible from the store's state.
SELECTION_SEED = 0


@dataclass
class Pool:
    """What a strategy may choose from: candidate ids (n,) and the labelled pool's ids;
    ``undecided``: per candidate, the fields it is not labelled in yet (the targeted ones)."""

    candidates: np.ndarray
    labelled: np.ndarray
    version_id: int | None
    undecided: dict[int, list[str]] = field(default_factory=dict)


def candidate_pool(project: Project, fields: list[str] | None = None) -> Pool:
    """Readable pool items not labelled in every one of ``fields`` (`storage.meaning.is_labelled`:
    an imported label alone does not count; default: the project's fields), not queued in an
    open round; and the pool items labelled in all of them. Scores come from the serving version."""
    from storage import db, items, labels, versions, work
    from storage.enums import Split
    from storage.meaning import is_labelled

    fields = fields or project.field_names
    with db.session(project.engine) as s:
        pool = items.ids(s, split=Split.POOL)
        rows = labels.for_items(s, pool)
        queued = work.queued_in_open_rounds(s)
        version = versions.serving(s)
    undecided = {i: [f for f in fields if not is_labelled(rows.get(i, []), f)] for i in pool}
    confirmed = {i for i in pool if not undecided[i]}
    candidates = np.array([i for i in pool if i not in confirmed and i not in queued], dtype=np.int64)
    labelled = np.array(sorted(confirmed), dtype=np.int64)
    return Pool(candidates, labelled, version.id if version is not None else None,
                {int(i): undecided[int(i)] for i in candidates.tolist()})


def combined_probs(per_field: dict[str, tuple[np.ndarray, np.ndarray]],
                   undecided: dict[int, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """One probability row per item from several fields' heads: the row of its most uncertain
    undecided field (highest 1 - margin; ties: the earlier field), zero-padded to the widest.

    per_field: field -> (item ids (n_f,), probs (n_f, c_f)); undecided: item -> fields to weigh.
    Returns (item ids (n,) ascending, probs (n, max c_f)); items with no such row are left out."""
    from active.strategies import margin_scores

    width = max((p.shape[1] for _, p in per_field.values()), default=0)
    best: dict[int, tuple[float, np.ndarray]] = {}
    for name, (ids, probs) in per_field.items():
        if probs.size == 0:
            continue
        unsure = 1.0 - margin_scores(probs)
        for k, i in enumerate(ids.tolist()):
            if name in undecided.get(i, ()) and (i not in best or unsure[k] > best[i][0]):
                best[i] = (float(unsure[k]), probs[k])
    ids = np.array(sorted(best), dtype=np.int64)
    out = np.zeros((len(ids), width), dtype=np.float32)
    for r, i in enumerate(ids.tolist()):
        row = best[i][1]
        out[r, : row.shape[0]] = row
    return ids, out


def _rows(ids: np.ndarray, array_ids: np.ndarray, array: np.ndarray) -> np.ndarray:
    """The rows of ``array`` (keyed by ``array_ids``) of ``ids``, in that order; all must exist."""
    row_of = {int(i): r for r, i in enumerate(array_ids.tolist())}
    return array[[row_of[int(i)] for i in ids]]


def plan(project: Project, *, strategy: str, batch: int,
         field: str | None = None) -> tuple[strategies.Selection, str, int | None]:
    """Choose the batch without writing anything: (selection, strategy actually used, version).
    ``field``: the label field to target (None: every field, see the module docstring)."""
    from active.scoring import load_embeddings, load_probs

    if batch < 1:
        raise UserError("--batch must be at least 1")
    try:
        wanted = strategies.get(strategy)
    except strategies.UnknownStrategyError as exc:
        raise UserError(str(exc)) from None
    fields = [project.check_field(field)] if field is not None else project.field_names
    pool = candidate_pool(project, fields)
    if pool.candidates.size == 0:
        raise UserError("every pool item has a human label or is queued in an open round already")
    probs_ids = probs = emb_ids = emb = None
    if pool.version_id is not None:
        probs_ids, probs = combined_probs({f: load_probs(project, pool.version_id, f) for f in fields},
                                          pool.undecided)
        emb_ids, emb = load_embeddings(project, pool.version_id)
        if probs.size == 0:
            probs_ids = probs = None
        if emb.size == 0:
            emb_ids = emb = None

    name = wanted.name
    if wanted.needs_probs and probs is None:
        name = strategies.COLD_START_STRATEGY if emb is not None else "random"
    if strategies.get(name).needs_embeddings and emb is None:
        name = "margin" if probs is not None else "random"

    chosen = strategies.get(name)
    use_probs, use_emb = chosen.needs_probs, chosen.needs_embeddings
    ids = pool.candidates
    if use_probs:
        ids = ids[np.isin(ids, probs_ids)]
    if use_emb:
        ids = ids[np.isin(ids, emb_ids)]
    if ids.size == 0:
        raise UserError(f"version {pool.version_id} has not scored the {pool.candidates.size} candidate items: "
                        "run `active score` first")
    kwargs: dict = {}
    if use_probs:
        kwargs["probs"] = _rows(ids, probs_ids, probs)
    if use_emb:
        kwargs["embeddings"] = _rows(ids, emb_ids, emb)
        if chosen.uses_labelled:  # e.g. the core-set grows from what is labelled already
            kwargs["labelled"] = _rows(pool.labelled[np.isin(pool.labelled, emb_ids)], emb_ids, emb)
    try:
        sel = strategies.select(name, ids, batch, rng=np.random.default_rng(SELECTION_SEED), **kwargs)
    except strategies.StrategyError as exc:
        raise UserError(str(exc)) from None
    return sel, name, pool.version_id


def select_round(project: Project, *, strategy: str = strategies.DEFAULT_STRATEGY, batch: int,
                 force: bool = False, close_open: bool = False, field: str | None = None) -> Round:
    """Open a Round that queues the chosen batch in priority order with the score that picked
    each item. Returns the Round (its ``strategy`` is the one actually used).

    While another round is open this refuses (a second round would silently double the queue)
    unless ``force`` opens one beside it or ``close_open`` closes the open ones first (their
    unhandled items become candidates again)."""
    from storage import db, work

    with db.session(project.engine) as s:
        still_open = [(r, work.round_progress(s, r.id, project.field_names)) for r in work.open_rounds(s)]
    if still_open and close_open:
        db.write(project.engine, lambda s: [work.close_round(s, r.id) for r, _ in still_open])
    elif still_open and not force:
        r, p = still_open[0]
        raise UserError(f"round {r.id} is still open ({p.labelled} / {p.total} labelled, {p.skipped} skipped, "
                        f"{p.unsure} unsure): label it first, pass --close-open to close it, or --force to open "
                        "another beside it")
    sel, name, version_id = plan(project, strategy=strategy, batch=batch, field=field)

    def write(s):  # noqa: ANN001, ANN202
        return work.open_round(s, strategy=name, model_version_id=version_id, item_ids=sel.ids.tolist(),
                               scores=sel.scores.tolist(), score_name=sel.score_name)

    return db.write(project.engine, write)


def close_finished_rounds(project: Project) -> list[int]:
    """Close open rounds whose every queued item is handled (labelled, skipped, unsure or
    unreadable); returns their ids."""
    from storage import db, work

    def fn(s):  # noqa: ANN001, ANN202
        closed = []
        for rnd in work.open_rounds(s):
            progress = work.round_progress(s, rnd.id, project.field_names)
            if progress.total and progress.handled >= progress.total:
                work.close_round(s, rnd.id)
                closed.append(int(rnd.id))
        return closed

    return db.write(project.engine, fn)


def queued_left(project: Project) -> int:
    """Items queued in open rounds that nobody has handled yet."""
    from storage import db, work

    with db.session(project.engine) as s:
        progress = (work.round_progress(s, r.id, project.field_names) for r in work.open_rounds(s))
        return sum(p.total - p.handled for p in progress)
