"""Show what the project holds: items by split, labelled and unlabelled, labels per class and
per annotator, model versions with their holdout metrics, open rounds, open disputes and a running fine-tune."""

from __future__ import annotations

import argparse
from collections import Counter

from active.commands import Result, table
from active.policy import describe_progress, fine_tune_progress


def add_arguments(p: argparse.ArgumentParser) -> None:
    del p  # no options beyond --project and --json


def collect(project) -> dict:  # noqa: ANN001
    """The status report as a JSON-able dict (also used by the labeller's dashboard).

    Every figure follows `storage.meaning`: a split's ``labelled`` items carry a person's class
    label that still counts (``given_only`` items only an imported one); per annotator, only
    effective decisions are counted (an undone one is not); per open round, its items by state;
    ``current_version`` is the serving version; ``on_page``: per annotator, their effective
    human labels given on a page of the Grid tab (a part of their accepted + corrected).
    ``fields``: per label field, its items labelled (in all and per split) and per class by source,
    its annotators' decisions about it (and their labels on a page), its open disputes and the
    serving version's holdout figures for it; ``done``: items labelled in every field. Per open
    round, ``labelled`` counts the items labelled in every field (with several fields,
    ``by_field`` those labelled in each). The split and class figures above ``fields`` are the
    default field's; ``annotators`` and ``on_page`` count the decisions about every field."""
    from active.retrain import holdout_hash
    from storage import db, items, labels, pages, versions, work
    from storage import disputes as store_disputes
    from storage.enums import Source, Split
    from storage.fields import field_metrics

    with db.session(project.engine) as s:
        splits = items.count_by_split(s)
        unreadable = items.count_unreadable(s)
        split_of = items.splits(s)
        current = labels.current(s)
        labelled = labels.labelled_by_split(s)
        annotators = labels.decisions_by_annotator(s)
        on_page = pages.page_label_counts(s)
        vlist = versions.all_versions(s)
        serving = versions.serving(s)
        disputes = store_disputes.count_open(s)
        field_disputes = store_disputes.count_open_by_field(s)
        several = len(project.field_names) > 1
        fields = {f: {"labelled": labels.count_labelled(s, f),
                      "current": current if f == project.field_names[0] else labels.current(s, field=f),
                      "by_split": labels.labelled_by_split(s, f) if several else labelled,
                      "annotators": labels.decisions_by_annotator(s, field=f) if several else annotators,
                      "on_page": pages.page_label_counts(s, f) if several else on_page}
                  for f in project.field_names}
        done = labels.count_done(s, project.field_names)
        rounds = [{"id": r.id, "strategy": r.strategy,
                   **work.round_progress(s, r.id, project.field_names, per_field=True).to_dict()} for r in work.open_rounds(s)]
    holdout = holdout_hash(project)

    per_split = {}
    for split in Split:
        total = splits.get(split, 0)
        given_only = sum(1 for i, c in current.items() if split_of.get(i) == split and c.source == Source.IMPORTED)
        n_labelled = labelled.get(split, 0)  # not `done`: that is the items labelled in every field
        per_split[split] = {"items": total, "labelled": n_labelled, "given_only": given_only,
                            "unlabelled": total - n_labelled - given_only}
    by_class: dict[str, Counter] = {c: Counter() for c in project.config.classes}
    for cur in current.values():
        by_class.setdefault(cur.label, Counter())[cur.source] += 1
    per_field = {}
    for f, got in fields.items():
        counts: dict[str, Counter] = {c: Counter() for c in project.classes_of(f)}
        for cur in got["current"].values():
            counts.setdefault(cur.label, Counter())[cur.source] += 1
        holdout_m = field_metrics(serving.metrics if serving else None, f).get("holdout") or {}
        per_field[f] = {"labelled": got["labelled"], "open_disputes": field_disputes.get(f, {}),
                        "labelled_by_split": {split: got["by_split"].get(split, 0) for split in Split},
                        "annotators": {a: dict(c) for a, c in got["annotators"].items()}, "on_page": got["on_page"],
                        "classes": {c: dict(cnt) | {"total": sum(cnt.values())} for c, cnt in counts.items()},
                        "holdout": {k: holdout_m.get(k) for k in ("n", "accuracy", "macro_f1", "ece")}
                        if holdout_m else None}
    return {
        "project": str(project.root),
        "backbone": project.config.backbone,
        "items": per_split,
        "unreadable": unreadable,
        "classes": {c: dict(cnt) | {"total": sum(cnt.values())} for c, cnt in by_class.items()},
        "annotators": {a: dict(c) for a, c in annotators.items()},
        "on_page": on_page,
        "model_versions": [
            {"id": v.id, "mode": v.mode, "backbone": v.backbone, "n_labels": v.n_labels,
             "parent": v.parent_id, "created": v.created_at.isoformat(timespec="seconds"), "metrics": v.metrics,
             "same_holdout": same_holdout(v.metrics, holdout)}
            for v in vlist
        ],
        "current_version": serving.id if serving else None,
        "newest_version": vlist[-1].id if vlist else None,
        "holdout_labels_sha256": holdout,
        "open_rounds": rounds,
        "open_disputes": disputes,
        "fields": per_field,
        "done": done,
        "fine_tune": fine_tune_progress(project),
    }


def same_holdout(metrics: dict | None, holdout: str) -> bool | None:
    """Whether a version's holdout figures were measured on today's holdout labels (None: it has none)."""
    metrics = metrics or {}
    if not (metrics.get("holdout") or {}).get("n"):
        return None
    return metrics.get("holdout_labels_sha256") == holdout


