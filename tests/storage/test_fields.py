"""Label fields in the store: each rule of storage.meaning per field (predicate and SQL agree),
undo rows follow their label's field, disputes are per field, and per-field predictions read
back the same way as the default field's."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from storage import db, disputes, labels, meaning
from storage.enums import Decision, DisputeReason, Kind
from storage.fields import DEFAULT_FIELD, check_field_name, field_prediction
from storage.tables import Item, Label, Prediction

FIELDS = (DEFAULT_FIELD, "colour")
CLASSES = {DEFAULT_FIELD: ("dress", "shirt"), "colour": ("black", "white")}


def _history(engine, item_ids: list[int], seed: int) -> None:  # noqa: ANN001
    """Independent random histories per field: imported labels, human decisions, undos, reviews."""
    rng = random.Random(seed)

    def fn(s):  # noqa: ANN001, ANN202
        for i in item_ids:
            for f in FIELDS:
                if rng.random() < 0.5:
                    labels.append(s, Label(item_id=i, field=f, annotator="import", label=rng.choice(CLASSES[f]),
                                           kind=Kind.IMPORTED, decision=Decision.GIVEN))
                for _ in range(rng.randrange(3)):
                    decision = rng.choice([Decision.ACCEPTED, Decision.CORRECTED, Decision.SKIPPED])
                    row = labels.append(s, Label(item_id=i, field=f, annotator=rng.choice("ab"), kind=Kind.HUMAN,
                                                 decision=decision, label=rng.choice(CLASSES[f])
                                                 if decision in meaning.CLASS_DECISIONS else None))
                    if rng.random() < 0.3:  # the caller does not say the field: storage takes the undone row's
                        labels.append(s, Label(item_id=i, annotator="a", kind=Kind.HUMAN, decision=Decision.UNDO,
                                               undoes_id=row.id))
                if rng.random() < 0.1:
                    labels.append(s, Label(item_id=i, field=f, annotator="rev", label=rng.choice(CLASSES[f]),
                                           kind=Kind.REVIEW, decision=Decision.RESOLVED))

    db.write(engine, fn)


def test_rules_per_field_agree_with_sql(engine, add_items) -> None:  # noqa: ANN001
    ids = add_items(engine, 50)
    _history(engine, ids, seed=5)
    with db.session(engine) as s:
        rows = labels.for_items(s, ids)
        for i in ids:
            group = rows.get(i, [])
            assert all(r.field == next(u.field for u in group if u.id == r.undoes_id)
                       for r in group if r.decision == Decision.UNDO)
            for f in FIELDS:
                assert s.execute(select(meaning.sql_labelled(Item.id, f)).where(Item.id == i)).scalar_one() == \
                    meaning.is_labelled(group, f)
                cur = meaning.derive(group, f)
                assert cur is None or cur.label in CLASSES[f]
            assert s.execute(select(meaning.sql_done(Item.id, FIELDS)).where(Item.id == i)).scalar_one() == \
                meaning.is_done(group, FIELDS)
        done = sum(meaning.is_done(rows.get(i, []), FIELDS) for i in ids)
        assert labels.count_done(s, FIELDS) == done
        per_field = {f: labels.count_labelled(s, f) for f in FIELDS}
        assert per_field == {f: sum(meaning.is_labelled(rows.get(i, []), f) for i in ids) for f in FIELDS}
        assert 0 < done < min(per_field.values())  # the fields are independent
        assert set(labels.current(s, ids, field="colour")) == {i for i in ids if meaning.derive(rows[i], "colour")}


def test_a_label_of_one_field_says_nothing_of_another(memory_engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(memory_engine, 1)
    db.write(memory_engine, lambda s: labels.append(s, Label(item_id=i, field="colour", annotator="a", label="black",
                                                           kind=Kind.HUMAN, decision=Decision.ACCEPTED)))
    with db.session(memory_engine) as s:
        group = labels.for_items(s, [i])[i]
        assert meaning.is_labelled(group, "colour") and not meaning.is_labelled(group)
        assert meaning.derive(group) is None and meaning.derive(group, "colour").label == "black"
        assert labels.count_labelled(s) == 0 and labels.count_human_class(s) == 1
        assert labels.uses_by_class(s) == {} and labels.uses_by_class(s, "colour") == {"black": 1}


def test_bad_field_names_are_refused(memory_engine, add_items) -> None:  # noqa: ANN001
    (i,) = add_items(memory_engine, 1)
    for bad in ("Colour", "1st", "a b", ""):
        with pytest.raises(ValueError, match="field name"):
            check_field_name(bad)
    with pytest.raises(ValueError, match="field name"):
        db.write(memory_engine, lambda s: labels.append(s, Label(item_id=i, field="x y", annotator="a", label="k",
                                                                 kind=Kind.HUMAN, decision=Decision.ACCEPTED)))


def test_disputes_are_per_field(memory_engine, add_items) -> None:  # noqa: ANN001
    a, b = add_items(memory_engine, 2)
    suspect = DisputeReason.IMPORTED_LABEL_SUSPECT

    def seed(s):  # noqa: ANN001, ANN202
        for f in FIELDS:
            labels.append(s, Label(item_id=a, field=f, annotator="import", label=CLASSES[f][0], kind=Kind.IMPORTED,
                                   decision=Decision.GIVEN))
        disputes.replace_open(s, suspect, [(a, 0.9, {})], field=DEFAULT_FIELD)
        disputes.replace_open(s, suspect, [(a, 0.8, {}), (b, 0.7, {})], field="colour")
        # A refresh of one field leaves the other field's open disputes alone.
        disputes.replace_open(s, suspect, [(a, 0.95, {})], field=DEFAULT_FIELD)

    db.write(memory_engine, seed)
    with db.session(memory_engine) as s:
        assert disputes.count_open_by_field(s) == {DEFAULT_FIELD: {suspect: 1}, "colour": {suspect: 2}}
        assert [d.item_id for d in disputes.open_disputes(s, field="colour")] == [a, b]

    def person_agrees_on_colour(s):  # noqa: ANN001, ANN202
        row = labels.append(s, Label(item_id=a, field="colour", annotator="ann", label=CLASSES["colour"][0],
                                     kind=Kind.HUMAN, decision=Decision.ACCEPTED))
        return disputes.follow_label(s, row)

    settled = db.write(memory_engine, person_agrees_on_colour)
    assert [(d.field, d.status) for d in settled] == [("colour", "resolved")]
    with db.session(memory_engine) as s:
        left = disputes.open_disputes(s)
        assert sorted((d.field, d.item_id) for d in left) == [(DEFAULT_FIELD, a), ("colour", b)]
        cat = next(d for d in left if d.field == DEFAULT_FIELD)

    def review_with_the_wrong_field(s):  # noqa: ANN001, ANN202
        row = labels.append(s, Label(item_id=a, field="colour", annotator="rev", label="white", kind=Kind.REVIEW,
                                     decision=Decision.RESOLVED))
        disputes.resolve(s, cat.id, row)

    with pytest.raises(ValueError, match="about field"):
        db.write(memory_engine, review_with_the_wrong_field)


def test_field_prediction_reads_every_field_alike() -> None:
    row = Prediction(item_id=1, model_version_id=1, row=0, pred="dress", confidence=0.9, margin=0.8, entropy=0.3,
                     probs=[0.9, 0.1], fields={"colour": {"pred": "white", "confidence": 0.6, "margin": 0.2,
                                                          "entropy": 0.67, "probs": [0.4, 0.6]}})
    assert field_prediction(row).pred == "dress"
    assert field_prediction(row, "colour").probs == [0.4, 0.6]
    assert field_prediction(row, "season") is None
    assert field_prediction(Prediction(item_id=1, model_version_id=1, row=0)) is None


def test_hand_out_rules_per_field_agree_with_sql(engine, add_items) -> None:  # noqa: ANN001
    ids = add_items(engine, 50)
    _history(engine, ids, seed=11)
    checked = set()
    with db.session(engine) as s:
        rows = labels.for_items(s, ids)
        for i in ids:
            group = rows.get(i, [])
            for who in ("a", "b", "c"):
                for overlap, leases in ((1, 0), (2, 0), (2, 1), (3, 1)):
                    want = meaning.open_fields(group, who, FIELDS, overlap=overlap, leases=leases)
                    got = s.execute(select(meaning.sql_open_for(Item.id, who, FIELDS, overlap=overlap, leases=leases))
                                    .where(Item.id == i)).scalar_one()
                    assert bool(got) == bool(want)
                    checked.add(tuple(want))
            conds = meaning.sql_round_state(Item.id, Item.error, FIELDS)
            got = [st for st, cond in conds.items() if s.execute(select(cond).where(Item.id == i)).scalar_one()]
            want = meaning.round_state(group, FIELDS)
            assert got == ([] if want == meaning.RoundState.OPEN else [want])
    assert {(), (DEFAULT_FIELD,), ("colour",), FIELDS} <= checked  # every case of two fields was met


@pytest.mark.parametrize("overlap", [1, 2])
def test_an_item_is_handed_out_until_every_field_is_decided(engine, add_items, overlap: int) -> None:  # noqa: ANN001
    """ann decides one field of an item and leaves: bob gets it, asked the open fields only; it is
    finished for the hand-out when ``overlap`` annotators decided each field."""
    from storage import work

    a, b = add_items(engine, 2)
    db.write(engine, lambda s: work.open_round(s, strategy="margin", model_version_id=None, item_ids=[a, b],
                                               scores=[0.2, 0.1], score_name="margin"))

    def lease(who: str) -> int | None:
        got = db.write(engine, lambda s: work.lease_next(s, who, fields=FIELDS, overlap=overlap))
        return None if got is None else got.item_id

    def decide(who: str, item: int, field: str, decision: Decision = Decision.ACCEPTED) -> None:
        def fn(s):  # noqa: ANN001, ANN202
            labels.append(s, Label(item_id=item, field=field, annotator=who, kind=Kind.HUMAN, decision=decision,
                                   label=CLASSES[field][0] if decision in meaning.CLASS_DECISIONS else None))
            work.release(s, who)
        db.write(engine, fn)

    def left(who: str, item: int) -> list[str]:
        with db.session(engine) as s:
            return labels.open_fields(s, who, item, FIELDS, overlap=overlap)

    def progress():  # noqa: ANN202
        with db.session(engine) as s:
            rnd = work.open_rounds(s)[0]
            return work.round_progress(s, rnd.id, FIELDS, per_field=True)

    assert lease("ann") == a
    decide("ann", a, DEFAULT_FIELD)  # ... and ann leaves: colour is still open
    p = progress()
    assert (p.labelled, p.by_field) == (0, {DEFAULT_FIELD: 1, "colour": 0})  # half-done is not labelled
    assert lease("bob") == a  # not only ann's to finish
    assert left("bob", a) == (["colour"] if overlap == 1 else list(FIELDS))
    for f in left("bob", a):
        decide("bob", a, f)
    assert progress().labelled == 1
    assert left("ann", a) == ([] if overlap == 1 else ["colour"])
    # ann comes back: with overlap 2 her half-done item first; with overlap 1 it is finished.
    assert lease("ann") == (b if overlap == 1 else a)
    db.write(engine, lambda s: work.release(s, "ann"))
    # A skip leaves a field to others; a review settles it.
    decide("ann", b, DEFAULT_FIELD, Decision.SKIPPED)
    decide("ann", b, "colour", Decision.ACCEPTED)
    assert left("bob", b) == ([DEFAULT_FIELD] if overlap == 1 else list(FIELDS))
    db.write(engine, lambda s: labels.append(s, Label(item_id=b, field=DEFAULT_FIELD, annotator="rev", label="dress",
                                                      kind=Kind.REVIEW, decision=Decision.RESOLVED)))
    assert left("bob", b) == ([] if overlap == 1 else ["colour"])
    if overlap == 1:
        assert lease("bob") is None and lease("ann") is None
    else:
        assert lease("bob") == b and lease("ann") == a  # ann still owes a's colour


def test_an_item_left_midway_comes_back_first(engine, add_items) -> None:  # noqa: ANN001
    from storage import work

    a, b = add_items(engine, 2)
    db.write(engine, lambda s: work.open_round(s, strategy="margin", model_version_id=None, item_ids=[a, b],
                                               scores=[0.2, 0.1], score_name="margin"))

    def fn(s):  # noqa: ANN001, ANN202
        assert work.lease_item(s, "ann", b, fields=FIELDS).item_id == b
        labels.append(s, Label(item_id=b, field="colour", annotator="ann", label="black", kind=Kind.HUMAN,
                               decision=Decision.ACCEPTED))
        work.release(s, "ann")

    db.write(engine, fn)
    with db.session(engine) as s:
        assert work.peek_next(s, "ann", n=2, fields=FIELDS) == [b, a]  # ann's half-done item first
        assert work.peek_next(s, "bob", n=2, fields=FIELDS) == [a, b]  # others keep the round's order
        assert work.peek_next(s, "ann", n=2) == [a, b]  # one field (category): nothing is midway
