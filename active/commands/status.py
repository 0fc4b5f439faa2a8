"""Show what the project holds: items by split, labelled and unlabelled, labels per class and
per annotator, model versions with their holdout metrics, open rounds and open disputes."""

from __future__ import annotations

import argparse
from collections import Counter

from active.commands import Result, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # no options beyond --project and --json


def collect(project) -> dict:  # noqa: ANN001
    """The status report as a JSON-able dict (also used by the labeller's dashboard)."""
    from sqlalchemy import func
    from sqlmodel import select

    from storage import db, labels, pages, versions, work
    from storage.tables import Dispute, Item, Label

    with db.session(project.engine) as s:
        splits = dict(s.exec(select(Item.split, func.count()).group_by(Item.split)).all())
        unreadable = s.exec(select(func.count()).where(Item.error.is_not(None))).one()
        split_of = dict(s.exec(select(Item.id, Item.split)).all())
        current = labels.current(s)
        annot = s.exec(
            select(Label.annotator, Label.decision, func.count())
            .where(Label.kind != "imported").group_by(Label.annotator, Label.decision)
        ).all()
        on_page = pages.page_label_counts(s)
        vlist = versions.all_versions(s)
        disputes = dict(s.exec(select(Dispute.reason, func.count()).where(Dispute.status == "open")
                               .group_by(Dispute.reason)).all())
        rounds = [{"id": r.id, "strategy": r.strategy, "progress": list(work.round_progress(s, r.id))}
                  for r in work.open_rounds(s)]

    per_split = {}
    for split in ("pool", "holdout"):
        total = splits.get(split, 0)
        labelled = sum(1 for i in current if split_of.get(i) == split)
        per_split[split] = {"items": total, "labelled": labelled, "unlabelled": total - labelled}
    by_class: dict[str, Counter] = {c: Counter() for c in project.config.classes}
    for cur in current.values():
        by_class.setdefault(cur.label, Counter())[cur.source] += 1
    annotators: dict[str, Counter] = {}
    for name, decision, n in annot:
        annotators.setdefault(name, Counter())[decision] += n
    for name, n in on_page.items():  # human labels given on a page (Grid tab), a part of "accepted"/"corrected"
        annotators.setdefault(name, Counter())["on_page"] = n
    return {
        "project": str(project.root),
        "backbone": project.config.backbone,
        "items": per_split,
        "unreadable": unreadable,
        "classes": {c: dict(cnt) | {"total": sum(cnt.values())} for c, cnt in by_class.items()},
        "annotators": {a: dict(c) for a, c in annotators.items()},
        "model_versions": [
            {"id": v.id, "mode": v.mode, "backbone": v.backbone, "n_labels": v.n_labels,
             "parent": v.parent_id, "created": v.created_at.isoformat(timespec="seconds"), "metrics": v.metrics}
            for v in vlist
        ],
        "current_version": vlist[-1].id if vlist else None,
        "open_rounds": rounds,
        "open_disputes": disputes,
    }


def render(st: dict) -> str:
    out = [f"project {st['project']}  (backbone {st['backbone']})", ""]
    out.append(table([[k, v["items"], v["labelled"], v["unlabelled"]] for k, v in st["items"].items()],
                     ["split", "items", "labelled", "unlabelled"]))
    if st["unreadable"]:
        out.append(f"unreadable items (skipped by scoring): {st['unreadable']}")
    out += ["", table([[c, v["total"], v.get("review", 0), v.get("consensus", 0) + v.get("single", 0),
                        v.get("imported", 0)] for c, v in st["classes"].items()],
                      ["class", "labelled", "review", "human", "imported"])]
    if st["annotators"]:
        out += ["", table([[a, sum(v for k, v in c.items() if k not in ("undo", "on_page")), c.get("accepted", 0),
                            c.get("corrected", 0), c.get("unsure", 0), c.get("skipped", 0), c.get("resolved", 0),
                            c.get("on_page", 0)]
                           for a, c in st["annotators"].items()],
                          ["annotator", "labels", "accepted", "corrected", "unsure", "skipped", "resolved",
                           "on a page"])]
    if st["model_versions"]:
        rows = []
        for v in st["model_versions"]:
            m = v["metrics"].get("holdout", {}) if isinstance(v["metrics"], dict) else {}
            rows.append([f"v{v['id']}" + (" *" if v["id"] == st["current_version"] else ""), v["mode"],
                         v["n_labels"], m.get("accuracy"), m.get("macro_f1"), m.get("ece"), v["created"]])
        out += ["", table(rows, ["model", "mode", "labels", "holdout acc", "macro-F1", "ECE", "created"])]
    else:
        out += ["", "no model version yet (run `active score`)"]
    for r in st["open_rounds"]:
        out.append(f"open round {r['id']} ({r['strategy']}): {r['progress'][0]} / {r['progress'][1]} labelled")
    if st["open_disputes"]:
        out.append("open disputes: " + ", ".join(f"{n} {k}" for k, n in st["open_disputes"].items()))
    return "\n".join(out)


def run(args: argparse.Namespace) -> Result:
    from active.project import Project

    st = collect(Project.load(args.project))
    return Result(st, render(st))
