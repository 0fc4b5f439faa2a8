"""Manage the people who label: `active users add NAME [--role annotator|reviewer]`, `passwd NAME`,
`disable NAME`, `enable NAME` and `list`. Passwords are stored as salted scrypt hashes only and
never taken from the command line (where `ps` and shell history would show them): they are asked
for (twice) on a terminal, or read as one line from stdin otherwise. A new password or a disabled
account ends that user's open sessions in the labeller within seconds."""

from __future__ import annotations

import argparse
import getpass
import sys

from active.commands import Result, table
from active.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user, or reset an existing user's password and role "
                                     "(password: prompt, or one line from stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=["annotator", "reviewer"], default="annotator")
    passwd = sub.add_parser("passwd", help="set a new password (prompt, or one line from stdin); "
                                           "the user's open sessions end")
    passwd.add_argument("name")
    for action, what in (("disable", "refuse sign-in and end the user's open sessions"),
                         ("enable", "allow a disabled user to sign in again")):
        sub.add_parser(action, help=what).add_argument("name")
    sub.add_parser("list", help="list users, their roles and whether they are disabled")


def read_password(name: str) -> str:
    """Prompt twice on a terminal; otherwise take the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise UserError("the two passwords differ; nothing was changed")
        return first
    line = sys.stdin.readline()
    if not line:
        raise UserError("no password given: type it at the prompt or write it on stdin")
    return line.rstrip("\r\n")


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from storage import db, users

    project = Project.load(args.project)
    if args.action == "list":
        with db.session(project.engine) as s:
            rows = [{"name": u.name, "role": u.role, "disabled": u.disabled,
                     "created": u.created_at.isoformat(timespec="seconds")} for u in users.all_users(s)]
        text = table([[r["name"], r["role"], "disabled" if r["disabled"] else "", r["created"]] for r in rows],
                     ["user", "role", "state", "created"]) \
            if rows else "no users yet: add one with `active users add NAME`"
        return Result({"users": rows}, text)

    try:
        users.check_name(args.name)
        if args.action == "add":
            password = users.check_password(read_password(args.name))
            user = db.write(project.engine, lambda s: users.add(s, args.name, password, role=args.role))
            return Result({"name": user.name, "role": user.role}, f"user {user.name} ({user.role}) saved")
        if args.action == "passwd":
            with db.session(project.engine) as s:
                if users.get(s, args.name) is None:  # ask for no password for a user that is not there
                    raise ValueError(f"no user {args.name!r}: see `active users list`")
            password = users.check_password(read_password(args.name))
            user = db.write(project.engine, lambda s: users.set_password(s, args.name, password))
            return Result({"name": user.name}, f"new password for {user.name}; their open sessions end")
        disabled = args.action == "disable"
        user = db.write(project.engine, lambda s: users.set_disabled(s, args.name, disabled))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    what = "disabled; their open sessions end" if disabled else "enabled"
    return Result({"name": user.name, "disabled": user.disabled}, f"user {user.name} {what}")
