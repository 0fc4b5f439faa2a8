"""Export the current labels as a dataset, with the provenance of every label.

Formats (DESIGN.md, flow 7):

- ``imagefolder``: ``OUT/<split>/<class folder>/<file>`` holding the original bytes (a hard link
  when OUT is on the same filesystem as the image, else a copy; never re-encoded), loadable by
  ``torchvision.datasets.ImageFolder(OUT/<split>)``, plus ``OUT/labels.csv`` (the provenance table);
- ``csv`` / ``jsonl``: ``OUT/labels.csv`` or ``OUT/labels.jsonl`` only (no images), one row per item;
  ``exported_path`` is where an image export with the same options puts the file;
- ``hf``: the Hugging Face ``imagefolder`` layout: the image tree of ``imagefolder`` (``val`` is
  named ``validation``), one ``metadata.parquet`` per split folder whose ``file_name`` is relative to
  it, and a ``README.md`` whose YAML ``configs`` declare every split (``holdout`` included).

Label fields (`storage.fields`): the export is *by* one field (``by``, the default field unless
given): its current label decides which items are exported, their ImageFolder folders, the split
stratification and the ``label``/``source``/... provenance columns. A project with several fields
gets, per field, a column named after it (its current label) and ``<field>_source``,
``_agreement``, ``_imported_label``, ``_annotator``, ``_predicted``, ``_confidence`` and
``_disputed`` (its open dispute reasons): the provenance of every field's label.

Every export writes ``OUT/export.json`` (the manifest: command, time, options, counts per
split and class, model version, the sha256 of the label snapshot, the class -> folder mapping).
An export is built in a hidden temp folder beside OUT and renamed into place, so a crash never
leaves half an export at OUT; the next export to OUT removes what a killed one left beside it.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from active.errors import UserError
from active.project import Project
from active.tempdirs import make_owned_dir, orphans, remove_orphans
from storage import db, items, labels, pages, versions
from storage import disputes as store_disputes
from storage.enums import Decision, Source, Split
from storage.fields import DEFAULT_FIELD, field_prediction
from storage.labels import CurrentLabel
from storage.snapshots import export_hash
from storage.tables import Item, ModelVersion, Prediction, utcnow


@dataclass(frozen=True)
class ExportFormat:
    """An export format: what it writes. The CLI's choices and the writer read these entries."""

    name: str
    display: str
    writes_images: bool  # the photos' bytes go into the export (unreadable items are left out)
    table: str | None  # the provenance table's file name, None when the metadata lies per split
    help: str


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat("imagefolder", "ImageFolder", True, "labels.csv",
                     "OUT/<split>/<class>/<file> for torchvision's ImageFolder, plus labels.csv"),
        ExportFormat("csv", "CSV", False, "labels.csv", "labels.csv only, one row per item"),
        ExportFormat("jsonl", "JSON lines", False, "labels.jsonl", "labels.jsonl only, typed values"),
        ExportFormat("hf", "Hugging Face imagefolder", True, None,
                     "OUT/<split>/ with metadata.parquet and a dataset card declaring the features"),
    )
}
# flag: keep disputed items and say why in a `disputed` column; exclude: drop them;
# unresolved-disputes: keep them, no column.
INCLUDE_MODES = ("flag", "exclude", "unresolved-disputes")
HOLDOUT_SPLIT = Split.HOLDOUT
# Without --splits, pool items are exported as `train` and holdout items as `holdout`.
POOL_SPLIT = "train"
HF_SPLIT_NAMES = {"val": "validation"}  # the name Hugging Face's split inference knows
MANIFEST_NAME = "export.json"
# Parquet, not JSON lines: `datasets` infers each split's JSON types from its first rows and refuses
# splits whose all-null columns (a holdout without rounds) then differ; Parquet carries the schema.
HF_METADATA = "metadata.parquet"
ARROW_TYPES = ("bool", "int64", "float64", "string")
SPLIT_SUM_TOLERANCE = 1e-6

