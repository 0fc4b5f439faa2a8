"""Train a new model version on the current labels: `--mode head` fits a class-balanced linear
head on the cached embeddings (seconds on CPU); `--mode full` fine-tunes the whole network (GPU
when present). Labels are snapshotted at the start, the model is calibrated (temperature scaling
on a validation slice of the labelled pool), evaluated on the holdout split when there is one, and
published atomically; then the pool is scored with it (skip with --no-score)."""

from __future__ import annotations

import argparse

from active.commands import Result, table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["head", "full"], default="head", help="what to train (default: head)")
    p.add_argument("--epochs", type=int, help="full mode: epochs (default: [retrain] full_epochs of active.toml)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 128 on GPU, 32 on CPU)")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--workers", type=int, help="decoding workers (default: one per core, at most 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-score", action="store_true", help="do not score the pool with the new version")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _comparison(project, version, data: dict) -> list[str]:  # noqa: ANN001
    """Lines saying how the new version does against the previous one on the same holdout."""
    from active.retrain import compare_on_holdout

    cmp = compare_on_holdout(project, version)
    if cmp is None:
        return []
    data["compared_with"] = {"version": cmp.previous_id, "same_holdout": cmp.same_holdout,
                             "accuracy": cmp.previous.get("accuracy"), "macro_f1": cmp.previous.get("macro_f1"),
                             "worse": cmp.worse}
    how = "" if cmp.same_holdout else " (the holdout labels changed: re-evaluated from its stored predictions)"
    lines = [f"previous version {cmp.previous_id} on the same holdout{how}: accuracy {cmp.previous['accuracy']:.4f}  "
             f"macro-F1 {cmp.previous['macro_f1']:.4f}"]
    if cmp.worse:
        lines.append(f"warning: version {version.id} is worse than version {cmp.previous_id} on this holdout; "
                     f"it serves once it has scored the pool")
    return lines


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from active.retrain import retrain
    from active.scoring import score

    project = Project.load(args.project)
    progress = not args.no_progress and not args.json
    full = args.mode == "full"  # a fine-tune scores the pool itself, unless it is held back
    version = retrain(project, mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                      num_workers=args.workers, seed=args.seed, score_after=full and not args.no_score,
                      progress=progress)
    m = version.metrics
    lines = [f"published version {version.id} ({version.mode}, {version.backbone}) trained on {version.n_labels} "
             f"labels in {m.get('seconds', 0):.1f} s; temperature {m.get('temperature', 1.0):.3f}"]
    data = {"version": version.id, "mode": version.mode, "n_labels": version.n_labels, "metrics": m}
    hold = m.get("holdout")
    if hold:
        lines.append(f"holdout ({hold['n']} items): accuracy {hold['accuracy']:.4f}  macro-F1 {hold['macro_f1']:.4f}  "
                     f"ECE {hold['ece']:.4f}")
        lines.append(table([[c, r] for c, r in hold["per_class_recall"].items()], ["class", "recall"]))
        lines += _comparison(project, version, data)
    else:
        lines.append("no labelled holdout items: import some with `active import DIR --split holdout`")
    for name, fm in (m.get("fields") or {}).items():
        fh = fm.get("holdout")
        if "skipped" in fm:
            lines.append(f"field {name}: no {'head' if version.mode == 'head' else 'output'} ({fm['skipped']})")
        elif fh:
            lines.append(f"field {name}: holdout ({fh['n']} items) accuracy {fh['accuracy']:.4f}  "
                         f"macro-F1 {fh['macro_f1']:.4f}  ECE {fh['ece']:.4f}")
        else:
            lines.append(f"field {name}: trained on {fm.get('n_labels', 0)} labels; no labelled holdout items")
    trust = m.get("trust")
    if trust:
        lines.append(f"trained on {trust['trained_on']['review']} review, {trust['trained_on']['human']} human and "
                     f"{trust['trained_on']['imported']} imported labels; left out "
                     f"{trust['left_out_suspect_imported']} suspect imported labels")
    if full:
        lines.append(m.get("serving", {}).get("reason", ""))
    if not args.no_score and not full:
        report = score(project, version_id=version.id, batch_size=args.batch_size, num_workers=args.workers,
                       device=args.device, progress=progress)
        data["score"] = report.as_dict()
        lines.append(f"scored {report.scored} items with version {version.id} in {report.seconds:.1f} s")
    return Result(data, "\n".join(lines))
