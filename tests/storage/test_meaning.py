"""Each rule of storage.meaning: the Python predicate and its SQL expression agree on random
label histories, and the counts built on them (round progress, per-annotator decisions, the
serving version) follow."""

from __future__ import annotations

import random

from sqlalchemy import func, select

from storage import db, items, labels, meaning, versions, work
from storage.enums import Decision, Kind, RoundState
from storage.tables import Item, Label, ModelVersion, Prediction

ANNOTATORS = ("alice", "bob", "carol")
CLASSES = ("dress", "shirt")


def _random_history(engine, item_ids: list[int], seed: int) -> None:  # noqa: ANN001
    """Imported labels, human decisions of every kind, undos of some of them, a review or two."""
    rng = random.Random(seed)

    def fn(s):  # noqa: ANN001, ANN202
        for i in item_ids:
            if rng.random() < 0.4:
                labels.append(s, Label(item_id=i, annotator="import", label=rng.choice(CLASSES),
                                       kind=Kind.IMPORTED, decision=Decision.GIVEN))
            for _ in range(rng.randrange(4)):
                who = rng.choice(ANNOTATORS)
                decision = rng.choice([Decision.ACCEPTED, Decision.CORRECTED, Decision.UNSURE, Decision.SKIPPED])
                row = labels.append(s, Label(item_id=i, annotator=who, kind=Kind.HUMAN, decision=decision,
                                             label=rng.choice(CLASSES) if decision in meaning.CLASS_DECISIONS else None))
                if rng.random() < 0.35:
                    labels.append(s, Label(item_id=i, annotator=who, kind=Kind.HUMAN, decision=Decision.UNDO,
                                           undoes_id=row.id))
            if rng.random() < 0.1:
                labels.append(s, Label(item_id=i, annotator="rev", label=rng.choice(CLASSES), kind=Kind.REVIEW,
                                       decision=Decision.RESOLVED))

    db.write(engine, fn)


def test_predicates_and_sql_agree(engine, add_items) -> None:  # noqa: ANN001
    ids = add_items(engine, 60)
    _random_history(engine, ids, seed=3)
    db.write(engine, lambda s: items.mark_unreadable(s, ids[0], "truncated"))
    with db.session(engine) as s:
        rows = labels.for_items(s, ids)
        for i in ids:
            group = rows.get(i, [])
            assert s.execute(select(meaning.sql_labelled(Item.id)).where(Item.id == i)).scalar_one() == \
                meaning.is_labelled(group)
            assert s.execute(select(meaning.sql_done_count(Item.id)).where(Item.id == i)).scalar_one() == \
                len(meaning.done_by(group))
            for who in ANNOTATORS:
                assert s.execute(select(meaning.sql_seen_by(Item.id, who)).where(Item.id == i)).scalar_one() == \
                    meaning.seen_by(group, who)
            conds = meaning.sql_round_state(Item.id, Item.error)
            got = [state for state, cond in conds.items()
                   if s.execute(select(cond).where(Item.id == i)).scalar_one()]
            want = meaning.round_state(group, unreadable=i == ids[0])
            assert got == ([] if want == RoundState.OPEN else [want])
        # Effective human class labels, counted in SQL and in Python.
        every = [r for g in rows.values() for r in meaning.effective(g)]
        assert labels.count_human_class(s) == sum(meaning.is_human_class(r) for r in every)
        assert labels.count_labelled(s) == sum(meaning.is_labelled(g) for g in rows.values())
        by_annot = labels.decisions_by_annotator(s)
        for who in ANNOTATORS:
            want = sorted(r.decision for r in every if r.annotator == who)
            assert sorted(by_annot.get(who, {}).elements()) == want
            assert Decision.UNDO not in by_annot.get(who, {})


def test_round_progress_counts_each_item_once(engine, add_items) -> None:  # noqa: ANN001
    ids = add_items(engine, 40)
    _random_history(engine, ids, seed=7)
    rnd = db.write(engine, lambda s: work.open_round(s, strategy="random", model_version_id=None, item_ids=ids,
                                                     scores=[0.0] * len(ids), score_name="random"))
    with db.session(engine) as s:
        rows = labels.for_items(s, ids)
        p = work.round_progress(s, rnd.id)
    states = [meaning.round_state(rows.get(i, [])) for i in ids]
    assert (p.labelled, p.skipped, p.unsure, p.total) == (
        states.count(RoundState.LABELLED), states.count(RoundState.SKIPPED), states.count(RoundState.UNSURE), 40)
    assert p.handled == sum(st != RoundState.OPEN for st in states)


def test_undo_takes_a_decision_out_of_every_count(engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(engine, 1)

    def fn(s):  # noqa: ANN001, ANN202
        row = labels.append(s, Label(item_id=i, annotator="alice", label="dress", kind=Kind.HUMAN,
                                     decision=Decision.ACCEPTED))
        labels.append(s, Label(item_id=i, annotator="alice", kind=Kind.HUMAN, decision=Decision.UNDO,
                               undoes_id=row.id))

    db.write(engine, fn)
    with db.session(engine) as s:
        assert labels.count_labelled(s) == 0 and labels.count_human_class(s) == 0
        assert labels.decisions_by_annotator(s) == {}
        assert labels.human_ratings(s) == {} and labels.current(s) == {}
        assert not meaning.seen_by(labels.item_rows(s, i), "alice")


def _version(engine, predicted: list[int]) -> int:  # noqa: ANN001
    def fn(s):  # noqa: ANN001, ANN202
        v = versions.publish(s, ModelVersion(backbone="b", weights="w", mode="head", classes=list(CLASSES)))
        versions.add_predictions(s, [Prediction(item_id=i, model_version_id=v.id, pred="dress", probs=[0.6, 0.4],
                                                row=k) for k, i in enumerate(predicted)])
        return v.id

    return db.write(engine, fn)


def test_serving_version_is_the_newest_that_covers_the_pool(engine, add_items) -> None:  # noqa: ANN001
    pool = add_items(engine, 4)
    holdout = add_items(engine, 2, split="holdout", start=50)
    with db.session(engine) as s:
        assert versions.serving(s) is None
    v1 = _version(engine, pool)
    v2 = _version(engine, pool[:2] + holdout)  # still scoring: v1 keeps serving
    with db.session(engine) as s:
        assert versions.serving(s).id == v1 and versions.latest(s).id == v2
        assert versions.serving_prediction(s, pool[3])[1].id == v1
        cover = [v for v in (v1, v2) if s.execute(select(func.count()).select_from(ModelVersion).where(
            ModelVersion.id == v, meaning.sql_covers_pool(ModelVersion.id))).scalar_one()]
    assert cover == [v1]
    assert meaning.serving_id([v1, v2], cover) == v1
    assert meaning.covers(pool + holdout, pool) and not meaning.covers(pool[:2], pool)
    db.write(engine, lambda s: items.mark_unreadable(s, pool[3], "truncated"))
    db.write(engine, lambda s: versions.add_predictions(s, [Prediction(item_id=pool[2], model_version_id=v2,
                                                                          pred="dress", probs=[0.6, 0.4], row=9)]))
    with db.session(engine) as s:
        assert versions.serving(s).id == v2  # an unreadable item is never scored: it is not waited for
    assert meaning.serving_id([v1, v2], []) == v2 and meaning.serving_id([], []) is None
