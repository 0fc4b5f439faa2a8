"""List or change the taxonomy. `add` appends classes and keeps every label. `rename` and
`remove --into` record a class alias: the stored labels, predictions and model versions are not
rewritten but read under the new name from then on (a change of vocabulary, not of anyone's
decision); they say how many label rows now read differently. `remove` without --into refuses
while any label uses the class. `--field NAME` works on another label field's classes (`list`
and `add`; rename and remove are for the default field, whose aliases every field reads)."""

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
    for action in (ls, a):  # also after the action: `classes add red --field colour`
        action.add_argument("--field", default=argparse.SUPPRESS, help=FIELD_HELP)
    a.add_argument("names", nargs="+")
    r = sub.add_parser("rename", help="rename a class everywhere it is used")
    r.add_argument("old")
    r.add_argument("new")
    rm = sub.add_parser("remove", help="remove a class (refused while labels use it, unless --into)")
    rm.add_argument("name")
    rm.add_argument("--into", help="merge its labels into this existing class")


def run(args: argparse.Namespace) -> Result:
    from active.project import Project, validate_class_name
    from active.taxonomy import alias_class, count_uses
    from storage.fields import DEFAULT_FIELD

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
    if field != DEFAULT_FIELD:
        raise UserError(f"`classes {args.action}` works on the default field {DEFAULT_FIELD!r} only (class aliases "
                        "are read by every field); nothing was changed")
    if args.action == "rename":
        project.check_class(args.old)
        new = validate_class_name(args.new)
        if new in classes:
            raise UserError(f"class {new!r} exists already: use `remove {args.old} --into {new}` to merge")
        n = alias_class(project, args.old, new)
        project.config.classes = [new if c == args.old else c for c in classes]
        project.save()
        return Result({"renamed": [args.old, new], "label_rows": n},
                      f"renamed {args.old!r} to {new!r}: {n} label rows read as {new!r} (none rewritten)")
    project.check_class(args.name)
    if args.into is not None:
        project.check_class(args.into)
        if args.into == args.name:
            raise UserError("--into must name another class")
        n = alias_class(project, args.name, args.into)
    else:
        n = count_uses(project).get(args.name, 0)
        if n:
            raise UserError(f"{n} labels use {args.name!r}: pass --into OTHER to merge them, nothing was changed")
    project.config.classes = [c for c in classes if c != args.name]
    project.save()
    text = f"removed {args.name!r}" + (f", merged into {args.into!r}: {n} label rows read as {args.into!r} "
                                       "(none rewritten)" if args.into else "")
    text += "\nmodel versions trained before still have an output for the old class: retrain to drop it"
    return Result({"removed": args.name, "into": args.into, "label_rows": n if args.into else 0}, text)