# Folder and file names: at most this many UTF-8 bytes (most filesystems allow 255).
MAX_NAME_BYTES = 120
SHORT_HASH = 8
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\<>:"|?*]')
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
# OWASP CSV injection: cells starting with these are read as formulas by spreadsheets.
# Also a leading space or line break (spreadsheets trim them, then see the formula) and the
# full-width forms of = + - @, which some spreadsheets read as their ASCII twins.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", " ", "\uff1d", "\uff0b", "\uff0d", "\uff20")
ESCAPE = "'"

# What torchvision's ImageFolder accepts; files with another suffix get one from their format.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif",
                 "WEBP": ".webp", "PPM": ".ppm"}

BASE_COLUMNS = (
    "item_id", "sha256", "original_path", "exported_path", "split", "label", "source", "n_human",
    "agreement", "imported_label", "n_skipped", "n_unsure", "model_version", "predicted", "confidence", "round",
    "page", "annotator", "labelled_at",
)
# Arrow types of the base columns in a Hugging Face export's card (``label`` is a ClassLabel).
HF_TYPES = {"item_id": "int64", "n_human": "int64", "agreement": "float64", "n_skipped": "int64",
            "n_unsure": "int64", "model_version": "int64", "confidence": "float64", "round": "int64",
            "page": "int64"}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExportOptions:
    """What to export and how. ``splits``: split name -> fraction of the pool (sums to 1)."""

    format: str
    out: Path
    splits: Mapping[str, float] | None = None
    seed: int = 0
    include: str = "flag"
    min_agreement: float | None = None
    only_human: bool = False
    overwrite: bool = False
    copy: bool = False
    progress: bool = True
    by: str = DEFAULT_FIELD  # the label field that decides what is exported and where (`--by`)

    def check(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"unknown format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.include not in INCLUDE_MODES:
            raise UserError(f"unknown --include {self.include!r}: use one of {', '.join(INCLUDE_MODES)}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise UserError(f"--min-agreement must lie in [0, 1], got {self.min_agreement}")
        if self.splits is not None:
            check_splits(self.splits)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "out": str(self.out), "splits": dict(self.splits) if self.splits else None,
            "seed": self.seed, "include": self.include, "min_agreement": self.min_agreement,
            "only_human": self.only_human, "overwrite": self.overwrite, "copy": self.copy, "by": self.by,
        }

    def command(self, project: Path) -> str:
        """An `active export` command line that makes the same export."""
        argv = ["active", "--project", str(project), "export", "--format", self.format, "--out", str(self.out)]
        if self.splits:
            argv += ["--splits", ",".join(f"{k}={v:g}" for k, v in self.splits.items()), "--seed", str(self.seed)]
        argv += ["--include", self.include]
        if self.min_agreement is not None:
            argv += ["--min-agreement", f"{self.min_agreement:g}"]
        argv += ["--only-human"] * self.only_human + ["--overwrite"] * self.overwrite + ["--copy"] * self.copy
        if self.by != DEFAULT_FIELD:
            argv += ["--by", self.by]
        return shlex.join(argv)


def parse_splits(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.1,test=0.1"`` -> ``{"train": 0.8, "val": 0.1, "test": 0.1}`` (checked)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--splits: {part!r} is not NAME=FRACTION (e.g. train=0.8,val=0.1,test=0.1)")
        try:
            out_value = float(value)
        except ValueError:
            raise UserError(f"--splits: {value.strip()!r} is not a number (in {part!r})") from None
        if name in out:
            raise UserError(f"--splits: split {name!r} given twice")
        out[name] = out_value
    check_splits(out)
    return out


def check_splits(splits: Mapping[str, float]) -> None:
    if not splits:
        raise UserError("--splits needs at least one NAME=FRACTION")
    for name, frac in splits.items():
        if name == HOLDOUT_SPLIT:
            raise UserError(f"--splits: {HOLDOUT_SPLIT!r} is reserved for the project's holdout items")
        if not name or safe_name(name) != name or name.casefold() != name:
            raise UserError(f"--splits: {name!r} is not a plain lower-case folder name")
        if not 0.0 < frac <= 1.0:
            raise UserError(f"--splits: the fraction of {name!r} must lie in (0, 1], got {frac}")
    total = sum(splits.values())
    if abs(total - 1.0) > SPLIT_SUM_TOLERANCE:
        raise UserError(f"--splits: fractions must sum to 1, they sum to {total:g}")


# --------------------------------------------------------------------------- safe names


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:SHORT_HASH]


