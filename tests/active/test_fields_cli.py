"""`active fields` and `active classes --field`: a project's label fields and their classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from active.cli import main
from active.project import Project


def run_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_fields_add_and_list(project_dir: Path, capsys: pytest.CaptureFixture) -> None:
    p = ["--project", str(project_dir)]
    listed = run_json(capsys, *p, "fields", "list")
    assert [f["name"] for f in listed["fields"]] == ["category"]
    added = run_json(capsys, *p, "fields", "add", "colour", "--classes", "black,white,blue")
    assert added["fields"] == ["category", "colour"] and added["classes"] == ["black", "white", "blue"]
    run_json(capsys, *p, "fields", "add", "tone", "--preset", "colours")
    listed = run_json(capsys, *p, "fields", "list")
    assert [(f["name"], f["default"], f["labelled"]) for f in listed["fields"]] == [
        ("category", True, 0), ("colour", False, 0), ("tone", False, 0)]
    assert listed["fields"][0]["classes"] == ["dress", "shirt", "shoes"]
    # The field lives in active.toml beside the default field's classes, which are unchanged.
    config = Project.load(project_dir).config
    assert config.classes == ["dress", "shirt", "shoes"] and config.fields["colour"] == ["black", "white", "blue"]


def test_classes_per_field(project_dir: Path, capsys: pytest.CaptureFixture) -> None:
    p = ["--project", str(project_dir)]
    assert main([*p, "fields", "add", "colour", "--classes", "black"]) == 0
    got = run_json(capsys, *p, "classes", "--field", "colour", "add", "white", "black")
    assert got["added"] == ["white"] and got["classes"] == ["black", "white"]
    got = run_json(capsys, *p, "classes", "add", "red", "--field", "colour")
    assert got["classes"] == ["black", "white", "red"]
    assert run_json(capsys, *p, "classes", "list")["classes"] == ["dress", "shirt", "shoes"]
    assert run_json(capsys, *p, "classes", "list", "--field", "colour")["classes"] == ["black", "white", "red"]


@pytest.mark.parametrize("argv, message", [
    (["fields", "add", "category", "--classes", "a"], "exists already"),
    (["fields", "add", "Colour"], "field name"),
    (["classes", "--field", "season", "list"], "no label field 'season'"),
    (["classes", "--field", "colour", "rename", "blue", "noir"], "is not in field 'colour'"),
    (["classes", "rename", "black", "noir", "--field", "colour"], "exists already"),
    (["classes", "remove", "black", "--into", "dress", "--field", "colour"], "is not in field 'colour'"),
])
def test_field_user_errors(project_dir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(["--project", str(project_dir), "fields", "add", "colour", "--classes", "black,noir"]) == 0
    capsys.readouterr()
    assert main(["--project", str(project_dir), *argv]) == 2
    assert message in capsys.readouterr().err
    assert Project.load(project_dir).config.fields == {"colour": ["black", "noir"]}  # nothing changed


def test_rename_and_merge_the_classes_of_another_field(project_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """`classes rename/remove --into --field colour`: an alias of that field only, even where a
    class of the default field has the same name; no label row rewritten."""
    from sqlmodel import select

    from storage import db, items, labels
    from storage.tables import Item, Label

    p = ["--project", str(project_dir)]
    assert main([*p, "fields", "add", "colour", "--classes", "navy,blue,black"]) == 0
    assert main([*p, "classes", "add", "navy"]) == 0  # a category of the same name
    project = Project.load(project_dir)

    def seed(s):  # noqa: ANN001, ANN202
        ids = [r.id for r in items.add(s, [Item(sha256=f"{k:064x}", path=f"/img/{k}.jpg", width=8, height=8,
                                                mode="RGB") for k in range(3)])]
        for i, (field, cls) in zip(ids, [("colour", "navy"), ("colour", "black"), ("category", "navy")], strict=True):
            labels.append(s, Label(item_id=i, field=field, annotator="ann", label=cls, kind="human",
                                   decision="accepted"))
        return ids

    ids = db.write(project.engine, seed)
    got = run_json(capsys, *p, "classes", "rename", "navy", "marine", "--field", "colour")
    assert (got["field"], got["label_rows"]) == ("colour", 1)
    got = run_json(capsys, *p, "classes", "--field", "colour", "remove", "black", "--into", "marine")
    assert (got["field"], got["label_rows"]) == ("colour", 1)
    config = Project.load(project_dir).config
    assert config.fields["colour"] == ["marine", "blue"] and config.classes == ["dress", "shirt", "shoes", "navy"]
    assert run_json(capsys, *p, "classes", "list", "--field", "colour")["labels"] == {"marine": 2}
    assert run_json(capsys, *p, "classes", "list")["labels"] == {"navy": 1}
    with db.session(project.engine) as s:
        assert {i: c.label for i, c in labels.current(s, field="colour").items()} == {ids[0]: "marine",
                                                                                       ids[1]: "marine"}
        assert sorted(s.exec(select(Label.label))) == ["black", "navy", "navy"]  # the rows as stored
