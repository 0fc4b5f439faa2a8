"""The `active` command: `build_parser()` + `main(argv)`.

Each subcommand lives in `active/commands/<name>.py` with ``add_arguments(parser)`` and
``run(args) -> Result``. Those modules import torch only inside ``run``, so `active --help`
starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from active.commands import Result
from active.errors import UserError
from active.policy import NICE_ENV
from models import OFFLINE_ENV

# name -> one-line help. Order is the order of `active --help`.
COMMANDS: dict[str, str] = {
    "init": "create a project folder (active.toml, database, artifacts/)",
    "import": "import images: class folders, a flat folder, or a CSV/JSONL manifest",
    "status": "what the project holds: items, labels, classes, annotators, models, disputes",
    "classes": "list, add, rename or remove classes of the taxonomy (--field for another label field)",
    "fields": "list or add label fields (category, colour, ...): each with its own classes",
    "explain": "attribution map of an item (Grad-CAM, IG, Guided Backprop, Occlusion) as a picture",
    "users": "add or list the people who label (salted password hashes)",
    "serve": "start the labelling app in the browser",
    "score": "score the pool with the current model version (resumable)",
    "retrain": "train a new model version on the current labels (--mode head|full)",
    "export": "export the labelled dataset (imagefolder, csv, jsonl, hf) with provenance",
    "history": "every label of one item: the audit trail",
    "changes": "items whose current label changed since a date",
    "select": "open a round: queue the next batch to label (--strategy, --batch)",
    "loop": "one loop step for cron: score the pool, then open a round when the queue runs low",
    "disputes": "disputed labels for review: annotators disagree, the model disagrees (--refresh)",
    "simulate": "replay an imported labelled dataset to compare strategies (learning curves)",
    "worker": "run background jobs (scoring, retrains, disputes, exports) queued in the store",
    "jobs": "list, follow, cancel or queue background jobs",
}


def _module_name(command: str) -> str:
    return "active.commands." + command.replace("-", "_")


def _add_common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the defaults are SUPPRESS so a value given before the subcommand survives.
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--project", type=Path, metavar="DIR",
                        help="project folder (default: the current directory)", **default)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout", **default)
    parser.add_argument("--offline", action="store_true", help="never download pretrained weights (also: "
                        f"{OFFLINE_ENV}=1); a missing weights file is an error naming it", **default)


def _add_common_to_actions(parser: argparse.ArgumentParser) -> None:
    """Give nested actions (`classes add ...`) --project/--json too, so they work after them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_common(sub, top=False)
                _add_common_to_actions(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="active",
        description="Human-in-the-loop labelling and active learning for product photos.",
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(_module_name(name))
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        _add_common(p, top=False)
        module.add_arguments(p)
        _add_common_to_actions(p)
    return parser


def _print(result: Result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.data, ensure_ascii=False, default=str))
    elif result.text:
        print(result.text)


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.project = (args.project or Path.cwd()).absolute()
    if getattr(args, "offline", False):
        os.environ[OFFLINE_ENV] = "1"  # read where weights are resolved, and by the processes started
    if niceness := os.environ.pop(NICE_ENV, ""):  # a background retrain (active.policy): yield the CPU
        os.nice(int(niceness))
    module = importlib.import_module(_module_name(args.command))
    try:
        result = module.run(args)
    except UserError as exc:
        print(f"active {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        from storage.db import StoreError  # here, not at the top: `active --help` stays light

        if not isinstance(exc, StoreError):
            raise
        # The store failed (busy beyond the retries, server gone): not the user's input, no traceback.
        print(f"active {args.command}: database error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"active {args.command}: interrupted; finished work is saved, re-run to continue", file=sys.stderr)
        return 130
    _print(result, args.json)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
