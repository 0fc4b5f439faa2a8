"""The Label tab of a project with two label fields, through its public client: the item's fields
one after the other (each decision acts on the field shown), `/next_field` (key f) moves between
them, the next item comes after the last field."""

from __future__ import annotations

import pytest
from test_label_tab import human_labels, item_of, note_of


@pytest.fixture
def project(project):  # noqa: ANN001, ANN201 - the conftest project with a second field
    project.add_field("colour", ["dark", "light"])
    return project


def why_of(out) -> str:  # noqa: ANN001
    return next(o for o in out if isinstance(o, str) and "item #" in o)


def test_fields_one_after_the_other(labeller) -> None:  # noqa: ANN001
    c = labeller.client("ann")
    first = c.predict(api_name="/start")
    item = item_of(first)
    assert "Field **category**" in why_of(first)
    out = c.predict(item_id=item, api_name="/accept")
    assert item_of(out) == item and "Field **colour**" in why_of(out)  # same photo, next field
    assert note_of(out).startswith(f"#{item}: accepted")
    out = c.predict(item_id=item, api_name="/next_field")  # f: category is decided, colour stays
    assert item_of(out) == item and "Field **colour**" in why_of(out)
    out = c.predict(item_id=item, cls="light", api_name="/correct")
    assert item_of(out) != item and "Field **category**" in why_of(out)
    rows = human_labels(labeller.project, "ann")
    assert [(r.item_id, r.field, r.label) for r in rows][1] == (item, "colour", "light")
    assert rows[0].field == "category" and rows[0].label == rows[0].suggestion
    # The class list follows the field shown: a class of the other field is refused, nothing written.
    nxt = item_of(out)
    with pytest.raises(Exception, match="not in the list of choices"):
        c.predict(item_id=nxt, cls="light", api_name="/correct")
    out = c.predict(item_id=nxt, api_name="/next_field")
    assert item_of(out) == nxt and "Field **colour**" in why_of(out)
    assert len(human_labels(labeller.project, "ann")) == 2
