"""Importing given labels of several label fields from one manifest, and re-importing a
catalogue whose given labels changed (issue 15): synthetic photos whose form and colour are two
independent fields."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import draw_image

FORMS = ("dress", "shirt")  # rectangle, ellipse
TONES = ("red", "green", "blue")  # COLOURS[0..2]
N = 12


def write_catalogue(root: Path, rows: list[dict]) -> Path:
    path = root / "catalogue.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "kind", "tone"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def catalogue(tmp_path: Path) -> tuple[Path, list[dict]]:
    """N photos under tmp/cat/images and a catalogue naming their form (kind) and colour (tone):
    two rows without a tone, one with a tone that is not a class."""
    root = tmp_path / "cat"
    rows = []
    for n in range(N):
        form, tone = n % 2, (n // 2) % 3
        draw_image(root / "images" / f"{n}.png", form, seed=n, colour=tone)
        rows.append({"id": n, "kind": FORMS[form], "tone": "" if n in (3, 7) else TONES[tone]})
    rows[5]["tone"] = "teal"
    return write_catalogue(root, rows), rows


def test_two_label_columns_in_one_import(cli, project_dir: Path, catalogue) -> None:  # noqa: ANN001
    manifest, rows = catalogue
    p = ("--project", project_dir)
    assert cli(*p, "fields", "add", "colour", "--classes", ",".join(TONES)).code == 0
    r = cli(*p, "import", manifest, "--path-template", "images/{id}.png", "--label-column", "category=kind",
            "--label-column", "colour=tone", "--json", "--no-progress")
    assert r.code == 0, r.err
    d = r.data
    assert (d["added"], d["labelled"], d["skipped"]) == (N, N, [])
    assert d["given_by_field"] == {"category": N, "colour": N - 3}  # 2 missing, 1 unknown
    assert d["unknown_by_field"] == {"colour": {"teal": 1}} and d["changed"] == 0
    status = cli(*p, "status", "--json").data
    assert {f: v["classes"]["red"]["imported"] for f, v in status["fields"].items() if f == "colour"} == {"colour": 3}
    assert status["fields"]["category"]["classes"]["dress"]["imported"] == N // 2
    again = cli(*p, "import", manifest, "--path-template", "images/{id}.png", "--label-column", "category=kind",
                "--label-column", "colour=tone", "--json", "--no-progress").data
    assert (again["added"], again["already_imported"], again["changed"]) == (0, N, 0)  # unchanged: a no-op


def test_reimport_appends_changed_given_labels(cli, project_dir: Path, catalogue) -> None:  # noqa: ANN001
    manifest, rows = catalogue
    p = ("--project", project_dir)
    assert cli(*p, "fields", "add", "colour", "--classes", ",".join(TONES)).code == 0
    args = ("--path-template", "images/{id}.png", "--label-column", "kind", "--label-column", "colour=tone",
            "--json", "--no-progress")
    assert cli(*p, "import", manifest, *args).code == 0
    # Next week's catalogue: 6 forms and 4 tones corrected, the other rows as they were.
    for n in range(6):
        rows[n]["kind"] = FORMS[1 - FORMS.index(rows[n]["kind"])]
    for n in (0, 1, 2, 4):
        rows[n]["tone"] = TONES[(TONES.index(rows[n]["tone"]) + 1) % 3]
    write_catalogue(manifest.parent, rows)
    since = datetime.now(UTC).isoformat()
    d = cli(*p, "import", manifest, *args).data
    assert (d["added"], d["already_imported"], d["changed"]) == (0, N, 10)
    assert d["changed_by_field"] == {"category": 6, "colour": 4}
    h = cli(*p, "history", str(manifest.parent / "images" / "0.png"), "--json").data
    given = [(r["field"], r["label"], r["kind"]) for r in h["labels"]]
    assert given == [("category", "dress", "imported"), ("colour", "red", "imported"),
                     ("category", "shirt", "imported"), ("colour", "green", "imported")]
    assert all(r["source"] == str(manifest) for r in h["labels"])
    assert h["current"]["label"] == "shirt" and h["current_by_field"]["colour"]["label"] == "green"
    text = cli(*p, "history", str(manifest.parent / "images" / "0.png")).out
    assert "colour: green (imported)" in text
    assert cli(*p, "import", manifest, *args).data["changed"] == 0  # the new labels are the latest now
    changed = cli(*p, "changes", "--since", since, "--field", "colour", "--json").data
    assert changed["field"] == "colour" and len(changed["changed"]) == 4
    assert len(cli(*p, "changes", "--since", since, "--json").data["changed"]) == 6


@pytest.mark.parametrize("argv, message", [
    (["--label-column", "colour=tone"], "no label field 'colour'"),
    (["--label-column", "category=nope"], "no label column 'nope'"),
    (["--label-column", "kind", "--label-column", "category=tone"], "two columns for field 'category'"),
    (["--label-column", "=tone"], "give COLUMN or FIELD=COLUMN"),
])
def test_label_column_errors(cli, project_dir: Path, catalogue, argv: list[str], message: str) -> None:  # noqa: ANN001
    manifest, _ = catalogue
    r = cli("--project", project_dir, "import", manifest, "--path-template", "images/{id}.png", *argv, "--no-progress")
    assert r.code == 2 and message in r.err
    assert cli("--project", project_dir, "status", "--json").data["items"]["pool"]["items"] == 0
