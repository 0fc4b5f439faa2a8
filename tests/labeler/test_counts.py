"""One scripted session through the labeller's client; every view reports the same numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def test_every_view_counts_the_same_after_undo(labeller, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    from active.cli import main
    from tests.labeler.test_label_tab import item_of

    c = labeller.client("ann")
    cur = item_of(c.predict(api_name="/start"))
    for api in ("/accept", "/accept", "/accept", "/skip", "/unsure", "/undo"):  # undo takes back the unsure
        cur = item_of(c.predict(item_id=cur, api_name=api))
    root = str(labeller.project.root)

    capsys.readouterr()
    assert main(["--project", root, "--json", "status"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["annotators"] == {"ann": {"accepted": 3, "skipped": 1}}
    (rnd,) = st["open_rounds"]
    assert (rnd["labelled"], rnd["skipped"], rnd["unsure"], rnd["total"]) == (3, 1, 0, 12)
    assert st["items"]["pool"]["labelled"] == 3
    assert sum(v["total"] for v in st["classes"].values()) == 3

    progress, _gallery = c.predict(api_name="/side")
    assert "3 / 12 labelled in this round (1 skipped, 0 unsure)" in progress
    assert "3 labelled of 12" in progress and "4 by you" in progress

    by_class, by_annot, *_ = c.predict(api_name="/dashboard")
    assert by_annot["data"] == [["ann", 4, 3, 0, 0, 1, 0, 0]]  # last: labels given on a page
    assert sum(r[1] for r in by_class["data"]) == 3 and sum(r[3] for r in by_class["data"]) == 3

    out = tmp_path / "export"
    assert main(["--project", root, "export", "--format", "csv", "--out", str(out), "--no-progress"]) == 0
    with (out / "labels.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["source"] for r in rows} == {"single"}
    assert {r["annotator"] for r in rows} == {"ann"}
