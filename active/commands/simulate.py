"""Replay a labelled project as the oracle to compare strategies: from a random initial set,
rounds of --batch up to --budget per strategy and seed, refitting the head on the current
version's cached embeddings each round and measuring accuracy on the holdout split. Pool items'
imported labels are the oracle (run `active score` once first). Writes the learning curves (CSV),
a plot (PNG) and a summary (JSON) under artifacts/simulations/ and prints, per strategy, the
labels at which it first reaches random's accuracy at the full budget. --noise R flips a share R
of the oracle's labels and reports the disputes detector's precision and recall on the flips.
--field replays another label field (its imported labels, holdout labels and classes)."""

from __future__ import annotations

import argparse

from active.commands import Result, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategies", default="random,hybrid", metavar="A,B",
                   help="comma-separated strategies (random is always run: it sets the target)")
    p.add_argument("--init", type=int, default=50, help="random initial labels (default: 50)")
    p.add_argument("--batch", type=int, default=50, help="labels per round (default: 50)")
    p.add_argument("--budget", type=int, default=1000, help="labels in all (default: 1000)")
    p.add_argument("--seeds", type=int, default=3, help="repetitions with different seeds (default: 3)")
    p.add_argument("--noise", type=float, default=0.0, help="share of oracle labels to flip, e.g. 0.1 (default: 0)")
    p.add_argument("--field", default=None, help="the label field to replay (default: category, the default field)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Result:
    from active import strategies
    from active.errors import UserError
    from active.project import Project
    from active.simulate import simulate_project

    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    if not names:
        raise UserError("--strategies needs at least one name")
    for name in names:
        try:
            strategies.get(name)
        except strategies.UnknownStrategyError as exc:
            raise UserError(str(exc)) from None
    if args.init < 1 or args.batch < 1 or args.seeds < 1 or args.budget < args.init:
        raise UserError("need --init >= 1, --batch >= 1, --seeds >= 1 and --budget >= --init")
    if not 0.0 <= args.noise < 1.0:
        raise UserError("--noise must be in [0, 1)")
    project = Project.load(args.project)
    try:
        _result, summary = simulate_project(project, strategy_names=names, init=args.init, batch=args.batch,
                                            budget=args.budget, seeds=args.seeds, noise=args.noise,
                                            progress=not args.no_progress and not args.json, field=args.field)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    rows = [[name, s["final_accuracy"], s["final_accuracy_std"], s["area_under_curve"],
             s["labels_to_reach_target"] if s["labels_to_reach_target"] is not None else "never"]
            for name, s in summary["strategies"].items()]
    lines = [
        f"field {summary['field']}: {summary['pool_items']} pool items (oracle: imported labels{f', {args.noise:.0%} flipped' if args.noise else ''}), "
        f"{summary['test_items']} holdout items, version {summary['version_id']} embeddings; "
        f"init {args.init}, batch {args.batch}, budget {summary['budget']}, {args.seeds} seeds; {summary['seconds']} s",
        f"target: random's mean accuracy at {summary['budget']} labels = {summary['target_accuracy']:.4f}",
        table(rows, ["strategy", f"acc@{summary['budget']}", "std", "mean acc (AUC)", "labels to reach target"]),
    ]
    if "disputes" in summary:
        m = summary["disputes"]["mean"]
        lines.append(f"disputes detector vs injected flips (mean of {args.seeds} seeds): average precision "
                     f"{m['average_precision']:.3f}, flagged precision {m['precision']:.3f}, recall {m['recall']:.3f}")
        lines.append(table([[d["seed"], d["errors"], d["flagged"], d["average_precision"], d["precision"], d["recall"]]
                            for d in summary["disputes"]["per_seed"]],
                           ["seed", "flips", "flagged", "AP", "precision", "recall"]))
    lines += [f"curves: {summary['csv']}", f"plot: {summary['plot']}", f"summary: {summary['summary']}"]
    return Result(summary, "\n".join(lines))
