"""Exports of a project with two label fields: one column per field with its provenance in
CSV/JSONL/HF, and ImageFolder folders by a chosen field (`--by`)."""

from __future__ import annotations

import json
from pathlib import Path

from test_import_fields import FORMS, TONES, N, catalogue  # noqa: F401 - `catalogue` is a fixture

from active.export import read_csv


def _imported(cli, project_dir: Path, manifest: Path) -> None:  # noqa: ANN001
    assert cli("--project", project_dir, "fields", "add", "colour", "--classes", ",".join(TONES)).code == 0
    r = cli("--project", project_dir, "import", manifest, "--path-template", "images/{id}.png",
            "--label-column", "category=kind", "--label-column", "colour=tone", "--no-progress")
    assert r.code == 0, r.err


def test_csv_has_a_column_per_field(cli, project_dir: Path, catalogue, tmp_path: Path) -> None:  # noqa: ANN001, F811
    manifest, rows = catalogue
    _imported(cli, project_dir, manifest)
    out = tmp_path / "csv"
    assert cli("--project", project_dir, "export", "--format", "csv", "--out", out, "--no-progress").code == 0
    table = {Path(r["original_path"]).name: r for r in read_csv(out / "labels.csv")}
    assert len(table) == N
    for n, row in enumerate(rows):
        got = table[f"{n}.png"]
        assert got["label"] == got["category"] == row["kind"]
        want_tone = row["tone"] if row["tone"] in TONES else ""
        assert got["colour"] == want_tone
        assert got["colour_source"] == ("imported" if want_tone else "")
        assert got["colour_imported_label"] == want_tone and got["category_source"] == "imported"
    manifest_json = json.loads((out / "export.json").read_text())
    assert manifest_json["by"] == "category" and manifest_json["fields"] == ["category", "colour"]
    jl = tmp_path / "jl"
    assert cli("--project", project_dir, "export", "--format", "jsonl", "--out", jl, "--no-progress").code == 0
    first = json.loads((jl / "labels.jsonl").read_text().splitlines()[0])
    assert {"category", "colour", "colour_source", "colour_predicted", "colour_disputed"} <= set(first)


def test_imagefolder_by_a_chosen_field(cli, project_dir: Path, catalogue, tmp_path: Path) -> None:  # noqa: ANN001, F811
    manifest, rows = catalogue
    _imported(cli, project_dir, manifest)
    out = tmp_path / "by-colour"
    r = cli("--project", project_dir, "export", "--format", "imagefolder", "--by", "colour", "--out", out,
            "--no-progress", "--json")
    assert r.code == 0, r.err
    folders = {p.name: sorted(f.name for f in p.iterdir()) for p in (out / "train").iterdir()}
    want: dict[str, list[str]] = {}
    for n, row in enumerate(rows):
        if row["tone"] in TONES:
            want.setdefault(row["tone"], []).append(f"{n}.png")
    assert folders == {k: sorted(v) for k, v in want.items()}
    assert r.data["counts"]["excluded"] == {"no_label": N - 9}  # 2 without a tone, 1 unknown
    table = read_csv(out / "labels.csv")
    assert {t["label"] for t in table} <= set(TONES) and {t["category"] for t in table} <= set(FORMS)
    assert "--by colour" in r.data["command"]
    assert cli("--project", project_dir, "export", "--by", "season", "--out", tmp_path / "x").code == 2


def test_hf_metadata_has_a_column_per_field(cli, project_dir: Path, catalogue, tmp_path: Path) -> None:  # noqa: ANN001, F811
    import pytest

    pq = pytest.importorskip("pyarrow.parquet")
    manifest, _rows = catalogue
    _imported(cli, project_dir, manifest)
    out = tmp_path / "hf"
    assert cli("--project", project_dir, "export", "--format", "hf", "--out", out, "--no-progress").code == 0
    meta = pq.read_table(out / "train" / "metadata.parquet").to_pydict()
    assert sorted(meta["category"]) == sorted(meta["label"]) and len(meta["colour"]) == N
    assert {c for c in meta["colour"] if c} <= set(TONES)
    assert "colour_source" in (out / "README.md").read_text()
