"""Items whose current label changed since a date: the label derived from the rows written before
DATE is compared with the label now (a change and its reversal cancel out; undos count from when
they were written). DATE is an ISO date or datetime; without a time zone it is UTC."""

from __future__ import annotations

import argparse

from active.commands import Result, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", required=True, metavar="DATE", help="e.g. 2024-05-01 or 2024-05-01T14:30+02:00")
    p.add_argument("--field", help="the label field to compare (default: category)")


def run(args: argparse.Namespace) -> Result:
    from active.history import changes, parse_since
    from active.project import Project

    since = parse_since(args.since)
    project = Project.load(args.project)
    field = project.check_field(args.field) if args.field else project.field_names[0]
    found = changes(project, since, field=field)

    def fmt(cur) -> str:  # noqa: ANN001
        return "-" if cur is None else f"{cur.label} ({cur.source})"

    data = {"since": since.isoformat(), "field": field, "changed": [c.to_dict() for c in found]}
    if not found:
        return Result(data, f"no label changed since {since.isoformat()}")
    rows = [[c.item_id, fmt(c.before), fmt(c.after), c.changed_at.isoformat(timespec="seconds"), c.by, c.path]
            for c in found]
    text = f"{len(found)} items changed label since {since.isoformat()}\n\n" + table(
        rows, ["item", "before", "now", "changed at", "by", "path"])
    return Result(data, text)
