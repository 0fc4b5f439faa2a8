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


def test_unfinished_items_of_an_annotator(engine, add_items) -> None:  # noqa: ANN001
    from storage import work

    a, b, c = add_items(engine, 3)

    def seed(s):  # noqa: ANN001, ANN202
        work.open_round(s, strategy="margin", model_version_id=None, item_ids=[a, b, c], scores=[0.1, 0.2, 0.3],
                        score_name="margin")
        for item, fields in ((a, FIELDS), (b, FIELDS[:1]), (c, ())):
            for f in fields:
                labels.append(s, Label(item_id=item, field=f, annotator="ann", label=CLASSES[f][0], kind=Kind.HUMAN,
                                       decision=Decision.ACCEPTED))

    db.write(engine, seed)
    with db.session(engine) as s:
        assert work.unfinished(s, "ann", FIELDS) == b  # a is done, c not started
        assert work.unfinished(s, "bob", FIELDS) is None
        assert work.unfinished(s, "ann", FIELDS[:1]) is None  # one field: nothing is ever midway
