"""One step of the active-learning loop, for cron or a script: close finished rounds, score the
pool with the current model (items not scored yet), and open a new round when fewer than
--batch queued items are still waiting for a label (so repeated runs do not pile rounds up)."""

from __future__ import annotations

import argparse

from active.commands import Result
from active.strategies import DEFAULT_STRATEGY, REGISTRY


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", default=DEFAULT_STRATEGY, metavar="NAME",
                   help=f"one of {', '.join(REGISTRY)} (default: {DEFAULT_STRATEGY})")
    p.add_argument("--batch", type=int, default=50, metavar="N", help="items per round (default: 50)")
    p.add_argument("--device", help="cpu, cuda, ... for scoring (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Result:
    from active.commands.select import describe
    from active.project import Project
    from active.scoring import score
    from active.selection import close_finished_rounds, queued_left, select_round

    project = Project.load(args.project)
    closed = close_finished_rounds(project)
    report = score(project, device=args.device, progress=not args.no_progress and not args.json)
    lines = [f"closed rounds: {', '.join(map(str, closed))}"] if closed else []
    lines.append(f"scored {report.scored} new items with version {report.version_id}")
    data = {"closed_rounds": closed, "score": report.as_dict(), "round": None}
    waiting = queued_left(project)
    if waiting >= args.batch:
        lines.append(f"{waiting} queued items still wait for a label: no new round")
    else:
        # Fewer than --batch items wait: topping the queue up beside the open round is the point of loop.
        rnd = select_round(project, strategy=args.strategy, batch=args.batch, force=True)
        round_data, text = describe(rnd, project)
        data["round"] = round_data
        lines.append(text)
    data["waiting"] = waiting
    return Result(data, "\n".join(lines))
