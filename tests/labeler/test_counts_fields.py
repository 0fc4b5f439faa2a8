"""Counts of a project with two label fields, through the labeller's client and `status`: an
item is labelled (in a round, in the progress line, in ``done``) once every field is; each field
has its own figures, and the dashboard's tables show them per field."""

from __future__ import annotations

import json

import pytest
from test_label_tab import item_of


@pytest.fixture
def project(project):  # noqa: ANN001, ANN201 - the conftest project with a second field
    project.add_field("colour", ["dark", "light"])
    return project


def test_every_view_counts_per_field(labeller, capsys) -> None:  # noqa: ANN001
    from active.cli import main

    c = labeller.client("ann")
    a = item_of(c.predict(api_name="/start"))
    assert item_of(c.predict(item_id=a, api_name="/accept")) == a  # category, then the same item's colour
    b = item_of(c.predict(item_id=a, cls="light", api_name="/correct"))  # a is done
    assert item_of(c.predict(item_id=b, api_name="/accept")) == b
    third = item_of(c.predict(item_id=b, api_name="/skip"))  # b's colour skipped: left to others
    assert item_of(c.predict(item_id=third, api_name="/accept")) == third  # third: category only, so far

    capsys.readouterr()
    assert main(["--project", str(labeller.project.root), "--json", "status"]) == 0
    st = json.loads(capsys.readouterr().out)
    (rnd,) = st["open_rounds"]
    assert (rnd["labelled"], rnd["skipped"], rnd["unsure"], rnd["total"]) == (1, 1, 0, 12)
    assert rnd["by_field"] == {"category": 3, "colour": 1}
    assert st["done"] == 1
    cat, colour = st["fields"]["category"], st["fields"]["colour"]
    assert (cat["labelled"], colour["labelled"]) == (3, 1)
    assert (cat["labelled_by_split"]["pool"], colour["labelled_by_split"]["pool"]) == (3, 1)
    assert cat["annotators"] == {"ann": {"accepted": 3}}
    assert colour["annotators"] == {"ann": {"corrected": 1, "skipped": 1}}
    assert st["annotators"] == {"ann": {"accepted": 3, "corrected": 1, "skipped": 1}}  # every field's decisions
    assert colour["classes"]["light"]["total"] == 1

    progress, _gallery = c.predict(api_name="/side")
    assert "1 / 12 labelled in this round (1 skipped, 0 unsure)" in progress
    assert "1 labelled of 12" in progress and "5 by you" in progress

    by_class, by_annot, agree, *_ = c.predict(api_name="/dashboard")
    assert by_annot["headers"][:2] == ["annotator", "field"]
    assert by_annot["data"] == [["ann", "category", 3, 3, 0, 0, 0, 0, 0], ["ann", "colour", 2, 0, 1, 0, 1, 0, 0]]
    assert by_class["headers"][0] == "field"
    totals = {(r[0], r[1]): r[2] for r in by_class["data"]}
    assert sum(n for (f, _c), n in totals.items() if f == "category") == 3 and totals[("colour", "light")] == 1
    assert "on **category**" in agree and "on **colour**" in agree

    capsys.readouterr()
    assert main(["--project", str(labeller.project.root), "status"]) == 0
    text = capsys.readouterr().out
    assert "1 / 12 labelled (category 3, colour 1), 1 skipped" in text
    assert "done (labelled in every field): 1" in text
