"""Disputed items, most suspect first, each with its reason: annotators who disagree, and labels
a cross-validated head confidently contradicts (model_disagrees for human labels,
imported_label_suspect for imported ones, or ones people contradicted). Suspect holdout labels
are a list of their own (--holdout): settling them changes the evaluation set. --refresh recomputes them from the current labels
and the current version's cached embeddings, for every label field (--field lists one). Disputes
go to human review (the Review tab); nothing is relabelled automatically."""

from __future__ import annotations

import argparse

from active.commands import Result, table
from active.disputes import RULES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refresh", action="store_true", help="recompute the open disputes first")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="disputes to list (default: 20)")
    p.add_argument("--reason", choices=[n for n, r in RULES.items() if r.queue == "pool"],
                   help="only this reason: " + "; ".join(f"{n} = {r.help}" for n, r in RULES.items()
                                                          if r.queue == "pool"))
    p.add_argument("--field", help="only the disputes of this label field (default: every field)")
    p.add_argument("--holdout", action="store_true",
                   help="list the holdout's suspect labels instead (holdout_label_suspect: never in the review queue)")


def _detail_text(d) -> str:  # noqa: ANN001
    det = d.detail or {}
    if d.reason == "annotators_disagree":
        return ", ".join(f"{a}: {c}" for a, c in det.get("labels", {}).items())
    if det.get("source") == "people":
        return f"given {det.get('given')}, people say {det.get('people_say')}"
    if "given" in det:
        return f"given {det['given']} ({det.get('p_given', 0):.2f}), model says {det['suggested']} ({det.get('p_suggested', 0):.2f})"
    return ""


def run(args: argparse.Namespace) -> Result:
    from active.disputes import refresh
    from active.errors import UserError
    from active.project import Project
    from storage import db
    from storage import disputes as store

    if args.limit < 0:
        raise UserError("--limit must be 0 or more")
    project = Project.load(args.project)
    data: dict = {}
    lines: list[str] = []
    if args.refresh:
        rep = refresh(project)
        data["refresh"] = {"open": rep.counts, "checked": rep.checked, "version": rep.version_id,
                           "estimated_noise_rate": rep.noise_rate, "skipped": rep.skipped, "by_field": rep.by_field}
        lines += rep.skipped
        lines.append("refreshed: " + ", ".join(f"{n} {r}" for r, n in rep.counts.items())
                     + (f" (model checked {rep.checked} labels with version {rep.version_id}; estimated "
                        f"{rep.noise_rate:.1%} wrong)" if rep.noise_rate is not None else ""))
        for name, got in list(rep.by_field.items())[1:]:
            lines.append(f"field {name}: " + ", ".join(f"{n} {r}" for r, n in got["counts"].items())
                         + (f" (model checked {got['checked']} labels; estimated {got['noise_rate']:.1%} wrong)"
                            if got["noise_rate"] is not None else ""))
    field = project.check_field(args.field) if args.field else None
    with db.session(project.engine) as s:
        queue = "holdout" if args.holdout else "pool"
        rows = store.open_disputes(s, reason=args.reason, limit=args.limit, queue=queue, field=field)
        total = len(store.open_disputes(s, reason=args.reason, queue=queue, field=field))
    data["open"] = total
    data["disputes"] = [{"id": d.id, "item_id": d.item_id, "field": d.field, "reason": d.reason, "score": d.score,
                         "detail": d.detail} for d in rows]
    if rows:
        lines.append(table([[d.id, d.item_id, d.field, d.reason, d.score, _detail_text(d)] for d in rows],
                           ["dispute", "item", "field", "reason", "score", "detail"]))
        if total > len(rows):
            lines.append(f"... {total - len(rows)} more open (raise --limit)")
    else:
        lines.append("no open disputes" + ("" if args.refresh else " (run with --refresh to compute them)"))
    return Result(data, "\n".join(lines))
