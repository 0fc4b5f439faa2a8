"""Every label row of one item, oldest first: who, when, kind, decision, class, the suggestion
shown and its confidence, the model version, the round, and whether it was undone. ITEM is an
item id, a sha256 (or a unique prefix) or the image's path."""

from __future__ import annotations

import argparse

from active.commands import Result, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("item", metavar="ITEM", help="item id, sha256 (prefix) or image path")


def render(h: dict) -> str:
    item, cur = h["item"], h["current"]
    out = [f"item {item['id']}  {item['path']}", f"  sha256 {item['sha256']}  split {item['split']}"]
    if cur is None:
        out.append("  current label: none")
    else:
        agree = "" if cur["agreement"] is None else f", agreement {cur['agreement']:.2f} of {cur['n_human']}"
        out.append(f"  current label: {cur['label']} ({cur['source']}{agree}; decided by row {cur['label_id']})")
    for name, other in list(h.get("current_by_field", {}).items())[1:]:  # the default field's is above
        out.append(f"  {name}: {other['label']} ({other['source']})" if other else f"  {name}: none")
    several = len(h.get("current_by_field", {})) > 1
    if not h["labels"]:
        return "\n".join([*out, "", "no label rows"])
    rows = []
    for r in h["labels"]:
        sugg = "" if r["suggestion"] is None else r["suggestion"] + (
            "" if r["confidence"] is None else f" ({r['confidence']:.2f})")
        state = f"undone by {r['undone_by']}" if r["undone_by"] else (f"undoes {r['undoes']}" if r["undoes"] else "")
        rows.append([r["id"], r["created_at"][:19].replace("T", " "), r["annotator"], r["kind"], r["decision"],
                     r["label"] or "", sugg, "" if r["model_version"] is None else f"v{r['model_version']}",
                     r["round"], state] + ([r["field"]] if several else []))
    header = ["row", "time (UTC)", "who", "kind", "decision", "class", "suggestion", "model", "round", "undone"]
    header += ["field"] if several else []
    return "\n".join([*out, "", table(rows, header)])


def run(args: argparse.Namespace) -> Result:
    from active.history import history
    from active.project import Project

    h = history(Project.load(args.project), args.item)
    return Result(h, render(h))