def annotator_rows(st: dict) -> list[list]:
    """One row per annotator: effective decisions in all, then by decision (shared with the dashboard)."""
    on_page = st.get("on_page", {})
    return [[a, sum(c.values()), c.get("accepted", 0), c.get("corrected", 0), c.get("unsure", 0),
             c.get("skipped", 0), c.get("resolved", 0), on_page.get(a, 0)] for a, c in st["annotators"].items()]


ANNOTATOR_HEADERS = ["annotator", "decisions", "accepted", "corrected", "unsure", "skipped", "resolved", "on a page"]


def _several(st: dict) -> dict:
    """The per-field figures when the project has several label fields, else {}."""
    fields = st.get("fields") or {}
    return fields if len(fields) > 1 else {}


def annotator_table(st: dict) -> tuple[list[list], list[str]]:
    """(rows, headers) of decisions per annotator: `annotator_rows`, or with several label fields
    one row per annotator and field (a decision is about one field of an item)."""
    fields = _several(st)
    if not fields:
        return annotator_rows(st), ANNOTATOR_HEADERS
    rows = [[row[0], f, *row[1:]] for f, v in fields.items()
            for row in annotator_rows({"annotators": v["annotators"], "on_page": v["on_page"]})]
    return sorted(rows, key=lambda r: r[0]), [ANNOTATOR_HEADERS[0], "field", *ANNOTATOR_HEADERS[1:]]


def class_rows(st: dict) -> list[list]:
    """One row per class: items whose current label it is, by source (shared with the dashboard)."""
    return [[c, v["total"], v.get("review", 0), v.get("consensus", 0) + v.get("single", 0), v.get("imported", 0)]
            for c, v in st["classes"].items()]


# Items whose current label is the class, and where that label came from ("labelled" is a split
# figure: an item a person gave a class; an imported label alone is not that).
CLASS_HEADERS = ["class", "items (current label)", "review", "human", "imported"]


def class_table(st: dict) -> tuple[list[list], list[str]]:
    """(rows, headers) of items per class: `class_rows` of the default field, or with several
    label fields one row per field and class."""
    fields = _several(st)
    if not fields:
        return class_rows(st), CLASS_HEADERS
    return [[f, *row] for f, v in fields.items() for row in class_rows(v)], ["field", *CLASS_HEADERS]


def round_line(r: dict) -> str:
    """"open round 3 (margin): 25 / 100 labelled, 2 skipped, 1 unsure" (also the Label tab's
    wording); with several fields "labelled" is in every field, then per field."""
    per_field = r.get("by_field") or {}
    each = f" ({', '.join(f'{f} {n}' for f, n in per_field.items())})" if per_field else ""
    return (f"open round {r['id']} ({r['strategy']}): {r['labelled']} / {r['total']} labelled{each}, "
            f"{r['skipped']} skipped, {r['unsure']} unsure")


def render(st: dict) -> str:
    out = [f"project {st['project']}  (backbone {st['backbone']})", ""]
    out.append(table([[k, v["items"], v["labelled"], v["given_only"], v["unlabelled"]] for k, v in st["items"].items()],
                     ["split", "items", "labelled", "given label only", "unlabelled"]))
    if st["unreadable"]:
        out.append(f"unreadable items (skipped by scoring): {st['unreadable']}")
    out += ["", table(*class_table(st))]
    if st["annotators"]:
        out += ["", table(*annotator_table(st))]
    if st["model_versions"]:
        rows = []
        for v in st["model_versions"]:
            m = v["metrics"].get("holdout", {}) if isinstance(v["metrics"], dict) else {}
            mark = (" *" if v["id"] == st["current_version"] else "") + (" †" if v["same_holdout"] is False else "")
            rows.append([f"v{v['id']}{mark}", v["mode"], v["n_labels"], m.get("accuracy"), m.get("macro_f1"),
                         m.get("ece"), v["created"]])
        out += ["", table(rows, ["model", "mode", "labels", "holdout acc", "macro-F1", "ECE", "created"])]
        if any(v["same_holdout"] is False for v in st["model_versions"]):
            out.append("† evaluated on earlier holdout labels (they changed since): not comparable with the others")
        if st["newest_version"] != st["current_version"]:
            out.append(f"* serves; v{st['newest_version']} serves once it has scored every pool item "
                       "(run `active score`)")
    else:
        out += ["", "no model version yet (run `active score`)"]
    for r in st["open_rounds"]:
        out.append(round_line(r))
    if len(st.get("fields", {})) > 1:
        rows = [[f, v["labelled"], len(v["classes"]), (v["holdout"] or {}).get("accuracy"),
                 (v["holdout"] or {}).get("macro_f1"), sum(v["open_disputes"].values())]
                for f, v in st["fields"].items()]
        out += ["", table(rows, ["field", "labelled", "classes", "holdout acc", "macro-F1", "open disputes"]),
                f"done (labelled in every field): {st['done']}"]
    if st["open_disputes"]:
        out.append("open disputes: " + ", ".join(f"{n} {k}" for k, n in st["open_disputes"].items()))
    if st.get("fine_tune"):
        out.append(describe_progress(st["fine_tune"]))
    return "\n".join(out)


def run(args: argparse.Namespace) -> Result:
    from active.project import Project

    st = collect(Project.load(args.project))
    return Result(st, render(st))
