"""Manage the people who label: `active users add NAME [--role annotator|reviewer] [--password P]`
and `active users list`. Passwords are stored as salted scrypt hashes only. Without --password the
password is asked for (twice) on a terminal, or read as one line from stdin otherwise."""

from __future__ import annotations

import argparse
import getpass
import sys

from active.commands import Result, table
from active.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user, or reset an existing user's password and role")
    add.add_argument("name")
    add.add_argument("--role", choices=["annotator", "reviewer"], default="annotator")
    add.add_argument("--password", help="the password (default: prompt, or one line from stdin)")
    sub.add_parser("list", help="list users and their roles")


def read_password(name: str) -> str:
    """Prompt twice on a terminal; otherwise take the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline()
    if not line:
        raise UserError("no password given: pass --password or write it on stdin")
    return line.rstrip("\r\n")


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from storage import db, users

    project = Project.load(args.project)
    if args.action == "list":
        with db.session(project.engine) as s:
            rows = [{"name": u.name, "role": u.role, "created": u.created_at.isoformat(timespec="seconds")}
                    for u in users.all_users(s)]
        text = table([[r["name"], r["role"], r["created"]] for r in rows], ["user", "role", "created"]) \
            if rows else "no users yet: add one with `active users add NAME`"
        return Result({"users": rows}, text)

    password = args.password if args.password is not None else read_password(args.name)
    try:
        users.check_name(args.name)
        user = db.write(project.engine, lambda s: users.add(s, args.name, password, role=args.role))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return Result({"name": user.name, "role": user.role}, f"user {user.name} ({user.role}) saved")
