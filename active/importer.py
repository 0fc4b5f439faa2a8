"""`active import`: folders with class subfolders, flat folders, and CSV/JSONL manifests.

Images are referenced where they lie (absolute path + sha256), never copied. Every file that is
not imported is reported with its path and reason; each batch is one transaction, so a killed
import leaves whole batches and re-running it finishes the rest (already-known hashes are no-ops).

Given labels may come for several label fields at once (`storage.fields`): a manifest names one
column per field. A label missing for a field is simply not given; a value that is not one of the
field's classes is reported per field (for the default field the file is skipped, as always; for
another field only that label is left out). Re-importing an item whose given label of a field
changed appends a new imported label (append-only, with the import batch as its source) and
counts it in ``changed``; an unchanged row stays a no-op.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from active.errors import UserError
from active.project import Project, validate_class_name
from models.images import ImageError, inspect_bytes, read_image_bytes
from storage import db, items, labels
from storage.enums import Decision, Kind, Split
from storage.fields import DEFAULT_FIELD
from storage.tables import Item, Label

BATCH_SIZE = 256
IMPORT_WORKERS = 4  # hashing + decoding releases the GIL in hashlib and PIL
IMPORTER = "import"  # the annotator name on imported labels


@dataclass(frozen=True)
class Candidate:
    path: Path  # absolute, as given (not resolved through symlinks)
    label: str | None = None  # the given label of the default field
    meta: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)  # the other fields' given labels

    def given(self) -> dict[str, str]:
        """field -> given label, every field that has one."""
        return ({DEFAULT_FIELD: self.label} if self.label is not None else {}) | self.fields


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class ImportReport:
    added: int = 0
    already: int = 0  # same bytes at the same path: re-import is a no-op
    labelled: int = 0  # new items given a label of the default field
    new_classes: list[str] = field(default_factory=list)  # added to the default field
    skipped: list[Skipped] = field(default_factory=list)
    given: dict[str, int] = field(default_factory=dict)  # field -> given labels recorded for new items
    # field -> already imported items whose given label changed (a new imported label appended)
    changed: dict[str, int] = field(default_factory=dict)
    unknown: dict[str, dict[str, int]] = field(default_factory=dict)  # field -> value -> rows, not in its classes
    new_field_classes: dict[str, list[str]] = field(default_factory=dict)  # other fields' classes added

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "already_imported": self.already,
            "labelled": self.labelled,
            "new_classes": self.new_classes,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "given_by_field": self.given,
            "changed": sum(self.changed.values()),
            "changed_by_field": self.changed,
            "unknown_by_field": self.unknown,
            "new_field_classes": self.new_field_classes,
        }


# --------------------------------------------------------------------------- discovering files


def _inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies under ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False


def _walk(folder: Path, skipped: list[Skipped], *, root: Path | None = None) -> Iterator[Path]:
    """Regular files under ``folder`` in a stable order; hidden files and links escaping ``root``
    (the import root, default ``folder``) reported."""
    root = root or folder
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if (here / d).is_symlink():
                skipped.append(Skipped(str(here / d), "symlinked folder: not followed"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                skipped.append(Skipped(str(path), "hidden file"))
            elif path.is_symlink() and not _inside(path, root):
                skipped.append(Skipped(str(path), "symlink points outside the import root"))
            else:
                yield path


def scan_folder(root: Path, *, layout: str = "auto") -> tuple[list[Candidate], list[Skipped], str]:
    """Candidates from a folder. ``layout``: ``classes`` (labels = subfolder names), ``flat``
    (unlabelled, recursive) or ``auto`` (classes unless files lie directly in ``root``)."""
    root = root.absolute()
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    if layout == "auto":
        top_files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        has_dirs = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
        layout = "classes" if has_dirs and not top_files else "flat"
    skipped: list[Skipped] = []
    found: list[Candidate] = []
    if layout == "flat":
        found = [Candidate(p) for p in _walk(root, skipped)]
    elif layout == "classes":
        for sub in sorted(root.iterdir()):
            if sub.name.startswith("."):
                continue
            if sub.is_symlink():
                skipped.append(Skipped(str(sub), "symlinked folder: not followed"))
            elif sub.is_dir():
                found += [Candidate(p, label=sub.name) for p in _walk(sub, skipped, root=root)]
            else:
                skipped.append(Skipped(str(sub), "file outside any class folder"))
    else:
        raise UserError(f"unknown layout {layout!r}: use auto, classes or flat")
    return found, skipped, layout


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_ .-]*)\}")


def _fill(template: str, row: dict[str, Any]) -> str:
    """``{column}`` placeholders only: no attribute access or format specs from a manifest."""

    def sub(m: re.Match[str]) -> str:
        value = row.get(m.group(1))
        if value is None or value == "":
            raise KeyError(m.group(1))
        return str(value)

    return _FIELD.sub(sub, template)


def _read_rows(path: Path, skipped: list[Skipped]) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(line number, row) pairs and the column names of a CSV or JSONL manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        columns: list[str] = []
        # split on "\n" only: str.splitlines would also cut at U+2028 and friends inside JSON strings
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                skipped.append(Skipped(f"{path}:{n}", f"invalid JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                skipped.append(Skipped(f"{path}:{n}", "line is not a JSON object"))
                continue
            obj = {str(k): v for k, v in obj.items()}
            columns += [k for k in obj if k not in columns]
            rows.append((n, obj))
        return rows, columns
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise UserError(f"{path}: manifests must end in .csv, .tsv, .jsonl or .ndjson")
    try:
        # csv needs the raw newlines: a quoted cell may hold a line break
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        for row in reader:
            n = reader.line_num
            if None in row:  # more cells than header columns
                skipped.append(Skipped(f"{path}:{n}", "more cells than the header has columns"))
                continue
            rows.append((n, {k: v for k, v in row.items() if k is not None}))
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV ({exc})") from None
    return rows, columns


def read_manifest(
    path: Path,
    *,
    root: Path | None = None,
    path_column: str | None = None,
    path_template: str | None = None,
    label_column: str | None = None,
    label_columns: dict[str, str] | None = None,
) -> tuple[list[Candidate], list[Skipped]]:
    """Candidates from a CSV/JSONL manifest. Relative paths are taken from ``root`` (default: the
    manifest's folder) and may not leave it. ``label_column`` holds the default field's given
    labels, ``label_columns`` maps label fields to their columns (the default field may be one).
    Columns other than path and labels become metadata."""
    by_field = dict(label_columns or {})
    if label_column is not None:
        if by_field.get(DEFAULT_FIELD, label_column) != label_column:
            raise UserError(f"two label columns for field {DEFAULT_FIELD!r}: {label_column!r} and "
                            f"{by_field[DEFAULT_FIELD]!r}")
        by_field[DEFAULT_FIELD] = label_column
    path = path.absolute()
    root = (root or path.parent).absolute()
    skipped: list[Skipped] = []
    rows, columns = _read_rows(path, skipped)
    if not rows:
        raise UserError(f"{path}: no rows to import")
    if path_template is None:
        path_column = path_column or next((c for c in ("path", "file", "filename", "image") if c in columns), None)
        if path_column is None or path_column not in columns:
            raise UserError(
                f"{path}: no path column (looked for {path_column or 'path, file, filename, image'}); "
                f"columns are: {', '.join(columns) or '(none)'}. Use --path-column or --path-template"
            )
    else:
        wanted = set(_FIELD.findall(path_template))
        if not wanted:
            raise UserError("--path-template needs at least one {column}, e.g. 'images/{id}.jpg'")
        missing = wanted - set(columns)
        if missing:
            raise UserError(f"{path}: --path-template names columns {', '.join(sorted(missing))} that the "
                            f"manifest lacks; columns are: {', '.join(columns)}")
    for name, column in by_field.items():
        if column not in columns:
            raise UserError(f"{path}: no label column {column!r} (field {name!r}); columns are: {', '.join(columns)}")

    found: list[Candidate] = []
    for n, row in rows:
        where = f"{path}:{n}"
        try:
            rel = _fill(path_template, row) if path_template else str(row.get(path_column) or "")
        except KeyError as exc:
            skipped.append(Skipped(where, f"empty value in column {exc.args[0]!r}"))
            continue
        if not rel.strip():
            skipped.append(Skipped(where, f"empty value in column {path_column!r}"))
            continue
        if "\x00" in rel:  # no file system takes it; Path.resolve would raise
            skipped.append(Skipped(where, "path holds a NUL character"))
            continue
        file = Path(rel)
        file = file if file.is_absolute() else root / file
        if not _inside(file, root):
            skipped.append(Skipped(str(file), "path outside the image root (use --root to widen it)"))
            continue
        given = {}
        for name, column in by_field.items():
            value = row.get(column)
            if value not in (None, "") and str(value).strip():
                given[name] = str(value).strip()
        used = {*by_field.values(), path_column}
        meta = {k: v for k, v in row.items() if k not in used}
        found.append(Candidate(file, label=given.pop(DEFAULT_FIELD, None), meta=_jsonable(meta), fields=given))
    return found, skipped


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(meta, default=str))


# --------------------------------------------------------------------------- checking and recording


@dataclass(frozen=True)
class _Checked:
    cand: Candidate
    sha256: str | None
    width: int = 0
    height: int = 0
    mode: str = ""
    fmt: str = ""
    error: str | None = None


def _check(cand: Candidate) -> _Checked:
    try:
        data = read_image_bytes(cand.path)
        sha = hashlib.sha256(data).hexdigest()
        info = inspect_bytes(data)
    except ImageError as exc:
        return _Checked(cand, None, error=str(exc))
    return _Checked(cand, sha, info.width, info.height, info.mode, info.format)


def import_candidates(
    project: Project,
    candidates: list[Candidate],
    *,
    split: str = Split.POOL,
    source: str = "",
    add_classes: bool = False,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> ImportReport:
    """Hash, check, dedupe and record ``candidates``; one transaction per batch."""
    items.check_split(split)
    report = ImportReport()
    engine = project.engine
    taxonomy_was_empty = not project.config.classes
    source = source or f"import {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"

    # Labels first: decide the classes before anything is written.
    # Labels are stored as `validate_class_name` normalises them (a folder "dress " is "dress");
    # a label that cannot be a class name skips its file with the reason, not the whole import.
    usable = []
    for c in candidates:
        if c.label is None:
            usable.append(c)
            continue
        try:
            usable.append(replace(c, label=validate_class_name(c.label)))
        except UserError as exc:
            report.skipped.append(Skipped(str(c.path), f"unusable label: {exc}"))
    candidates = _other_fields(project, usable, report, add_classes=add_classes)
    wanted = []
    for c in candidates:
        if c.label is not None and c.label not in wanted:
            wanted.append(c.label)
    unknown = [c for c in wanted if c not in project.config.classes]
    if unknown and (taxonomy_was_empty or add_classes):
        report.new_classes = project.add_classes(unknown)
    allowed = set(project.config.classes)
    for c in candidates:
        if c.label is not None and c.label not in allowed:
            bucket = report.unknown.setdefault(DEFAULT_FIELD, {})
            bucket[c.label] = bucket.get(c.label, 0) + 1

    bar = tqdm(total=len(candidates), unit="img", desc="import", disable=not progress)
    batches = [candidates[i : i + BATCH_SIZE] for i in range(0, len(candidates), BATCH_SIZE)]
    done = 0
    with ThreadPoolExecutor(IMPORT_WORKERS) as pool:
        # The workers check the next batch while this thread records the current one.
        pending = [pool.submit(_check, c) for c in batches[0]] if batches else []
        for k in range(len(batches)):
            checked = [f.result() for f in pending]
            pending = [pool.submit(_check, c) for c in batches[k + 1]] if k + 1 < len(batches) else []
            bar.update(len(checked))
            _record_batch(engine, checked, allowed, split=split, source=source, report=report)
            done += len(checked)
            if on_batch is not None:
                on_batch(done)
    bar.close()
    return report


def _other_fields(project: Project, candidates: list[Candidate], report: ImportReport, *,
                  add_classes: bool) -> list[Candidate]:
    """The candidates with their other fields' labels normalised and kept only where they are
    one of the field's classes (a field without classes yet, or ``add_classes``, takes the values
    found); the rest counted in ``report.unknown``. A field the project lacks is an error."""
    names = list(dict.fromkeys(f for c in candidates for f in c.fields))
    for name in names:
        project.check_field(name)
    if not names:
        return candidates
    normalised: list[Candidate] = []
    for c in candidates:
        given = {}
        for name, value in c.fields.items():
            try:
                given[name] = validate_class_name(value)
            except UserError:
                bucket = report.unknown.setdefault(name, {})
                bucket[value] = bucket.get(value, 0) + 1
        normalised.append(replace(c, fields=given))
    allowed: dict[str, set[str]] = {}
    for name in names:
        if add_classes or not project.classes_of(name):
            found = list(dict.fromkeys(c.fields[name] for c in normalised if name in c.fields))
            added = project.add_classes(found, name)
            if added:
                report.new_field_classes[name] = added
        allowed[name] = set(project.classes_of(name))
    out = []
    for c in normalised:
        kept = {}
        for name, value in c.fields.items():
            if value in allowed[name]:
                kept[name] = value
            else:
                bucket = report.unknown.setdefault(name, {})
                bucket[value] = bucket.get(value, 0) + 1
        out.append(replace(c, fields=kept))
    return out


def _given_rows(item_id: int, given: dict[str, str], source: str) -> list[Label]:
    return [Label(item_id=item_id, field=name, annotator=IMPORTER, label=value, kind=Kind.IMPORTED,
                  decision=Decision.GIVEN, source=source) for name, value in given.items()]


def _record_batch(engine, checked: list[_Checked], allowed: set[str], *, split: str, source: str,  # noqa: ANN001
                  report: ImportReport) -> None:
    skipped: list[Skipped] = []
    fresh: list[_Checked] = []
    for c in checked:
        if c.error is not None:
            skipped.append(Skipped(str(c.cand.path), c.error))
        elif c.cand.label is not None and c.cand.label not in allowed:
            skipped.append(Skipped(str(c.cand.path), f"label {c.cand.label!r} not in taxonomy (use --add-classes)"))
        else:
            fresh.append(c)

    def tx(session) -> tuple[int, list[Label], int, list[Skipped], list[Label]]:  # noqa: ANN001
        already, new_skips = 0, []
        known = items.by_sha(session, (c.sha256 for c in fresh))
        seen: dict[str, str] = {}
        new_items: list[tuple[Item, _Checked]] = []
        again: list[tuple[Item, _Checked]] = []
        for c in fresh:
            path = str(c.cand.path)
            prior = known.get(c.sha256)
            if prior is not None:
                if prior.path == path:
                    already += 1
                    if c.cand.given():
                        again.append((prior, c))
                else:
                    new_skips.append(Skipped(path, f"duplicate of {prior.path}"))
                continue
            if c.sha256 in seen:
                new_skips.append(Skipped(path, f"duplicate of {seen[c.sha256]}"))
                continue
            seen[c.sha256] = path
            meta = dict(c.cand.meta)
            meta["format"] = c.fmt
            item = Item(sha256=c.sha256, path=path, width=c.width, height=c.height, mode=c.mode,
                        source=source, split=split, meta=meta)
            new_items.append((item, c))
        items.add(session, [i for i, _ in new_items])
        given = labels.append_many(session, [row for item, c in new_items
                                             for row in _given_rows(item.id, c.cand.given(), source)])
        # A catalogue export again: a given label that differs from the latest one is appended.
        before = labels.latest_given(session, [item.id for item, _ in again])
        changed = labels.append_many(session, [
            row for item, c in again
            for row in _given_rows(item.id, {f: v for f, v in c.cand.given().items()
                                             if before.get(item.id, {}).get(f) != v}, source)])
        return len(new_items), given, already, new_skips, changed

    added, given, already, dup_skips, changed = db.write(engine, tx)
    report.added += added
    report.already += already
    report.labelled += sum(1 for r in given if r.field == DEFAULT_FIELD)
    for row in given:
        report.given[row.field] = report.given.get(row.field, 0) + 1
    for row in changed:
        report.changed[row.field] = report.changed.get(row.field, 0) + 1
    report.skipped += skipped + dup_skips
