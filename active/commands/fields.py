"""List or add label fields. A project labels one or more fields of each photo (`category`, the
default, plus e.g. `colour`), each with its own classes, suggestions, disputes and export column.
`add NAME --classes a,b,c` (or --preset) adds a field; its classes can grow later with
`active classes --field NAME add ...`, or at import with --add-classes."""

from __future__ import annotations

import argparse

from active.commands import Result, table
from active.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from active.project import PRESETS

    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="print the fields with their classes and how many items are labelled in each")
    a = sub.add_parser("add", help="add a label field with its classes")
    a.add_argument("name", help="lowercase letters, digits and '_', e.g. colour")
    group = a.add_mutually_exclusive_group()
    group.add_argument("--classes", help="comma-separated class names (may be empty: classes come at import)")
    group.add_argument("--preset", choices=sorted(PRESETS), help="a built-in class list")


def run(args: argparse.Namespace) -> Result:
    from active.project import PRESETS, Project, parse_classes

    project = Project.load(args.project)
    if args.action == "add":
        classes = parse_classes(args.classes) if args.classes else list(PRESETS.get(args.preset or "", []))
        name = project.add_field(args.name, classes)
        return Result({"added": name, "classes": classes, "fields": project.field_names},
                      f"added field {name!r} with {len(classes)} classes; fields: {', '.join(project.field_names)}")
    if args.action != "list":  # argparse limits the choices; kept for a clear error if one is added
        raise UserError(f"unknown action {args.action!r}")
    from storage import db, labels

    with db.session(project.engine) as s:
        labelled = {f: labels.count_labelled(s, f) for f in project.field_names}
    fields = [{"name": f, "default": k == 0, "classes": project.classes_of(f), "labelled": labelled[f]}
              for k, f in enumerate(project.field_names)]
    rows = [[f["name"] + (" (default)" if f["default"] else ""), len(f["classes"]), f["labelled"],
             ", ".join(f["classes"])[:60]] for f in fields]
    return Result({"fields": fields}, table(rows, ["field", "classes", "labelled", "class names"]))
