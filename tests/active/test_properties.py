"""Property tests (hypothesis): random manifests and random command lines end in a clean result
or a clear `UserError` / usage error, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from active.cli import main
from active.errors import UserError
from active.importer import import_candidates, read_manifest
from active.project import Project

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Cells that tend to break parsers: separators, quotes, braces, escapes, path tricks, odd unicode.
TRICKY = st.sampled_from(["", ",", '"', '""', "\n", "\r\n", "\t", "{id}", "{", "}", "../", "..", "/",
                          "/etc/passwd", "a\x00b", "\\", "é", "\u202e", " ", "NaN", "null", "img.png"])
CELL = st.one_of(TRICKY, st.text(max_size=12), st.lists(TRICKY, max_size=4).map("".join))
COLUMN = st.one_of(st.sampled_from(["path", "file", "id", "label", "articleType", ""]), st.text(max_size=8))


def _csv_text(header: list[str], rows: list[list[str]], *, quote: bool) -> str:
    def cell(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if quote else v

    return "\n".join(",".join(cell(v) for v in line) for line in [header, *rows]) + "\n"


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), CELL),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(COLUMN, inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def sandbox() -> Path:
    with tempfile.TemporaryDirectory(prefix="active-props-") as tmp:
        yield Path(tmp)


def _options() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "path_column": st.none() | COLUMN,
        "path_template": st.none() | st.sampled_from(["{id}.jpg", "images/{id}.jpg", "{path}", "x.jpg", "{a}{b}",
                                                      "{label}/{id}", "../{id}", "{0}", "{id!r}", "{id.__class__}"]),
        "label_column": st.none() | COLUMN,
    })


def _check(manifest: Path, options: dict, project: Project | None = None) -> None:
    try:
        found, skipped = read_manifest(manifest, **options)
    except UserError as exc:
        assert str(exc)
        return
    for s in skipped:
        assert s.path and s.reason
    root = manifest.parent.resolve()
    for c in found:
        assert c.path.resolve().is_relative_to(root)  # nothing outside the image root
        json.dumps(c.meta)
    if project is not None:
        try:
            report = import_candidates(project, found, progress=False)
        except UserError as exc:  # e.g. a label that cannot be a class name
            assert str(exc)
            return
        assert report.added == 0  # no real image behind any of these rows
        assert len(report.skipped) == len(found)


@SETTINGS
@given(header=st.lists(COLUMN, min_size=1, max_size=5),
       rows=st.lists(st.lists(CELL, max_size=6), max_size=6),
       quote=st.booleans(), options=_options(), suffix=st.sampled_from([".csv", ".tsv"]))
def test_random_csv_never_tracebacks(sandbox: Path, header: list[str], rows: list[list[str]], quote: bool,
                                     options: dict, suffix: str) -> None:
    manifest = sandbox / f"m{suffix}"
    manifest.write_text(_csv_text(header, rows, quote=quote), encoding="utf-8")
    _check(manifest, options)


@SETTINGS
@given(lines=st.lists(st.one_of(JSON_VALUE.map(json.dumps), st.dictionaries(COLUMN, JSON_VALUE, max_size=4)
                                .map(json.dumps), CELL), max_size=8), options=_options())
def test_random_jsonl_never_tracebacks(sandbox: Path, lines: list[str], options: dict) -> None:
    manifest = sandbox / "m.jsonl"
    manifest.write_text("\n".join(lines), encoding="utf-8")
    _check(manifest, options)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"path": CELL, "label": CELL, "extra": JSON_VALUE}), min_size=1,
                     max_size=5))
def test_random_manifest_imports_cleanly(open_project_dir: Path, rows: list[dict]) -> None:
    """Through the importer into the store: clean skips, or a UserError before anything is written."""
    manifest = open_project_dir.parent / "rows.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    _check(manifest, {"label_column": "label"}, Project.load(open_project_dir))


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00p\x00a", b"\x00" * 10, b""])
def test_binary_garbage_is_a_user_error(tmp_path: Path, payload: bytes) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(payload)
    with pytest.raises(UserError):
        read_manifest(manifest)


def test_nul_in_a_path_is_skipped_with_a_reason(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"path": "a\\u0000b.jpg"}\n{"path": "ok.jpg"}\n')
    found, skipped = read_manifest(manifest)
    assert [c.path.name for c in found] == ["ok.jpg"]
    assert [(s.path.rsplit(":", 1)[1], s.reason) for s in skipped] == [("1", "path holds a NUL character")]


# --------------------------------------------------------------------------- command lines

WORDS = ["--json", "--project", "--split", "pool", "holdout", "train", "--layout", "flat", "classes", "auto",
         "--add-classes", "--no-progress", "--path-column", "--label-column", "--path-template", "{id}.jpg",
         "--root", "--into", "--preset", "clothing10", "nope", "--classes", "a,b", ",", "--db", "sqlite://",
         "postgresql+psycopg://u@127.0.0.1:1/x", "--image-size", "-1", "0", "abc", "dress", "shirt", "hats",
         "list", "add", "rename", "remove", "init", "import", "status", "-h", "--weights", "..", ".", "x.csv",
         "photos", "m.jsonl", "--backbone", "resnet18", "=", "--"]
TOKEN = st.one_of(st.sampled_from(WORDS), st.text(st.characters(exclude_characters="/\x00"), max_size=10))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(["init", "import", "status", "classes", "select", ""]),
       tokens=st.lists(TOKEN, max_size=6))
def test_random_command_lines(project_dir: Path, class_folder: Path, monkeypatch: pytest.MonkeyPatch,
                              command: str, tokens: list[str]) -> None:
    # Relative paths land in a sandbox beside the project (photos/, x.csv, m.jsonl exist there).
    monkeypatch.chdir(class_folder.parent)
    (class_folder.parent / "x.csv").write_text("path,label\nphotos/dress/0.png,dress\n")
    (class_folder.parent / "m.jsonl").write_text('{"path": "photos/shirt/1.png"}\n')
    argv = ([command] if command else []) + tokens
    if "--project" not in argv and command != "init":
        argv = ["--project", str(project_dir), *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors (2) and --help (0)
            code = exc.code
    assert code in (0, 2), (argv, code, err.getvalue())
    if code == 2:
        assert "Traceback" not in err.getvalue() and err.getvalue().strip()
