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
    (["classes", "--field", "colour", "rename", "black", "noir"], "default field"),
])
def test_field_user_errors(project_dir: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert main(["--project", str(project_dir), "fields", "add", "colour", "--classes", "black"]) == 0
    capsys.readouterr()
    assert main(["--project", str(project_dir), *argv]) == 2
    assert message in capsys.readouterr().err
    assert Project.load(project_dir).config.fields == {"colour": ["black"]}  # nothing changed
