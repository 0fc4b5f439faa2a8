"""Integration: 500 real photos from ../shared (skips without it), and the whole CLI on PostgreSQL."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from sqlmodel import select

from active.project import PRESETS, Project
from models.images import load_rgb
from storage import db
from storage.tables import Item
from tests.conftest import shared_images

PER_CLASS = 50  # x 10 classes = 500 images


@pytest.mark.slow
def test_500_shared_images_through_a_catalogue_manifest(cli, open_project_dir: Path, shared_dataset: Path,  # noqa: ANN001
                                                        tmp_path: Path) -> None:
    chosen = shared_images(PER_CLASS, "train")
    manifest = tmp_path / "catalogue.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "articleType", "shop"])
        for cls, paths in chosen.items():
            w.writerows([[p.relative_to(shared_dataset / "train"), cls, "shared"] for p in paths])
    r = cli("--project", open_project_dir, "import", manifest, "--root", shared_dataset / "train",
            "--label-column", "articleType", "--json", "--no-progress")
    assert r.code == 0, r.err
    d = r.data
    n = sum(len(v) for v in chosen.values())
    assert n == 10 * PER_CLASS
    duplicates = [s for s in d["skipped"] if s["reason"].startswith("duplicate of")]
    assert d["added"] + len(duplicates) == n and len(d["skipped"]) == len(duplicates)
    assert sorted(d["new_classes"]) == sorted(PRESETS["clothing10"])
    st = cli("--project", open_project_dir, "status", "--json").data
    assert st["items"]["pool"] == {"items": d["added"], "labelled": 0, "given_only": d["added"], "unlabelled": 0}
    with db.session(Project.load(open_project_dir).engine) as s:
        some = s.exec(select(Item).order_by(Item.id).limit(5)).all()
    assert all(i.meta["shop"] == "shared" and i.meta["format"] == "JPEG" for i in some)
    for item in some:
        assert load_rgb(item.path).size == (item.width, item.height)
    again = cli("--project", open_project_dir, "import", manifest, "--root", shared_dataset / "train",
                "--label-column", "articleType", "--json", "--no-progress").data
    assert (again["added"], again["already_imported"]) == (0, d["added"])


@pytest.mark.postgres
def test_cli_end_to_end_on_postgresql(cli, pg_url: str, class_folder: Path, tmp_path: Path,  # noqa: ANN001
                                      messy_folder_for_pg: Path) -> None:
    root = tmp_path / "pgproj"
    r = cli("init", root, "--classes", "dress,shirt,shoes", "--db", pg_url, "--json")
    assert r.code == 0, r.err
    assert Project.load(root).config.db == pg_url
    d = cli("--project", root, "import", class_folder, "--json", "--no-progress").data
    assert (d["added"], d["labelled"]) == (12, 12)
    d = cli("--project", root, "import", messy_folder_for_pg, "--json", "--no-progress").data
    assert d["added"] == 1 and {s["reason"] for s in d["skipped"]} == {"empty file (0 bytes)"}
    again = cli("--project", root, "import", class_folder, "--json", "--no-progress").data
    assert (again["added"], again["already_imported"]) == (0, 12)
    st = cli("--project", root, "status", "--json").data
    assert st["items"]["pool"] == {"items": 13, "labelled": 0, "given_only": 12, "unlabelled": 1}
    assert st["classes"]["shoes"] == {"imported": 4, "total": 4}
    d = cli("--project", root, "classes", "rename", "shoes", "footwear", "--json").data
    assert d["label_rows"] == 4


@pytest.fixture
def messy_folder_for_pg(tmp_path: Path, make_image) -> Path:  # noqa: ANN001
    """A flat folder with one odd-named image and one empty file."""
    root = tmp_path / "flat"
    make_image(root / "ça va – été.png", 2, seed=42, mode="L")
    (root / "empty.jpg").write_bytes(b"")
    return root
