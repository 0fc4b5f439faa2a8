"""`active history` (the audit trail of one item) and `active changes --since`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from active.cli import main
from active.errors import UserError
from active.history import changes, history, parse_since
from active.importer import import_candidates, scan_folder
from storage import db, labels
from storage.tables import Item, Label

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)  # history rows may carry any time


@pytest.fixture
def ids(project, class_folder) -> dict[str, int]:  # noqa: ANN001
    found, _, _ = scan_folder(class_folder)
    import_candidates(project, found, progress=False)
    with db.session(project.engine) as s:
        return {"/".join(Path(i.path).parts[-2:]): i.id for i in s.exec(db.select(Item))}


def add(project, item_id: int, cls: str | None, when: datetime, *, who: str = "alice",  # noqa: ANN001
        kind: str = "human", decision: str = "corrected", **kw) -> int:
    def tx(s) -> int:  # noqa: ANN001
        return labels.append(s, Label(item_id=item_id, annotator=who, label=cls, kind=kind, decision=decision,
                                      created_at=when, **kw)).id

    return db.write(project.engine, tx)


def test_history_lists_every_row_with_undo_state(project, ids, capsys):  # noqa: ANN001
    item = ids["dress/2.png"]
    first = add(project, item, "shirt", T0, suggestion="shirt", confidence=0.81, decision="accepted")
    add(project, item, None, T0 + timedelta(minutes=1), decision="undo", undoes_id=first)
    add(project, item, "shoes", T0 + timedelta(minutes=2), who="bob", suggestion="shirt", confidence=0.4)
    h = history(project, str(item))
    assert [r["decision"] for r in h["labels"]] == ["given", "accepted", "undo", "corrected"]
    assert h["labels"][1]["undone_by"] == h["labels"][2]["id"] and h["labels"][2]["undoes"] == first
    assert h["labels"][1]["confidence"] == pytest.approx(0.81) and h["labels"][0]["annotator"] == "import"
    assert h["current"]["label"] == "shoes" and h["current"]["source"] == "single"

    with db.session(project.engine) as s:
        it = s.get(Item, item)
    assert history(project, it.sha256[:10])["item"]["id"] == item
    assert history(project, it.path)["item"]["id"] == item

    assert main(["--project", str(project.root), "history", str(item)]) == 0
    text = capsys.readouterr().out
    assert "current label: shoes (single" in text and "shirt (0.81)" in text and f"undone by {first + 1}" in text
    assert main(["--project", str(project.root), "--json", "history", str(item)]) == 0
    assert len(json.loads(capsys.readouterr().out)["labels"]) == 4


def test_history_of_an_unknown_item_is_a_user_error(project, ids, capsys):  # noqa: ANN001
    with pytest.raises(UserError):
        history(project, "999999")
    assert main(["--project", str(project.root), "history", "nope.png"]) == 2
    assert "no item" in capsys.readouterr().err


def test_changes_since_compare_the_label_then_and_now(project, ids, capsys):  # noqa: ANN001
    # The import's rows carry the real clock: put every later row in the future of it.
    before_import = datetime.now(UTC) - timedelta(days=1)
    assert len(changes(project, before_import)) == len(ids)  # imported labels are changes too
    since = datetime.now(UTC) + timedelta(hours=1)
    a, b, c, d = (ids[k] for k in ("dress/0.png", "dress/1.png", "shirt/0.png", "shoes/0.png"))
    add(project, a, "shirt", since + timedelta(minutes=5))  # dress -> shirt: changed
    add(project, b, "shirt", since + timedelta(minutes=5))  # changed and changed back: not listed
    add(project, b, "dress", since + timedelta(minutes=6), kind="review", decision="resolved", who="rev")
    early = add(project, c, "shoes", since - timedelta(minutes=30))  # before the date ...
    add(project, c, None, since + timedelta(minutes=7), decision="undo", undoes_id=early)  # ... undone after
    add(project, d, "shoes", since + timedelta(minutes=8), decision="accepted")  # confirms: no change
    found = {ch.item_id: ch for ch in changes(project, since)}
    assert set(found) == {a, c}
    assert (found[a].before.label, found[a].after.label, found[a].by) == ("dress", "shirt", "alice")
    assert (found[c].before.label, found[c].before.source, found[c].after.label) == ("shoes", "single", "shirt")
    assert found[c].after.source == "imported" and found[c].by == "alice"

    late = since + timedelta(days=1)
    assert changes(project, late) == []
    add(project, a, "shoes", late + timedelta(minutes=1), who="bob")  # shirt+shoes tie -> latest: shoes
    [only] = changes(project, late)
    assert (only.item_id, only.before.label, only.after.label, only.by) == (a, "shirt", "shoes", "bob")
    assert only.after.source == "consensus"

    assert main(["--project", str(project.root), "--json", "changes", "--since", late.isoformat()]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [x["item_id"] for x in data["changed"]] == [a]
    assert main(["--project", str(project.root), "changes", "--since", since.isoformat()]) == 0
    text = capsys.readouterr().out
    assert text.startswith("2 items changed label") and "dress (imported)" in text
    assert main(["--project", str(project.root), "changes", "--since", "2999-01-01"]) == 0
    assert "no label changed" in capsys.readouterr().out
    assert main(["--project", str(project.root), "changes", "--since", "last tuesday"]) == 2


def test_parse_since() -> None:
    assert parse_since("2024-05-01") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01T14:30:00+02:00") == datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    assert parse_since("2024-05-01 14:30").tzinfo is UTC
    with pytest.raises(UserError):
        parse_since("05/01/2024")
