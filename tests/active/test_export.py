"""`active export`: formats read back against the store, safety, atomicity, splits, filters."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from active import export as ex
from active.cli import main
from active.errors import UserError
from active.importer import import_candidates, read_manifest, scan_folder
from storage import db, labels, versions
from storage.tables import Dispute, Item, Label, ModelVersion, Prediction

HOLDOUT_CLASSES = ("dress", "shoes")


def _import(project, folder: Path, **kw) -> None:  # noqa: ANN001
    found, skipped, _ = scan_folder(folder, layout=kw.pop("layout", "auto"))
    assert not skipped
    import_candidates(project, found, progress=False, **kw)


def _ids(project) -> dict[str, int]:  # noqa: ANN001
    """'<class folder>/<file>' of the import -> item id."""
    with db.session(project.engine) as s:
        return {"/".join(Path(i.path).parts[-2:]): i.id for i in s.exec(db.select(Item))}


def add_label(project, item_id: int, cls: str | None, *, who: str = "alice", kind: str = "human",  # noqa: ANN001
              decision: str = "corrected", **kw) -> int:
    def tx(s) -> int:  # noqa: ANN001
        return labels.append(s, Label(item_id=item_id, annotator=who, label=cls, kind=kind, decision=decision,
                                      **kw)).id

    return db.write(project.engine, tx)


@pytest.fixture
def store(project, class_folder, make_image, tmp_path):  # noqa: ANN001, ANN201
    """12 imported pool items (dress/shirt/shoes x 4), 4 labelled holdout items, 1 unlabelled item,
    human labels of every source, an open dispute and a model version with predictions."""
    _import(project, class_folder)
    hold = tmp_path / "hold"
    for c, name in enumerate(HOLDOUT_CLASSES):
        for n in range(2):
            make_image(hold / name / f"h{n}.png", c, seed=900 + 10 * c + n)
    _import(project, hold, split="holdout")
    make_image(tmp_path / "flat" / "loose.png", 1, seed=999)
    _import(project, tmp_path / "flat", layout="flat")
    ids = _ids(project)
    add_label(project, ids["dress/0.png"], "dress", decision="accepted")  # single, agrees with import
    for who, cls in (("alice", "shirt"), ("bob", "shirt"), ("carol", "dress")):  # consensus shirt 2/3
        add_label(project, ids["dress/1.png"], cls, who=who)
    add_label(project, ids["shirt/0.png"], "shirt", who="alice", decision="accepted")
    add_label(project, ids["shirt/0.png"], "shoes", who="bob")
    add_label(project, ids["shirt/0.png"], "dress", who="rev", kind="review", decision="resolved")  # review
    wrong = add_label(project, ids["shoes/0.png"], "dress", who="alice")
    add_label(project, ids["shoes/0.png"], None, who="alice", decision="undo", undoes_id=wrong)  # back to import

    def tx(s) -> None:  # noqa: ANN001
        v = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="none", mode="head",
                                             classes=["dress", "shirt", "shoes"]))
        rows = []
        for n, item_id in enumerate(sorted(ids.values())):
            rows.append(Prediction(item_id=item_id, model_version_id=v.id, pred="shirt", confidence=0.5 + n / 100,
                                   row=n))
        versions.add_predictions(s, rows)
        s.add(Dispute(item_id=ids["dress/1.png"], reason="annotators_disagree", score=0.6))
        s.add(Dispute(item_id=ids["dress/1.png"], reason="model_disagrees", score=0.4))
        s.add(Dispute(item_id=ids["shirt/0.png"], reason="annotators_disagree", score=0.9, status="resolved"))

    db.write(project.engine, tx)
    return ids


def _current(project) -> dict[int, labels.CurrentLabel]:  # noqa: ANN001
    with db.session(project.engine) as s:
        return labels.current(s)


def _items(project) -> dict[int, Item]:  # noqa: ANN001
    with db.session(project.engine) as s:
        return {i.id: i for i in s.exec(db.select(Item))}


def _opts(out: Path, fmt: str = "csv", **kw) -> ex.ExportOptions:
    return ex.ExportOptions(format=fmt, out=out, progress=False, **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_rows_against_store(project, rows: list[dict], *, typed: bool) -> None:  # noqa: ANN001
    cur, items = _current(project), _items(project)
    assert len(rows) == len(cur) == len(items) - 1  # every labelled item, the unlabelled one is not
    for row in rows:
        item_id = int(row["item_id"])
        c, item = cur[item_id], items[item_id]
        assert row["sha256"] == item.sha256 and row["original_path"] == item.path
        assert row["label"] == c.label and row["source"] == c.source
        assert int(row["n_human"]) == c.n_human
        if c.agreement is None:
            assert row["agreement"] in (None, "")
        else:
            assert float(row["agreement"]) == pytest.approx(c.agreement)
        assert (row["imported_label"] or None) == c.imported  # whenever there was one, agreeing or not
        assert int(row["model_version"]) == 1 and row["predicted"] == "shirt"
        assert row["annotator"] == c.annotator and row["labelled_at"] == c.created_at.isoformat()
        assert row["split"] == ("holdout" if item.split == "holdout" else "train")
        assert row["meta_format"] == "PNG"
        if typed:
            assert isinstance(row["n_human"], int) and isinstance(row["confidence"], float)


def test_csv_round_trips_against_the_store(project, store):  # noqa: ANN001
    out = project.root / "exports" / "csv1"
    manifest = ex.export(project, _opts(out, "csv"))
    rows = ex.read_csv(out / "labels.csv")
    _check_rows_against_store(project, rows, typed=False)
    by_id = {int(r["item_id"]): r for r in rows}
    assert by_id[store["dress/1.png"]]["disputed"] == "annotators_disagree;model_disagrees"
    assert by_id[store["shirt/0.png"]]["disputed"] == ""  # its dispute is resolved
    assert manifest["counts"]["excluded"] == {"no_label": 1}
    assert manifest["counts"]["exported"] == 16 and manifest["counts"]["disputed"] == 1
    assert manifest["model_version"]["id"] == 1
    on_disk = json.loads((out / "export.json").read_text())
    assert on_disk["label_snapshot"] == manifest["label_snapshot"]
    assert on_disk["command"].startswith("active --project ") and "--format csv" in on_disk["command"]
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "labels.csv"]


def test_jsonl_round_trips_with_types(project, store):  # noqa: ANN001
    out = project.root / "exports" / "j"
    ex.export(project, _opts(out, "jsonl"))
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    _check_rows_against_store(project, rows, typed=True)


def test_source_provenance_review_consensus_single_imported(project, store):  # noqa: ANN001
    out = project.root / "exports" / "p"
    ex.export(project, _opts(out, "jsonl"))
    rows = {r["item_id"]: r for r in map(json.loads, (out / "labels.jsonl").read_text().splitlines())}
    single, cons, rev, undone = (rows[store[k]] for k in ("dress/0.png", "dress/1.png", "shirt/0.png", "shoes/0.png"))
    assert (single["source"], single["label"], single["imported_label"]) == ("single", "dress", "dress")
    assert (cons["source"], cons["label"], cons["n_human"]) == ("consensus", "shirt", 3)
    assert cons["agreement"] == pytest.approx(2 / 3) and cons["imported_label"] == "dress"
    assert (rev["source"], rev["label"], rev["annotator"], rev["imported_label"]) == ("review", "dress", "rev", "shirt")
    assert rev["agreement"] == 0.0  # the humans said shirt and shoes, the reviewer dress
    assert (undone["source"], undone["label"], undone["n_human"]) == ("imported", "shoes", 0)
    assert Counter(r["source"] for r in rows.values()) == {"imported": 13, "single": 1, "consensus": 1, "review": 1}


def test_skipped_and_unsure_decisions_are_counted_per_item(project, store):  # noqa: ANN001
    item = store["shoes/1.png"]
    add_label(project, item, None, who="alice", decision="skipped")
    add_label(project, item, None, who="bob", decision="skipped")
    unsure = add_label(project, item, None, who="carol", decision="unsure")
    add_label(project, item, None, who="carol", decision="undo", undoes_id=unsure)  # counts nowhere
    add_label(project, item, None, who="dave", decision="unsure")
    out = project.root / "exports" / "passes"
    ex.export(project, _opts(out, "jsonl"))
    rows = {r["item_id"]: r for r in map(json.loads, (out / "labels.jsonl").read_text().splitlines())}
    assert (rows[item]["n_skipped"], rows[item]["n_unsure"]) == (2, 1)
    assert (rows[store["dress/0.png"]]["n_skipped"], rows[store["dress/0.png"]]["n_unsure"]) == (0, 0)


def test_imagefolder_loads_in_torchvision_with_identical_bytes(project, store):  # noqa: ANN001
    from torchvision.datasets import ImageFolder

    out = project.root / "exports" / "if"
    manifest = ex.export(project, _opts(out, "imagefolder"))
    rows = ex.read_csv(out / "labels.csv")
    by_path = {r["exported_path"]: r for r in rows}
    assert sum(manifest["files"].values()) == len(rows) == 16
    for split in ("train", "holdout"):
        ds = ImageFolder(str(out / split))
        n = sum(manifest["counts"]["by_split"][split].values())
        assert len(ds) == n
        for path, target in ds.samples:
            rel = Path(path).relative_to(out).as_posix()
            row = by_path[rel]
            assert manifest["class_folders"][row["label"]] == ds.classes[target]
            assert _sha(Path(path)) == row["sha256"] == _sha(Path(row["original_path"]))
        image, _ = ds[0]
        assert image.size == (64, 48)
    # dress/1.png was relabelled shirt: it meets shirt/1.png in train/shirt/ and gets a distinct name.
    shirt = sorted(p.name for p in (out / "train" / "shirt").iterdir())
    assert len(shirt) == len(set(shirt)) == 4 and "1.png" in shirt
    assert any(name.startswith("1-") for name in shirt)
    assert set(manifest["counts"]["by_split"]["holdout"]) == set(HOLDOUT_CLASSES)


def test_copy_mode_copies_instead_of_linking(project, store):  # noqa: ANN001
    out = project.root / "exports" / "c"
    manifest = ex.export(project, _opts(out, "imagefolder", copy=True))
    assert manifest["files"] == {"copied": 16}
    some = next((out / "train" / "shoes").iterdir())
    assert some.stat().st_nlink == 1


def test_a_changed_or_missing_original_is_reported_not_exported(project, store, make_image):  # noqa: ANN001
    items = _items(project)
    changed, missing = Path(items[store["shoes/1.png"]].path), Path(items[store["shoes/2.png"]].path)
    make_image(changed, 0, seed=12345)
    missing.unlink()
    out = project.root / "exports" / "m"
    manifest = ex.export(project, _opts(out, "imagefolder"))
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert "sha256 differs" in reasons[str(changed)] and "cannot read" in reasons[str(missing)]
    assert manifest["counts"]["excluded"]["file_missing_or_changed"] == 2
    assert len(ex.read_csv(out / "labels.csv")) == manifest["counts"]["exported"] == 14


def test_unreadable_items_stay_out_of_image_exports_only(project, store):  # noqa: ANN001
    from storage import items as item_repo

    db.write(project.engine, lambda s: item_repo.mark_unreadable(s, store["shirt/3.png"], "cannot decode"))
    m = ex.export(project, _opts(project.root / "exports" / "i", "imagefolder"))
    assert m["counts"]["excluded"]["unreadable_image"] == 1 and m["counts"]["exported"] == 15
    m = ex.export(project, _opts(project.root / "exports" / "t", "csv"))
    assert "unreadable_image" not in m["counts"]["excluded"] and m["counts"]["exported"] == 16


def test_hf_layout_has_relative_metadata(project, store):  # noqa: ANN001
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the `hf` extra) is not installed here")
    out = project.root / "exports" / "hf"
    manifest = ex.export(project, _opts(out, "hf", splits={"train": 0.5, "val": 0.5}))
    assert set(manifest["counts"]["by_split"]) == {"train", "validation", "holdout"}
    seen = 0
    for split in manifest["counts"]["by_split"]:
        recs = pq.read_table(out / split / "metadata.parquet").to_pylist()
        for rec in recs:
            assert not Path(rec["file_name"]).is_absolute() and ".." not in rec["file_name"]
            assert _sha(out / split / rec["file_name"]) == rec["sha256"]
            assert rec["split"] == split
        seen += len(recs)
    assert seen == manifest["counts"]["exported"]
    readme = (out / "README.md").read_text()
    assert "split: holdout" in readme and 'path: "validation/**"' in readme


def test_hf_export_loads_with_datasets(project, store):  # noqa: ANN001
    datasets = pytest.importorskip("datasets", reason="Hugging Face `datasets` is not installed here")
    import pyarrow.parquet as pq
    out = project.root / "exports" / "hf"
    ex.export(project, _opts(out, "hf", splits={"train": 0.5, "test": 0.5}))
    # The card's features, not inferred ones; a private cache (datasets keys its own by folder name).
    loaded = datasets.load_dataset(str(out), cache_dir=str(project.root / "hf-cache"))
    assert {"train", "test"} <= set(loaded)
    assert "sha256" in loaded["train"].column_names
    label = loaded["train"].features["label"]
    assert isinstance(label, datasets.ClassLabel) and label.names[: len(project.config.classes)] == \
        list(project.config.classes)
    rec = pq.read_table(out / "train" / "metadata.parquet").to_pylist()[0]
    assert label.int2str(loaded["train"][0]["label"]) in label.names and rec["label"] in label.names


def test_splits_are_stratified_and_deterministic() -> None:
    entries = [(hashlib.sha256(f"{c}{i}".encode()).hexdigest(), c, "pool") for c, n in (("a", 50), ("b", 21))
               for i in range(n)]
    entries += [(hashlib.sha256(f"h{i}".encode()).hexdigest(), "a", "holdout") for i in range(5)]
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    first = ex.assign_splits(entries, fractions, seed=3)
    assert ex.assign_splits(list(reversed(entries)), fractions, seed=3) == first  # order-free
    assert ex.assign_splits(entries, fractions, seed=4) != first
    per = Counter((label, first[sha]) for sha, label, _ in entries)
    assert (per["a", "train"], per["a", "val"], per["a", "test"], per["a", "holdout"]) == (40, 5, 5, 5)
    assert (per["b", "train"], per["b", "val"] + per["b", "test"]) == (17, 4)
    assert sum(ex.allocate(21, fractions).values()) == 21
    assert set(ex.assign_splits(entries, None, seed=0).values()) == {"train", "holdout"}


def test_split_export_is_reproducible_and_keeps_holdout(project, store):  # noqa: ANN001
    o1, o2 = project.root / "exports" / "s1", project.root / "exports" / "s2"
    splits = ex.parse_splits("train=0.5,val=0.25,test=0.25")
    m1 = ex.export(project, _opts(o1, splits=splits, seed=7))
    m2 = ex.export(project, _opts(o2, splits=splits, seed=7))
    assert m1["counts"] == m2["counts"] and m1["label_snapshot"] == m2["label_snapshot"]
    r1 = {r["sha256"]: r["split"] for r in ex.read_csv(o1 / "labels.csv")}
    assert r1 == {r["sha256"]: r["split"] for r in ex.read_csv(o2 / "labels.csv")}
    items = {i.sha256: i for i in _items(project).values()}
    for sha, split in r1.items():
        assert (split == "holdout") == (items[sha].split == "holdout")
    assert set(r1.values()) == {"train", "val", "test", "holdout"}


@pytest.mark.parametrize("text", ["train=0.8,val=0.1", "train=0.8,holdout=0.2", "train", "Train=1", "a/b=1",
                                  "train=x", "train=0.5,train=0.5", "train=1.5,val=-0.5"])
def test_bad_splits_are_refused(text: str) -> None:
    with pytest.raises(UserError):
        ex.parse_splits(text)


def test_formula_cells_are_escaped(project, tmp_path, make_image):  # noqa: ANN001
    img = make_image(tmp_path / "cat" / "a.png", 0)
    make_image(tmp_path / "cat" / "b.png", 1, seed=1)
    manifest = tmp_path / "cat" / "m.csv"
    dangerous = ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "\tx", "\rx", "'quoted"]
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cls", "note", "=col"])
        w.writerow([img.name, "=cmd|' /C calc'!A0", dangerous[0], dangerous[1]])
        w.writerow(["b.png", "shirt", "|".join(dangerous[:5]), "plain"])
    found, skipped = read_manifest(manifest, label_column="cls")
    assert not skipped
    import_candidates(project, found, add_classes=True, progress=False)

    def set_meta(s) -> None:  # noqa: ANN001
        # The importer's CSV reader splits at a bare CR, so a CR-led value goes in directly.
        item = s.exec(db.select(Item).where(Item.path == str(img))).one()
        item.meta = {**item.meta, "cr": "\rx", "tab": "\tx", "q": "'quoted", "nested": {"at": "@x"}}
        s.add(item)

    db.write(project.engine, set_meta)
    out = project.root / "exports" / "f"
    ex.export(project, _opts(out, "csv"))
    raw = list(csv.reader((out / "labels.csv").open(newline="")))
    for cell in (c for row in raw for c in row):
        assert not cell.startswith(ex.FORMULA_PREFIXES), cell
    rows = {r["original_path"]: r for r in ex.read_csv(out / "labels.csv")}
    first = rows[str(img)]
    assert first["label"] == "=cmd|' /C calc'!A0" and first["meta_note"] == dangerous[0]
    assert first["meta_=col"] == "+1+1"
    assert (first["meta_cr"], first["meta_tab"], first["meta_q"], first["meta_nested.at"]) == ("\rx", "\tx", "'quoted", "@x")
    assert rows[str(tmp_path / "cat" / "b.png")]["meta_note"] == "|".join(dangerous[:5])
    for value in [*dangerous, "plain", "", "''"]:
        assert ex.unescape_cell(ex.escape_cell(value)) == value


@pytest.mark.parametrize(("name", "expected"), [
    ("dress", "dress"), ("a/b", "a_b"), ("..", "__"), (".hidden", "_hidden"), ("CON", "_CON"),
    ("nul.txt", "_nul.txt"), ("tab\there", "tab_here"), ("dots.", "dots_"), ("back\\slash", "back_slash"),
    ("", "_"), ("t-shirt", "t-shirt"),
])
def test_safe_name(name: str, expected: str) -> None:
    assert ex.safe_name(name) == expected


def test_class_folders_are_safe_and_unique() -> None:
    names = ["Shirt", "shirt", "SHIRT", "a/b", "a\\b", "..", "x" * 300, "CON", "ok"]
    folders = ex.class_folders(names)
    assert folders == ex.class_folders(reversed(names))  # order-free
    assert len({f.casefold() for f in folders.values()}) == len(names)
    for f in folders.values():
        assert "/" not in f and "\\" not in f and not f.startswith(".") and len(f.encode()) <= ex.MAX_NAME_BYTES
    assert folders["ok"] == "ok" and folders["shirt"] == "shirt" and folders["Shirt"].startswith("Shirt-")


def test_unsafe_class_names_export_inside_the_folder(project, class_folder):  # noqa: ANN001
    from torchvision.datasets import ImageFolder

    _import(project, class_folder)
    project.add_classes(["../evil", "Shirt", ".env"])
    ids = sorted(_ids(project).values())
    for item_id, cls in zip(ids, ["../evil", "Shirt", ".env"], strict=False):
        add_label(project, item_id, cls)
    out = project.root / "exports" / "u"
    manifest = ex.export(project, _opts(out, "imagefolder"))
    mapping = manifest["class_folders"]
    assert mapping["../evil"] == "_._evil" and mapping[".env"] == "_env"
    assert mapping["shirt"] == "shirt" and mapping["Shirt"] != "Shirt"  # case-insensitive collision
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    assert not (project.root / "exports" / "evil").exists()
    ds = ImageFolder(str(out / "train"))
    assert len(ds) == 12 and set(ds.classes) == {mapping[c] for c in manifest["counts"]["by_class"]}


def test_refuses_a_non_empty_folder_unless_overwriting_an_export(project, store):  # noqa: ANN001
    out = project.root / "exports" / "x"
    out.mkdir(parents=True)
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        ex.export(project, _opts(out))
    with pytest.raises(UserError, match="not an active-labeler export"):
        ex.export(project, _opts(out, overwrite=True))
    assert (out / "precious.txt").read_text() == "keep me"
    empty = project.root / "exports" / "empty"
    empty.mkdir()
    ex.export(project, _opts(empty))  # an empty folder is fine
    first = json.loads((empty / "export.json").read_text())
    add_label(project, store["shoes/3.png"], "dress")
    with pytest.raises(UserError):
        ex.export(project, _opts(empty, "jsonl"))
    ex.export(project, _opts(empty, "jsonl", overwrite=True))
    second = json.loads((empty / "export.json").read_text())
    assert second["label_snapshot"]["sha256"] != first["label_snapshot"]["sha256"]
    assert sorted(p.name for p in empty.iterdir()) == ["export.json", "labels.jsonl"]
    assert not [p for p in empty.parent.iterdir() if p.name.startswith(".")]  # no temp or old folders left


class Boom(RuntimeError):
    pass


def _fail_after(monkeypatch, n: int) -> None:  # noqa: ANN001
    real, calls = ex.place_file, []

    def flaky(*args, **kw):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) > n:
            raise Boom("disk on fire")
        return real(*args, **kw)

    monkeypatch.setattr(ex, "place_file", flaky)


def test_a_crash_mid_export_leaves_nothing_at_the_destination(project, store, monkeypatch):  # noqa: ANN001
    out = project.root / "exports" / "crash"
    _fail_after(monkeypatch, 5)
    with pytest.raises(Boom):
        ex.export(project, _opts(out, "imagefolder"))
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_a_crash_while_overwriting_keeps_the_earlier_export(project, store, monkeypatch):  # noqa: ANN001
    out = project.root / "exports" / "keep"
    ex.export(project, _opts(out, "imagefolder"))
    before = {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()}
    add_label(project, store["shoes/3.png"], "dress")
    _fail_after(monkeypatch, 5)
    with pytest.raises(Boom):
        ex.export(project, _opts(out, "imagefolder", overwrite=True))
    assert {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["keep"]


def test_include_modes_and_filters(project, store):  # noqa: ANN001
    root = project.root / "exports"

    def rows(name: str, **kw) -> dict[int, dict]:
        ex.export(project, _opts(root / name, "jsonl", **kw))
        return {r["item_id"]: r for r in map(json.loads, (root / name / "labels.jsonl").read_text().splitlines())}

    disputed = store["dress/1.png"]
    excl = rows("ex", include="exclude")
    assert disputed not in excl and len(excl) == 15
    plain = rows("un", include="unresolved-disputes")
    assert disputed in plain and "disputed" not in plain[disputed]
    agree = rows("ag", min_agreement=0.7)  # drops the 2/3 consensus and the review (agreement 0)
    assert disputed not in agree and store["shirt/0.png"] not in agree
    assert store["shoes/3.png"] in agree and len(agree) == 14  # no human labels: kept
    human = rows("hu", only_human=True)
    assert set(human) == {store[k] for k in ("dress/0.png", "dress/1.png", "shirt/0.png")}
    m = json.loads((root / "hu" / "export.json").read_text())
    assert m["counts"]["excluded"] == {"no_label": 1, "only_imported_label": 13}


def test_cli_export(project, store, capsys):  # noqa: ANN001
    out = project.root / "exports" / "cli"
    argv = ["--project", str(project.root), "export", "--format", "imagefolder", "--out", str(out),
            "--splits", "train=0.75,val=0.25", "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "exported 16 items as imagefolder" in text and "holdout" in text
    assert main(argv) == 2 and "not empty" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["options"]["splits"] == {"train": 0.75, "val": 0.25} and data["options"]["seed"] == 1
    assert main(["--project", str(project.root), "export", "--splits", "train=2", "--no-progress"]) == 2
    assert main(["--project", str(project.root), "export", "--format", "csv", "--no-progress"]) == 0
    assert len(list((project.root / "exports").glob("csv-*"))) == 1


@pytest.mark.parametrize("value", [" =1+1", "\uff1dSUM(A1)", "\n=1+1", "\uff0b1", "\uff0d1", "\uff20x"])
def test_spreadsheet_lookalike_prefixes_are_neutralised(value: str) -> None:
    # A leading space or line break is trimmed by spreadsheets, and full-width ＝＋－＠ are read
    # as their ASCII twins: either way the cell would become a formula.
    assert ex.escape_cell(value) == "'" + value
    assert ex.unescape_cell(ex.escape_cell(value)) == value


def test_overwrite_replaces_only_what_an_export_wrote(project, store):  # noqa: ANN001
    fake = project.root / "exports" / "fake"
    fake.mkdir(parents=True)
    (fake / "export.json").write_text("{}")  # a file of that name is not enough
    (fake / "thesis.tex").write_text("keep me")
    with pytest.raises(UserError, match="not an active-labeler export.*not an active-labeler manifest"):
        ex.export(project, _opts(fake, overwrite=True))
    assert (fake / "thesis.tex").read_text() == "keep me"
    real = project.root / "exports" / "real"
    ex.export(project, _opts(real, "imagefolder"))
    for stranger in (real / "notes.txt", next(p for p in (real / "train").iterdir()).parent / "mine.txt"):
        stranger.write_text("mine")
        with pytest.raises(UserError, match=f"holds .*{stranger.name}.*which no export writes"):
            ex.export(project, _opts(real, "imagefolder", overwrite=True))
        assert stranger.read_text() == "mine"
        stranger.unlink()
    ex.export(project, _opts(real, "csv", overwrite=True))  # an export of ours, as it was written
    assert sorted(p.name for p in real.iterdir()) == ["export.json", "labels.csv"]