def _truncate_bytes(text: str, limit: int) -> str:
    data = text.encode("utf-8")[:limit]
    return data.decode("utf-8", errors="ignore")


def safe_name(name: str) -> str:
    """``name`` made safe as one folder or file name on Linux, macOS and Windows.

    Slashes, backslashes, control and Windows-reserved characters become ``_``; a leading dot
    (hidden files, ``.``/``..``) and trailing dots/spaces are replaced; reserved device names
    (``CON``, ``NUL``, ``COM1`` ...) get a ``_`` prefix; names longer than `MAX_NAME_BYTES` are cut
    and marked with a hash of the full name. A name that is already safe is returned unchanged.
    """
    text = unicodedata.normalize("NFC", name)
    text = _UNSAFE_CHARS.sub("_", text)
    if text.startswith("."):
        text = "_" + text[1:]
    stripped = text.rstrip(". ")
    if stripped != text:
        text = stripped + "_"
    if not text.strip():
        text = "_"
    if text.split(".")[0].strip().casefold() in _WINDOWS_RESERVED:
        text = "_" + text
    if len(text.encode("utf-8")) > MAX_NAME_BYTES:
        text = _truncate_bytes(text, MAX_NAME_BYTES - SHORT_HASH - 1) + "-" + _short_hash(name)
    return text


def class_folders(names: Iterable[str]) -> dict[str, str]:
    """Class name -> folder name: safe, and unique even on case-insensitive filesystems.

    Names are taken in a fixed order (already-safe names first, lower-case before mixed-case,
    then sorted) so the mapping never depends on the order of the store and ``shirt`` keeps its
    folder when ``Shirt`` appears. A name whose safe form collides (ignoring case) with one
    already taken gets ``-<hash of the name>``.
    """
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for name in sorted(set(names), key=lambda n: (safe_name(n) != n, n != n.lower(), n)):
        folder = safe_name(name)
        if folder.casefold() in taken:
            folder = safe_name(f"{folder}-{_short_hash(name)}")
        n = 2
        while folder.casefold() in taken:  # a hash collision as well: practically never
            folder = safe_name(f"{folder}-{n}")
            n += 1
        taken.add(folder.casefold())
        mapping[name] = folder
    return mapping


def _file_name(item: Item) -> str:
    """The item's original file name, made safe, with an image suffix torchvision accepts."""
    name = safe_name(Path(item.path).name)
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        fmt = str((item.meta or {}).get("format", "")).upper()
        name += FORMAT_SUFFIX.get(fmt, ".img")
    return name


def _unique_name(name: str, sha: str, item_id: int, taken: set[str]) -> str:
    """``name``, or ``stem-<sha8><suffix>`` (then ``stem-<id><suffix>``) when the folder has it."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for candidate in (name, f"{stem}-{sha[:SHORT_HASH]}{suffix}", f"{stem}-{sha[:SHORT_HASH]}-{item_id}{suffix}"):
        candidate = safe_name(candidate)
        if candidate.casefold() not in taken:
            taken.add(candidate.casefold())
            return candidate
    raise AssertionError("item ids are unique")


# --------------------------------------------------------------------------- CSV safety


def escape_cell(value: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would run as a formula (OWASP CSV injection).

    Cells that already start with ``'`` get one more, so `unescape_cell` is an exact inverse.
    """
    if value.startswith((*FORMULA_PREFIXES, ESCAPE)):
        return ESCAPE + value
    return value


