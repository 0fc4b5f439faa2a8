"""Open a round: pick the next batch of unlabelled pool items with a strategy and queue them,
most useful first, each with the score that picked it. Annotators are then handed the round's
items in that order. Without a trained head (only the pretrained backbone) the round is
kcenter on its embeddings; with no model at all, random."""

from __future__ import annotations

import argparse

from active.commands import Result, table
from active.strategies import DEFAULT_STRATEGY, REGISTRY

SHOWN = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, metavar="NAME",
                   help="; ".join(f"{s.name} = {s.help}" for s in REGISTRY.values())
                   + f" (default: {DEFAULT_STRATEGY})")
    p.add_argument("--batch", type=int, default=50, metavar="N", help="items to queue (default: 50)")
    p.add_argument("--field", help="target one label field (default: all; an item's uncertainty is its most "
                                   "uncertain undecided field's)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--force", action="store_true", help="open a round even while another is open")
    what.add_argument("--close-open", action="store_true",
                      help="close the open rounds first (their unhandled items become candidates again)")


def describe(rnd, project) -> tuple[dict, str]:  # noqa: ANN001
    """The round as data and text (shared with `active loop`)."""
    from storage import db, work

    with db.session(project.engine) as s:
        queue = work.queue(s, rnd.id)
    data = {"round": rnd.id, "strategy": rnd.strategy, "model_version": rnd.model_version_id, "queued": len(queue),
            "items": [{"item_id": q.item_id, "priority": q.priority, "score": q.score, "score_name": q.score_name}
                      for q in queue]}
    text = (f"opened round {rnd.id}: {len(queue)} items by {rnd.strategy}"
            + (f" (model version {rnd.model_version_id})" if rnd.model_version_id else " (no model yet)"))
    rows = [[q.priority, q.item_id, q.score_name, q.score] for q in queue[:SHOWN]]
    if rows:
        text += "\n" + table(rows, ["priority", "item", "score", "value"])
        if len(queue) > SHOWN:
            text += f"\n... and {len(queue) - SHOWN} more (use --json for all)"
    return data, text


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from active.selection import select_round

    project = Project.load(args.project)
    rnd = select_round(project, strategy=args.strategy, batch=args.batch, force=args.force, field=args.field,
                       close_open=args.close_open)
    data, text = describe(rnd, project)
    if rnd.strategy != args.strategy:
        note = f"{args.strategy} needs model scores this version does not have: used {rnd.strategy} instead"
        data["requested_strategy"] = args.strategy
        text = note + "\n" + text
    return Result(data, text)
