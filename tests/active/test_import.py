"""`active import`: each source form, every skipped-file reason, the odd files we accept,
idempotent re-import, and the limits (bomb, size, paths outside the root)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlmodel import select

from active.errors import UserError
from active.importer import read_manifest, scan_folder
from active.project import Project
from models import images
from models.images import load_rgb
from storage import db
from storage.tables import Item, Label


def _all_items(project_dir: Path) -> list[Item]:
    with db.session(Project.load(project_dir).engine) as s:
        return list(s.exec(select(Item).order_by(Item.id)))


def _items(project_dir: Path) -> dict[str, Item]:
    """Items keyed by file name (for folders whose file names are unique)."""
    return {Path(i.path).name: i for i in _all_items(project_dir)}


def _labels(project_dir: Path) -> list[Label]:
    with db.session(Project.load(project_dir).engine) as s:
        return list(s.exec(select(Label).order_by(Label.id)))


def _reasons(data: dict) -> dict[str, str]:
    """Skipped file name -> reason."""
    return {Path(s["path"]).name: s["reason"] for s in data["skipped"]}


# --------------------------------------------------------------------------- the forms


def test_class_folders(cli, project_dir: Path, class_folder: Path) -> None:  # noqa: ANN001
    r = cli("--project", project_dir, "import", class_folder, "--json", "--no-progress")
    assert r.code == 0
    d = r.data
    assert (d["layout"], d["added"], d["labelled"], d["already_imported"], d["skipped"]) == ("classes", 12, 12, 0, [])
    found = _all_items(project_dir)
    assert len(found) == 12
    item = next(i for i in found if "/shoes/" in i.path)
    assert Path(item.path).is_absolute() and item.split == "pool" and (item.width, item.height) == (64, 48)
    assert len(item.sha256) == 64 and item.meta["format"] == "PNG"
    rows = _labels(project_dir)
    assert {(r.kind, r.decision, r.annotator) for r in rows} == {("imported", "given", "import")}
    by_item = {r.item_id: r.label for r in rows}
    assert all(by_item[i.id] == Path(i.path).parent.name for i in found)


def test_flat_folder_is_unlabelled_and_recursive(cli, project_dir: Path, make_image, tmp_path: Path) -> None:  # noqa: ANN001
    flat = tmp_path / "flat"
    make_image(flat / "a.png", 0, seed=1)
    make_image(flat / "b.jpg", 1, seed=2)
    make_image(flat / "deeper" / "c.png", 2, seed=3)
    d = cli("--project", project_dir, "import", flat, "--json", "--no-progress").data
    assert (d["layout"], d["added"], d["labelled"]) == ("flat", 3, 0)
    assert _labels(project_dir) == []


def test_holdout_split(cli, project_dir: Path, class_folder: Path) -> None:  # noqa: ANN001
    d = cli("--project", project_dir, "import", class_folder, "--split", "holdout", "--json", "--no-progress").data
    assert d["split"] == "holdout"
    assert {i.split for i in _all_items(project_dir)} == {"holdout"}
    st = cli("--project", project_dir, "status", "--json").data
    assert st["items"]["holdout"] == {"items": 12, "labelled": 0, "given_only": 12, "unlabelled": 0}


CATALOGUE = [
    {"id": "15970", "gender": "Men", "masterCategory": "Apparel", "articleType": "Shirts", "baseColour": "Navy Blue"},
    {"id": "39386", "gender": "Men", "masterCategory": "Apparel", "articleType": "Jeans", "baseColour": "Blue"},
    {"id": "59263", "gender": "Women", "masterCategory": "Accessories", "articleType": "Watches", "baseColour": "Silver"},
    {"id": "21379", "gender": "Men", "masterCategory": "Apparel", "articleType": "Track Pants", "baseColour": "Black"},
    {"id": "53759", "gender": "Men", "masterCategory": "Apparel", "articleType": "Tshirts", "baseColour": "Grey"},
]


def test_catalogue_csv_with_path_template(cli, open_project_dir: Path, make_image, tmp_path: Path) -> None:  # noqa: ANN001
    shop = tmp_path / "shop"
    for n, row in enumerate(CATALOGUE[:-1]):  # the last row's image is missing
        make_image(shop / "images" / f"{row['id']}.jpg", n, seed=n)
    with (shop / "styles.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CATALOGUE[0]))
        w.writeheader()
        w.writerows(CATALOGUE)
    r = cli("--project", open_project_dir, "import", shop / "styles.csv", "--path-template", "images/{id}.jpg",
            "--label-column", "articleType", "--json", "--no-progress")
    assert r.code == 0
    d = r.data
    assert (d["layout"], d["added"], d["labelled"]) == ("manifest", 4, 4)
    assert d["new_classes"] == ["Shirts", "Jeans", "Watches", "Track Pants", "Tshirts"]
    assert _reasons(d) == {"53759.jpg": "cannot read: No such file or directory"}
    item = _items(open_project_dir)["59263.jpg"]
    assert item.meta == {"id": "59263", "gender": "Women", "masterCategory": "Accessories",
                         "baseColour": "Silver", "format": "JPEG"}
    assert {r.label for r in _labels(open_project_dir)} == {"Shirts", "Jeans", "Watches", "Track Pants"}
    assert Project.load(open_project_dir).config.classes == d["new_classes"]


def test_jsonl_manifest(cli, project_dir: Path, make_image, tmp_path: Path) -> None:  # noqa: ANN001
    make_image(tmp_path / "m" / "x.png", 0, seed=5)
    make_image(tmp_path / "m" / "sub" / "y.png", 1, seed=6)
    lines = [
        {"path": "x.png", "label": "dress", "sku": 12, "tags": ["a", "b"]},
        "not json at all",
        [1, 2],
        {"path": "sub/y.png"},
        {"path": "", "label": "dress"},
    ]
    manifest = tmp_path / "m" / "items.jsonl"
    manifest.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n\n")
    d = cli("--project", project_dir, "import", manifest, "--label-column", "label", "--json", "--no-progress").data
    assert (d["added"], d["labelled"]) == (2, 1)
    reasons = {s["path"].rsplit(":", 1)[1]: s["reason"] for s in d["skipped"]}
    assert reasons["2"].startswith("invalid JSON") and reasons["3"] == "line is not a JSON object"
    assert reasons["5"] == "empty value in column 'path'"
    assert _items(project_dir)["x.png"].meta == {"sku": 12, "tags": ["a", "b"], "format": "PNG"}
    assert [r.label for r in _labels(project_dir)] == ["dress"]


# --------------------------------------------------------------------------- skipped and accepted files


@pytest.fixture
def messy_folder(tmp_path: Path, make_image) -> tuple[Path, Path]:  # noqa: ANN001
    """photos/<class>/ with every kind of bad file and every odd-but-fine file; and a file outside."""
    root = tmp_path / "messy"
    good = make_image(root / "dress" / "good.jpg", 0, seed=1, size=(96, 80))
    # Bad files
    data = good.read_bytes()
    (root / "dress" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dress" / "empty.jpg").write_bytes(b"")
    (root / "dress" / "notes.jpg").write_text("these are my notes, not a photo\n")
    for name in ("shirt", "shoes"):
        (root / name).mkdir()
    Image.new("1", (8000, 8000)).save(root / "shirt" / "bomb.png")  # 64 Mpx in 8 kB
    shutil.copy(good, root / "shirt" / "copy-of-good.jpg")
    outside = make_image(tmp_path / "elsewhere" / "secret.png", 2, seed=9)
    os.symlink(outside, root / "shirt" / "escape.png")
    make_image(root / "hats" / "cap.png", 3, seed=3)  # class not in the taxonomy
    # Odd but fine
    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    rgba.paste((10, 10, 200, 255), (10, 5, 30, 25))
    rgba.save(root / "shoes" / "alpha.png")
    Image.new("CMYK", (40, 30), (10, 200, 30, 5)).save(root / "shoes" / "cmyk.jpg")
    Image.fromarray((np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)).save(root / "shoes" / "deep16.png")
    make_image(root / "shoes" / "gray.png", 4, seed=4, mode="L")
    make_image(root / "shoes" / "robe d'été n°1 – ça.png", 5, seed=5)
    os.symlink(root / "dress" / "good.jpg", root / "shoes" / "inside-link.jpg")  # a link inside the root is fine
    return root, outside


ODD = ["alpha.png", "cmyk.jpg", "deep16.png", "gray.png", "robe d'été n°1 – ça.png"]


def test_every_skip_reason_and_the_odd_files(cli, project_dir: Path, messy_folder) -> None:  # noqa: ANN001
    root, _outside = messy_folder
    r = cli("--project", project_dir, "import", root, "--json", "--no-progress")
    assert r.code == 0
    d = r.data
    reasons = _reasons(d)
    assert reasons["truncated.jpg"].startswith("truncated image")
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["notes.jpg"] == "not an image (unrecognised format)"
    assert reasons["bomb.png"].startswith("decompression bomb: 8000x8000 pixels")
    assert reasons["escape.png"] == "symlink points outside the import root"
    assert reasons["cap.png"] == "label 'hats' not in taxonomy (use --add-classes)"
    good = str(root / "dress" / "good.jpg")
    assert reasons["copy-of-good.jpg"] == reasons["inside-link.jpg"] == f"duplicate of {good}"
    assert len(reasons) == 8  # and nothing else was skipped
    found = _items(project_dir)
    assert set(found) == {"good.jpg", *ODD}
    modes = {n: found[n].mode for n in ODD}
    assert modes == {"alpha.png": "RGBA", "cmyk.jpg": "CMYK", "deep16.png": "I;16", "gray.png": "L",
                     "robe d'été n°1 – ça.png": "RGB"}
    for name in ODD:
        im = load_rgb(found[name].path)
        assert im.mode == "RGB" and im.size == (found[name].width, found[name].height)
    px = np.asarray(load_rgb(found["alpha.png"].path))
    assert tuple(px[0, 0]) == (255, 255, 255)  # transparent parts composited on white
    assert tuple(px[15, 20]) == (10, 10, 200)
    deep = np.asarray(load_rgb(found["deep16.png"].path))
    assert deep.max() > 200 and deep.min() == 0  # 16-bit scaled, not clipped to white
    text = cli("--project", project_dir, "import", root, "--no-progress").out
    assert "skipped" in text and "escape.png: symlink points outside the import root" in text


def test_add_classes_takes_unknown_labels(cli, project_dir: Path, messy_folder) -> None:  # noqa: ANN001
    root, _ = messy_folder
    d = cli("--project", project_dir, "import", root, "--add-classes", "--json", "--no-progress").data
    assert d["new_classes"] == ["hats"]
    assert "cap.png" in _items(project_dir)
    assert Project.load(project_dir).config.classes == ["dress", "shirt", "shoes", "hats"]


def test_reimport_is_a_noop(cli, project_dir: Path, messy_folder) -> None:  # noqa: ANN001
    root, _ = messy_folder
    first = cli("--project", project_dir, "import", root, "--json", "--no-progress").data
    n_items, n_labels = len(_items(project_dir)), len(_labels(project_dir))
    again = cli("--project", project_dir, "import", root, "--json", "--no-progress").data
    assert (again["added"], again["labelled"], again["already_imported"]) == (0, 0, first["added"])
    assert _reasons(again) == _reasons(first)
    assert (len(_items(project_dir)), len(_labels(project_dir))) == (n_items, n_labels)
    # The same bytes under a new name are a duplicate, not a second item.
    shutil.copy(root / "shoes" / "gray.png", root / "shoes" / "gray again.png")
    third = cli("--project", project_dir, "import", root, "--json", "--no-progress").data
    assert third["added"] == 0 and _reasons(third)["gray again.png"].startswith("duplicate of ")
    assert _reasons(third)["gray again.png"].endswith("gray.png")


# --------------------------------------------------------------------------- limits


def test_size_limit(cli, project_dir: Path, class_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 1000)  # instead of writing a 100 MB file
    big = class_folder / "dress" / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1000
    d = cli("--project", project_dir, "import", class_folder, "--json", "--no-progress").data
    assert _reasons(d)["big.png"].startswith("too large (")


def test_manifest_paths_may_not_leave_the_root(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    make_image(tmp_path / "secret" / "s.png", 0)
    make_image(tmp_path / "m" / "ok.png", 0)
    os.symlink(tmp_path / "secret" / "s.png", tmp_path / "m" / "link.png")
    manifest = tmp_path / "m" / "list.csv"
    manifest.write_text(f"path\nok.png\n../secret/s.png\n{tmp_path / 'secret' / 's.png'}\nlink.png\nsub/../ok.png\n")
    found, skipped = read_manifest(manifest)
    assert [c.path.name for c in found] == ["ok.png", "ok.png"]
    assert [s.reason for s in skipped] == ["path outside the image root (use --root to widen it)"] * 3
    wide = tmp_path / "m" / "wide.csv"
    wide.write_text(f"path\n{tmp_path / 'secret' / 's.png'}\n{tmp_path / 'm' / 'link.png'}\nsecret/s.png\n")
    found, skipped = read_manifest(wide, root=tmp_path)  # a wider root takes them
    assert [c.path for c in found] == [tmp_path / "secret" / "s.png", tmp_path / "m" / "link.png",
                                       tmp_path / "secret" / "s.png"]
    assert skipped == []


def test_manifest_user_errors(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,articleType\n1,Shirts\n")
    with pytest.raises(UserError, match="no path column .*columns are: id, articleType.*--path-template"):
        read_manifest(tmp_path / "a.csv")
    with pytest.raises(UserError, match="names columns sku that the manifest lacks"):
        read_manifest(tmp_path / "a.csv", path_template="img/{sku}.jpg")
    with pytest.raises(UserError, match="needs at least one"):
        read_manifest(tmp_path / "a.csv", path_template="img/x.jpg")
    with pytest.raises(UserError, match="no label column 'label'"):
        read_manifest(tmp_path / "a.csv", path_template="{id}.jpg", label_column="label")
    (tmp_path / "b.csv").write_text("path\n")
    with pytest.raises(UserError, match="no rows to import"):
        read_manifest(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_bytes(b"path\n\xff\xfe.jpg\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_manifest(tmp_path / "c.csv")
    (tmp_path / "d.txt").write_text("path\nx.jpg\n")
    with pytest.raises(UserError, match="manifests must end in"):
        read_manifest(tmp_path / "d.txt")


def test_folder_layouts(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    make_image(tmp_path / "f" / "top.png", 0)
    make_image(tmp_path / "f" / "dress" / "a.png", 0)
    make_image(tmp_path / "f" / ".hidden.png", 0)
    found, skipped, layout = scan_folder(tmp_path / "f")
    assert layout == "flat" and sorted(c.path.name for c in found) == ["a.png", "top.png"]
    assert [s.reason for s in skipped] == ["hidden file"]
    found, skipped, layout = scan_folder(tmp_path / "f", layout="classes")
    assert [(c.path.name, c.label) for c in found] == [("a.png", "dress")]
    assert "file outside any class folder" in [s.reason for s in skipped]
    with pytest.raises(UserError, match="not a folder"):
        scan_folder(tmp_path / "nope")


def test_folder_labels_are_normalised(cli, open_project_dir: Path, make_image, tmp_path: Path) -> None:  # noqa: ANN001
    make_image(tmp_path / "src" / "dress " / "a.png", 0, seed=1)
    make_image(tmp_path / "src" / " dress" / "b.png", 0, seed=2)
    d = cli("--project", open_project_dir, "import", tmp_path / "src", "--json", "--no-progress").data
    assert d["new_classes"] == ["dress"] and d["labelled"] == 2
    assert {r.label for r in _labels(open_project_dir)} == {"dress"}


def test_an_unusable_label_skips_its_file_not_the_import(cli, open_project_dir: Path, make_image,  # noqa: ANN001
                                                         tmp_path: Path) -> None:
    make_image(tmp_path / "m" / "ok.png", 0, seed=1)
    make_image(tmp_path / "m" / "bad.png", 1, seed=2)
    manifest = tmp_path / "m" / "items.jsonl"
    manifest.write_text(json.dumps({"path": "ok.png", "label": "dress"}) + "\n"
                        + json.dumps({"path": "bad.png", "label": "bell\x07"}) + "\n")
    r = cli("--project", open_project_dir, "import", manifest, "--label-column", "label", "--json", "--no-progress")
    assert r.code == 0, r.err
    assert r.data["added"] == 1 and r.data["new_classes"] == ["dress"]
    assert "unusable label" in _reasons(r.data)["bad.png"]