def unescape_cell(value: str) -> str:
    return value[1:] if value.startswith(ESCAPE) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return escape_cell(str(value))


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of an exported CSV with the formula escaping undone (cells stay strings)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [{k: unescape_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


# --------------------------------------------------------------------------- splits


def _rank_key(seed: int, sha: str) -> str:
    return hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()


def allocate(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` items by ``fractions`` with the largest-remainder rule (counts sum to ``n``)."""
    exact = {k: n * f for k, f in fractions.items()}
    counts = {k: int(v) for k, v in exact.items()}
    order = sorted(fractions, key=lambda k: (-(exact[k] - counts[k]), list(fractions).index(k)))
    for k in order[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def assign_splits(
    entries: Sequence[tuple[str, str, str]], fractions: Mapping[str, float] | None, *, seed: int
) -> dict[str, str]:
    """Export split of each item, keyed by sha256.

    entries: (sha256, label, store split) per item. Holdout items always go to ``holdout``. Without
    ``fractions`` pool items go to ``train``; with them, each class's pool items are ranked by
    sha256(seed:item sha256) and cut by `allocate`, so the result depends only on the seed, the
    item bytes and their labels (never on the order of the store).
    """
    out: dict[str, str] = {}
    by_class: dict[str, list[str]] = defaultdict(list)
    for sha, label, split in entries:
        if split == HOLDOUT_SPLIT:
            out[sha] = HOLDOUT_SPLIT
        elif fractions is None:
            out[sha] = POOL_SPLIT
        else:
            by_class[label].append(sha)
    for shas in by_class.values():
        ranked = sorted(shas, key=lambda s: _rank_key(seed, s))
        start = 0
        for name, count in allocate(len(ranked), fractions or {}).items():
            for sha in ranked[start : start + count]:
                out[sha] = name
            start += count
    return out


# --------------------------------------------------------------------------- collecting rows


@dataclass
class Row:
    item: Item
    cur: CurrentLabel
    pred: Prediction | None
    disputes: list[str]
    passes: Mapping[str, int]  # effective skipped / unsure decisions on the item
    page: int | None = None  # the page (Grid tab) the deciding label was given on
    by: str = DEFAULT_FIELD  # the field ``cur`` is of
    # every field of a project with several: field -> (current label or None, open dispute reasons)
    fields: Mapping[str, tuple[CurrentLabel | None, list[str]]] | None = None
    split: str = ""
    folder: str = ""
    file_name: str = ""

    @property
    def rel_path(self) -> str:
        return f"{self.split}/{self.folder}/{self.file_name}"


@dataclass
class Collected:
    rows: list[Row]
    excluded: Counter
    snapshot_sha256: str
    n_labelled: int
    max_label_id: int
    version: ModelVersion | None
    class_folders: dict[str, str]


def collect(project: Project, opts: ExportOptions) -> Collected:
    """Read the store once and decide what is exported, where, and why the rest is not."""
    excluded: Counter = Counter()
    by = project.check_field(opts.by)
    several = len(project.field_names) > 1
    with db.session(project.engine) as s:
        all_items = {i.id: i for i in items.all_items(s)}
        max_label_id, by_field = labels.current_by_field(s, project.field_names)
        current = by_field[by]
        version = versions.serving(s)
        preds = versions.predictions(s, version.id) if version is not None else {}
        field_disputes = {f: store_disputes.open_reasons(s, field=f) for f in project.field_names}
        disputes = field_disputes[by]
        passes = labels.passes_by_item(s)
        on_pages = pages.page_ids(s, (c.round_id for c in current.values()))
    sha_of = {i: it.sha256 for i, it in all_items.items()}
    snap = export_hash((sha_of[i], c.label, c.source) for i, c in current.items())

    rows: list[Row] = []
    for item_id, item in all_items.items():
        cur = current.get(item_id)
        if cur is None:
            excluded["no_label"] += 1
            continue
        if opts.only_human and cur.source == Source.IMPORTED:
            excluded["only_imported_label"] += 1
            continue
        if opts.min_agreement is not None and cur.agreement is not None and cur.agreement < opts.min_agreement:
            excluded["below_min_agreement"] += 1
            continue
        if item.error is not None and FORMATS[opts.format].writes_images:
            excluded["unreadable_image"] += 1  # scoring could not decode it: no loader could either
            continue
        reasons = disputes.get(item_id, [])
        if reasons and opts.include == "exclude":
            excluded["open_dispute"] += 1
            continue
        fields = ({f: (by_field[f].get(item_id), field_disputes[f].get(item_id, [])) for f in project.field_names}
                  if several else None)
        rows.append(Row(item, cur, preds.get(item_id), reasons, passes.get(item_id, {}),
                        cur.round_id if cur.round_id in on_pages else None, by=by, fields=fields))

    folders = class_folders(r.cur.label for r in rows)
    split_of = assign_splits([(r.item.sha256, r.cur.label, r.item.split) for r in rows], opts.splits,
                             seed=opts.seed)
    taken: dict[tuple[str, str], set[str]] = defaultdict(set)
    # Name files in sha order so which item keeps the plain name never depends on the store order.
    for r in sorted(rows, key=lambda r: r.item.sha256):
        split = split_of[r.item.sha256]
        r.split = HF_SPLIT_NAMES.get(split, split) if opts.format == "hf" else split
        r.folder = folders[r.cur.label]
        r.file_name = _unique_name(_file_name(r.item), r.item.sha256, r.item.id or 0, taken[(r.split, r.folder)])
    rows.sort(key=lambda r: (r.split, r.folder, r.file_name))
    return Collected(rows, excluded, snap, len(current), max_label_id, version, folders)


def _flatten(meta: Mapping[str, Any], prefix: str = "meta_") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def record(row: Row, *, flag: bool) -> dict[str, Any]:
    """One table row: the columns of `BASE_COLUMNS`, ``disputed`` when flagged, the per-field
    columns of a project with several fields, then ``meta_*``."""
    cur, pred = row.cur, row.pred
    guess = field_prediction(pred, row.by) if pred is not None else None
    rec: dict[str, Any] = {
        "item_id": row.item.id,
        "sha256": row.item.sha256,
        "original_path": row.item.path,
        "exported_path": row.rel_path,
        "split": row.split,
        "label": cur.label,
        "source": cur.source,
        "n_human": cur.n_human,
        "agreement": cur.agreement,
        "imported_label": cur.imported,
        "n_skipped": row.passes.get(Decision.SKIPPED, 0),
        "n_unsure": row.passes.get(Decision.UNSURE, 0),
        "model_version": pred.model_version_id if pred is not None else None,
        "predicted": guess.pred if guess is not None else None,
        "confidence": guess.confidence if guess is not None else None,
        "round": cur.round_id,
        "page": row.page,
        "annotator": cur.annotator,
        "labelled_at": cur.created_at.isoformat(),
    }
    if flag:
        rec["disputed"] = ";".join(row.disputes)
    for name, (fcur, reasons) in (row.fields or {}).items():
        col = name if name not in rec else f"field_{name}"  # a field named like a base column
        fguess = field_prediction(pred, name) if pred is not None else None
        rec.update({
            col: fcur.label if fcur else None,
            f"{col}_source": fcur.source if fcur else None,
            f"{col}_agreement": fcur.agreement if fcur else None,
            f"{col}_imported_label": fcur.imported if fcur else None,
            f"{col}_annotator": fcur.annotator if fcur else None,
            f"{col}_predicted": fguess.pred if fguess is not None else None,
            f"{col}_confidence": fguess.confidence if fguess is not None else None,
            f"{col}_disputed": ";".join(reasons),
        })
    rec.update(_flatten(row.item.meta or {}))
    return rec


def _columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    seen: set[str] = set()
    for rec in records:
        for k in rec:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    base = [c for c in cols if not c.startswith("meta_")]
    return base + sorted(c for c in cols if c.startswith("meta_"))


# --------------------------------------------------------------------------- writing


def write_csv(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    cols = _columns(records)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([escape_cell(c) for c in cols])
        for rec in records:
            writer.writerow([_cell(rec.get(c)) for c in cols])


def write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    cols = _columns(records)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps({c: rec.get(c) for c in cols}, ensure_ascii=False) + "\n")


def _hf_value(value: Any) -> Any:
    # Arrow wants one type per column: metadata values of mixed types become strings.
    if value is None or isinstance(value, bool | int | float):
        return value
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


class FileChanged(Exception):
    """An item's file is missing or no longer holds the bytes that were imported."""


def place_file(src: Path, dst: Path, sha: str, *, copy: bool) -> str:
    """Put ``src``'s bytes at ``dst``: hard link, else copy. Returns ``"linked"`` or ``"copied"``.

    The source is hashed first; a file that changed since import raises `FileChanged`.
    """
    h = hashlib.sha256()
    try:
        with src.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise FileChanged(f"cannot read: {exc.strerror or exc}") from None
    if h.hexdigest() != sha:
        raise FileChanged("file changed since import (sha256 differs)")
    if not copy:
        try:
            os.link(src, dst)
            return "linked"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copyfile(src, dst)
    return "copied"


def _hf_dtype(column: str, values: Sequence[Any]) -> str:
    """The Arrow type of one metadata column: the base columns' own, else one that holds every value."""
    if column in HF_TYPES:
        return HF_TYPES[column]
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return "bool"
    if kinds and kinds <= {int}:
        return "int64"
    if kinds and kinds <= {int, float}:
        return "float64"
    return "string"


def _hf_features(records: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """YAML lines of the card's features (``image``, ``label`` as a ClassLabel of ``classes``,
    then every other column with one type) and the type chosen per column."""
    cols = [c for c in _columns(records) if c not in ("file_name", "label")]
    types = {c: _hf_dtype(c, [r.get(c) for r in records]) for c in cols}
    lines = ["  - name: image", "    dtype: image", "  - name: label", "    dtype:", "      class_label:",
             "        names:"]
    lines += [f"          '{k}': {json.dumps(name, ensure_ascii=False)}" for k, name in enumerate(classes)]
    for c in cols:
        lines += [f"  - name: {json.dumps(c, ensure_ascii=False)}", f"    dtype: {types[c]}"]
    return lines, types


def _hf_readme(splits: Sequence[str], features: Sequence[str]) -> str:
    """The dataset card: the splits and the features, once for the Hub (``dataset_info``) and once
    for `datasets.load_dataset(folder)` (the config's ``features``), which infers types otherwise."""
    lines = ["---", "dataset_info:", "  features:", *features, "configs:", "- config_name: default",
             "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f'    path: "{split}/**"']
    lines += ["  features:", *[f"  {ln}" for ln in features]]
    lines += ["---", "", "Exported by active-labeler: see export.json for the provenance.", ""]
    return "\n".join(lines)


def _hf_cast(value: Any, dtype: str) -> Any:
    """``value`` as the column's type: a string column turns numbers into text."""
    return str(value) if dtype == "string" and value is not None and not isinstance(value, str) else value


def write_hf_metadata(path: Path, records: Sequence[Mapping[str, Any]], types: Mapping[str, str]) -> None:
    """One split's ``metadata.parquet`` with the same schema in every split (``types``: column ->
    one of `ARROW_TYPES`; ``file_name`` and ``label`` are strings)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("the hf format writes Parquet metadata and needs pyarrow: "
                        "pip install 'active-labeler[hf]' (or the `datasets` package)") from None
    arrow = {"bool": pa.bool_(), "int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
    names = ["file_name", "label", *types]
    schema = pa.schema([(n, arrow[types.get(n, "string")]) for n in names])
    columns = {n: [_hf_cast(r.get(n), types.get(n, "string")) for r in records] for n in names}
    pq.write_table(pa.table(columns, schema=schema), path)


def _write_tree(tmp: Path, collected: Collected, opts: ExportOptions, manifest: dict[str, Any], *,
                classes: Sequence[str]) -> list[Row]:
    """Write images (image formats) and tables into ``tmp``; returns the rows actually exported."""
    rows = collected.rows
    placed = Counter()
    skipped: list[dict[str, Any]] = []
    if FORMATS[opts.format].writes_images:
        kept: list[Row] = []
        for r in tqdm(rows, desc=f"export {opts.format}", unit="img", disable=not opts.progress):
            dst = tmp / r.split / r.folder / r.file_name
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                placed[place_file(Path(r.item.path), dst, r.item.sha256, copy=opts.copy)] += 1
            except FileChanged as exc:
                skipped.append({"item_id": r.item.id, "path": r.item.path, "reason": str(exc)})
                continue
            kept.append(r)
        rows = kept
    flag = opts.include == "flag"
    records = [record(r, flag=flag) for r in rows]
    table = FORMATS[opts.format].table
    if table is not None:
        (write_jsonl if table.endswith(".jsonl") else write_csv)(tmp / table, records)
    if opts.format == "hf":
        by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
        metas = [{"file_name": f"{r.folder}/{r.file_name}"} | {k: _hf_value(v) for k, v in rec.items()}
                 for r, rec in zip(rows, records, strict=True)]
        names = list(dict.fromkeys([*classes, *sorted({r.cur.label for r in rows})]))
        features, types = _hf_features(metas, names)
        for r, meta in zip(rows, metas, strict=True):
            by_split[r.split].append(meta)
        for split, recs in by_split.items():
            write_hf_metadata(tmp / split / HF_METADATA, recs, types)
        (tmp / "README.md").write_text(_hf_readme(sorted(by_split), features), encoding="utf-8")
    manifest["files"] = dict(placed)
    manifest["skipped"] = skipped
    return rows


# --------------------------------------------------------------------------- placing the export


def _check_destination(out: Path, *, overwrite: bool) -> bool:
    """True when ``out`` holds an earlier export to replace; raises when it may not be written."""
    if not out.exists() and not out.is_symlink():
        return False
    if not out.is_dir() or out.is_symlink():
        raise UserError(f"{out}: exists and is a file or a symlink, not a folder; choose another --out")
    if not any(out.iterdir()):
        return False
    if not overwrite:
        raise UserError(f"{out}: folder is not empty; pass --overwrite to replace an earlier export, "
                        "or choose another --out")
    why = _not_our_export(out)
    if why is not None:
        raise UserError(f"{out}: not an active-labeler export ({why}); --overwrite only "
                        "replaces earlier exports, so remove or move this folder yourself")
    return True


def _not_our_export(out: Path) -> str | None:
    """Why ``out`` is not a folder an earlier `export` wrote, or None when it is one.

    A file named export.json is not enough: the manifest must be ours, and every entry at the top
    and in each split folder must be one that manifest accounts for, so --overwrite never
    deletes anything the export did not write."""
    manifest_path = out / MANIFEST_NAME
    if not manifest_path.is_file() or manifest_path.is_symlink():
        return f"no {MANIFEST_NAME}"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        fmt = manifest["format"]
        splits = set(manifest["counts"]["by_split"])
        folders = set(manifest.get("class_folders", {}).values())
        ok = manifest.get("tool") == "active-labeler" and fmt in FORMATS
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST_NAME} is not an active-labeler manifest"
    if not ok:
        return f"{MANIFEST_NAME} is not an active-labeler manifest"
    table = FORMATS[fmt].table
    files = {MANIFEST_NAME} | ({table} if table else set()) | ({"README.md"} if fmt == "hf" else set())
    split_dirs = splits if FORMATS[fmt].writes_images else set()
    for entry in out.iterdir():
        if entry.is_symlink() or not (entry.name in files and entry.is_file()
                                      or entry.name in split_dirs and entry.is_dir()):
            return f"it holds {entry.name!r}, which no export writes"
        if entry.is_dir():
            for sub in entry.iterdir():
                if sub.is_symlink() or not (sub.name in folders and sub.is_dir()
                                            or fmt == "hf" and sub.name == HF_METADATA and sub.is_file()):
                    return f"it holds {entry.name}/{sub.name!r}, which no export writes"
    return None


def _tmp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def _old_prefix(out: Path) -> str:
    return f".{out.name}.old-"


def _clear_killed_exports(out: Path) -> None:
    """Undo what a killed export to ``out`` left beside it: its half-built temp folder goes; an
    earlier export it had just renamed away goes back to ``out`` when nothing took its place."""
    for old in orphans(out.parent, _old_prefix(out)):
        if out.exists() or out.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, out)
    remove_orphans(out.parent, _tmp_prefix(out))


def _swap_into_place(tmp: Path, out: Path, *, replace: bool) -> None:
    """Rename the finished ``tmp`` to ``out``; an earlier export is renamed away, then removed."""
    if not replace:
        if out.is_dir():
            out.rmdir()  # empty (checked); a file appearing meanwhile makes this fail, loudly
        os.rename(tmp, out)
        return
    old = make_owned_dir(out.parent, _old_prefix(out), mode=0o700)
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)  # put the earlier export back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export(project: Project, opts: ExportOptions) -> dict[str, Any]:
    """Export the current labels of ``project`` to ``opts.out``; returns the manifest.

    Raises `UserError` on bad options or a destination that may not be written.
    """
    opts.check()
    out = opts.out.absolute()
    _clear_killed_exports(out)
    replace = _check_destination(out, overwrite=opts.overwrite)
    started = utcnow()
    collected = collect(project, opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_owned_dir(out.parent, _tmp_prefix(out), mode=0o700)
    try:
        v = collected.version
        manifest: dict[str, Any] = {
            "tool": "active-labeler",
            "command": opts.command(project.root),
            "created_at": started.isoformat(),
            "project": str(project.root),
            "format": opts.format,
            "options": opts.to_dict(),
            "model_version": None if v is None else {"id": v.id, "mode": v.mode, "backbone": v.backbone,
                                                      "created_at": v.created_at.isoformat()},
            "label_snapshot": {"sha256": collected.snapshot_sha256, "labelled_items": collected.n_labelled,
                               "max_label_id": collected.max_label_id},
            "class_folders": collected.class_folders,
            "by": opts.by,
            "fields": project.field_names,
        }
        rows = _write_tree(tmp, collected, opts, manifest, classes=project.classes_of(opts.by))
        by_split: dict[str, Counter] = defaultdict(Counter)
        for r in rows:
            by_split[r.split][r.cur.label] += 1
        excluded = Counter(collected.excluded)
        if manifest["skipped"]:
            excluded["file_missing_or_changed"] += len(manifest["skipped"])
        manifest["counts"] = {
            "exported": len(rows),
            "by_split": {s: dict(sorted(c.items())) for s, c in sorted(by_split.items())},
            "by_class": dict(sorted(Counter(r.cur.label for r in rows).items())),
            "by_source": dict(sorted(Counter(r.cur.source for r in rows).items())),
            "disputed": sum(1 for r in rows if r.disputes),
            "excluded": dict(sorted(excluded.items())),
        }
        manifest["finished_at"] = utcnow().isoformat()
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
        _swap_into_place(tmp, out, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def summary(manifest: Mapping[str, Any]) -> str:
    """A few lines for people: where, how many, what was left out."""
    c = manifest["counts"]
    lines = [f"exported {c['exported']} items as {manifest['format']} to {manifest['options']['out']}"]
    for split, classes in c["by_split"].items():
        lines.append(f"  {split}: {sum(classes.values())} ({', '.join(f'{k} {n}' for k, n in classes.items())})")
    if c["by_source"]:
        lines.append("  sources: " + ", ".join(f"{k} {n}" for k, n in c["by_source"].items()))
    if c["disputed"]:
        lines.append(f"  open disputes among them: {c['disputed']}")
    if c["excluded"]:
        lines.append("  not exported: " + ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in c["excluded"].items()))
    for s in manifest["skipped"][:20]:
        lines.append(f"  skipped {s['path']}: {s['reason']}")
    renamed = {k: v for k, v in manifest["class_folders"].items() if k != v}
    if renamed:
        lines.append("  class folders renamed for safety: " + ", ".join(f"{k!r} -> {v}" for k, v in renamed.items()))
    if manifest["files"]:
        lines.append("  files: " + ", ".join(f"{k} {n}" for k, n in manifest["files"].items()))
    lines.append(f"  label snapshot sha256 {manifest['label_snapshot']['sha256'][:16]}..., manifest {MANIFEST_NAME}")
    return "\n".join(lines)


def default_out(project: Project, fmt: str, *, now: datetime | None = None) -> Path:
    return project.exports / f"{fmt}-{(now or utcnow()):%Y%m%d-%H%M%S}"


__all__ = [
    "FORMATS", "INCLUDE_MODES", "ExportOptions", "allocate", "assign_splits", "class_folders", "collect",
    "escape_cell", "export", "parse_splits", "read_csv", "safe_name", "summary",
    "unescape_cell",
]
