"""List or change the taxonomy. `add` appends classes and keeps every label. `rename` and
`remove --into` record a class alias: the stored labels, predictions and model versions are not
rewritten but read under the new name from then on (a change of vocabulary, not of anyone's
decision); they say how many label rows now read differently. `remove` without --into refuses
while any label uses the class. `--field NAME` works on another label field's classes: its
aliases apply to that field's labels and heads only."""

from __future__ import annotations

import argparse

from active.commands import Result
from active.errors import UserError

FIELD_HELP = "the label field (default: category; see `active fields list`)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from storage.fields import DEFAULT_FIELD

    p.add_argument("--field", default=DEFAULT_FIELD, help=FIELD_HELP)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="print the classes with their label counts")
    a = sub.add_parser("add", help="append classes (existing labels are kept)")
    a.add_argument("names", nargs="+")
    r = sub.add_parser("rename", help="rename a class everywhere it is used")
    r.add_argument("old")
    r.add_argument("new")
    rm = sub.add_parser("remove", help="remove a class (refused while labels use it, unless --into)")
    rm.add_argument("name")
    rm.add_argument("--into", help="merge its labels into this existing class")
    for action in (ls, a, r, rm):  # also after the action: `classes add red --field colour`
        action.add_argument("--field", default=argparse.SUPPRESS, help=FIELD_HELP)


def run(args: argparse.Namespace) -> Result:
    from active.project import Project, validate_class_name
    from active.taxonomy import alias_class, count_uses

    project = Project.load(args.project)
    field = project.check_field(args.field)
    classes = project.classes_of(field)
    if args.action == "list":
        uses = count_uses(project, field)
        return Result({"field": field, "classes": classes, "labels": uses},
                      "\n".join(f"{c}\t{uses.get(c, 0)}" for c in classes) or "(no classes yet)")
    if args.action == "add":
        added = project.add_classes([validate_class_name(n) for n in args.names], field)
        n = len(project.classes_of(field))
        return Result({"field": field, "added": added, "classes": project.classes_of(field)},
                      f"added {', '.join(added) or 'nothing (all present)'}; {n} classes in {field!r}")
    if args.action == "rename":
        project.check_class(args.old, field)
        new = validate_class_name(args.new)
        if new in classes:
            raise UserError(f"class {new!r} exists already: use `remove {args.old} --into {new}` to merge")
        n = alias_class(project, args.old, new, field)
        project.set_classes([new if c == args.old else c for c in classes], field)
        return Result({"field": field, "renamed": [args.old, new], "label_rows": n},
                      f"renamed {args.old!r} to {new!r}: {n} label rows read as {new!r} (none rewritten)")
    project.check_class(args.name, field)
    if args.into is not None:
        project.check_class(args.into, field)
        if args.into == args.name:
            raise UserError("--into must name another class")
        n = alias_class(project, args.name, args.into, field)
    else:
        n = count_uses(project, field).get(args.name, 0)
        if n:
            raise UserError(f"{n} labels use {args.name!r}: pass --into OTHER to merge them, nothing was changed")
    project.set_classes([c for c in classes if c != args.name], field)
    text = f"removed {args.name!r}" + (f", merged into {args.into!r}: {n} label rows read as {args.into!r} "
                                       "(none rewritten)" if args.into else "")
    text += "\nmodel versions trained before still have an output for the old class: retrain to drop it"
    return Result({"field": field, "removed": args.name, "into": args.into, "label_rows": n if args.into else 0},
                  text)
