"""Import images where they lie (path + sha256; nothing is copied).

SOURCE is a folder with one subfolder per class (labels = folder names), a flat folder
(unlabelled), or a CSV/JSONL manifest with a path column (or --path-template) and an optional
--label-column; its other columns are kept as item metadata. Imported labels are *given* labels,
which the tool checks, not truth. Every file that is not imported is listed with its reason.

Several label fields at once: repeat --label-column FIELD=COLUMN (e.g. `--label-column
category=articleType --label-column colour=baseColour`; a bare COLUMN is the default field). Values
outside a field's classes are counted per field. Re-importing the same files changes nothing,
except a given label that changed: a new imported label is appended for it and counted."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from active.commands import Result
from active.errors import UserError

MAX_LISTED = 50


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="a folder, or a .csv/.tsv/.jsonl manifest")
    p.add_argument("--split", choices=["pool", "holdout"], default="pool",
                   help="'holdout' marks a fixed, human-labelled evaluation set (default: pool)")
    p.add_argument("--layout", choices=["auto", "classes", "flat"], default="auto",
                   help="folder layout (default: auto = classes unless files lie at the top)")
    p.add_argument("--path-column", help="manifest column holding image paths (default: path/file/filename/image)")
    p.add_argument("--path-template", help="build paths from columns, e.g. 'images/{id}.jpg'")
    p.add_argument("--label-column", action="append", metavar="[FIELD=]COLUMN",
                   help="manifest column holding a field's given labels, e.g. articleType or colour=baseColour "
                        "(repeat for several fields; without FIELD= the default field)")
    p.add_argument("--root", type=Path,
                   help="folder that relative manifest paths start from and may not leave (default: the manifest's)")
    p.add_argument("--add-classes", action="store_true", help="add unknown labels to the taxonomy instead of skipping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Result:
    from active.importer import import_candidates, read_manifest, scan_folder
    from active.project import Project

    project = Project.load(args.project)
    source: Path = args.source.absolute()
    if not source.exists():
        raise UserError(f"{source}: no such file or folder")
    if source.is_dir():
        if args.path_template or args.label_column or args.path_column:
            raise UserError("--path-template/--label-column/--path-column are for manifests, not folders")
        candidates, skipped, layout = scan_folder(source, layout=args.layout)
    else:
        candidates, skipped = read_manifest(source, root=args.root, path_column=args.path_column,
                                            path_template=args.path_template,
                                            label_columns=label_columns(args.label_column or []))
        layout = "manifest"
    report = import_candidates(project, candidates, split=args.split, source=str(source),
                               add_classes=args.add_classes, progress=not args.no_progress)
    report.skipped = skipped + report.skipped
    data = {"source": str(source), "layout": layout, "split": args.split, **report.to_dict()}
    lines = [f"skipped {s.path}: {s.reason}" for s in report.skipped[:MAX_LISTED]]
    if len(report.skipped) > MAX_LISTED:
        lines.append(f"... and {len(report.skipped) - MAX_LISTED} more (use --json for all)")
    reasons = Counter(s.reason.split(":")[0].split(" of ")[0] for s in report.skipped)
    lines.append(
        f"imported {report.added} new items ({report.labelled} with labels) into split '{args.split}' "
        f"from {source} [{layout}]; {report.already} already imported; {len(report.skipped)} skipped"
        + (f" ({', '.join(f'{n} {r}' for r, n in reasons.most_common())})" if reasons else "")
    )
    if report.new_classes:
        lines.append(f"classes added to the taxonomy: {', '.join(report.new_classes)}")
    for name, added in report.new_field_classes.items():
        lines.append(f"classes added to field {name!r}: {', '.join(added)}")
    for name, values in report.unknown.items():
        shown = ", ".join(f"{v!r} ({n})" for v, n in sorted(values.items(), key=lambda kv: -kv[1])[:10])
        lines.append(f"field {name!r}: {sum(values.values())} labels not in its classes: {shown}"
                     + (" ..." if len(values) > 10 else "") + " (use --add-classes to take them)")
    if report.changed:
        lines.append(f"{sum(report.changed.values())} given labels changed since the last import "
                     f"({', '.join(f'{f} {n}' for f, n in report.changed.items())}): appended, the old ones kept")
    return Result(data, "\n".join(lines))


def label_columns(values: list[str]) -> dict[str, str]:
    """field -> column from ``--label-column`` values (``FIELD=COLUMN``, or ``COLUMN`` for the default field)."""
    from storage.fields import DEFAULT_FIELD

    out: dict[str, str] = {}
    for value in values:
        name, sep, column = value.partition("=")
        name, column = (name.strip(), column.strip()) if sep else (DEFAULT_FIELD, value.strip())
        if not name or not column:
            raise UserError(f"--label-column {value!r}: give COLUMN or FIELD=COLUMN")
        if name in out:
            raise UserError(f"--label-column: two columns for field {name!r} ({out[name]!r}, {column!r})")
        out[name] = column
    return out
