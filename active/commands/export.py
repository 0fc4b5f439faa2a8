"""Export the current labels as a dataset, with the provenance of every label.

Formats: imagefolder (OUT/<split>/<class>/<file>, original bytes hard-linked or copied, never
re-encoded, plus labels.csv), csv (labels.csv), jsonl (labels.jsonl), hf (Hugging Face imagefolder
layout: per-split metadata.parquet and a README.md declaring the splits). Every export writes
OUT/export.json: command, time, options, counts, model version, label-snapshot hash and the
class -> folder mapping (unsafe class names get safe folder names).

Splits: without --splits, pool items are exported as `train` and holdout items as `holdout`.
With --splits train=0.8,val=0.1,test=0.1 the pool is split per class, deterministically from
--seed and the image bytes (not the database order); holdout items always stay in `holdout`.

A project with several label fields: --by FIELD exports by that field (its folders, its `label`
column); the table has a column per field with its provenance (`colour`, `colour_source`, ...).

Items without a label are not exported (counted in the manifest). The export is built beside OUT
and renamed into place, so a crash never leaves half an export; a non-empty OUT is refused unless
--overwrite is given and OUT is an earlier export."""

from __future__ import annotations

import argparse
from pathlib import Path

from active.commands import Result


def add_arguments(p: argparse.ArgumentParser) -> None:
    from active.export import FORMATS, INCLUDE_MODES

    p.add_argument("--format", choices=list(FORMATS), default="imagefolder",
                   help="what to write (default: imagefolder): "
                        + "; ".join(f"{f.name} = {f.help}" for f in FORMATS.values()))
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="destination folder (default: PROJECT/exports/<format>-<UTC time>)")
    p.add_argument("--splits", metavar="NAME=FRAC,...",
                   help="split the pool per class, e.g. train=0.8,val=0.1,test=0.1 (default: pool -> train, "
                        "holdout -> holdout)")
    p.add_argument("--seed", type=int, default=0, help="seed of --splits (default: 0)")
    p.add_argument("--include", choices=INCLUDE_MODES, default="flag",
                   help="items with open disputes: flag = keep them and fill a `disputed` column with the "
                        "reasons (default); exclude = leave them out; unresolved-disputes = keep them, no column")
    p.add_argument("--min-agreement", type=float, metavar="X",
                   help="leave out items whose human agreement is below X (items without human labels stay)")
    p.add_argument("--only-human", action="store_true",
                   help="leave out items whose label comes only from import")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    p.add_argument("--copy", action="store_true", help="copy images instead of hard-linking them (a hard link shares the file: editing one edits both)")
    p.add_argument("--by", metavar="FIELD",
                   help="the label field whose labels pick the items, name the folders and the `label` column "
                        "(default: category); every field gets its own columns in the table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Result:
    from active.export import ExportOptions, default_out, export, parse_splits, summary
    from active.project import Project

    project = Project.load(args.project)
    opts = ExportOptions(
        format=args.format,
        out=(args.out or default_out(project, args.format)).absolute(),
        splits=parse_splits(args.splits) if args.splits else None,
        seed=args.seed,
        include=args.include,
        min_agreement=args.min_agreement,
        only_human=args.only_human,
        overwrite=args.overwrite,
        copy=args.copy,
        progress=not args.no_progress,
        **({"by": args.by} if args.by else {}),
    )
    manifest = export(project, opts)
    return Result(manifest, summary(manifest))
