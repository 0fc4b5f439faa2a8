"""Score the pool with the current model version (or --version ID): probabilities, predicted
class, uncertainty (confidence, margin, entropy) and penultimate embeddings for every readable
item it has not scored yet. Resumable: re-run after an interruption to continue. The first run of
a project publishes version 1, the pretrained backbone, and stores its embeddings."""

from __future__ import annotations

import argparse

from active.commands import Result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", type=int, metavar="ID", help="score with this version (default: the current one)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: 256 on GPU, 32 on CPU)")
    p.add_argument("--workers", type=int, help="decoding workers (default: one per core, at most 8)")
    p.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument("--retry-unreadable", action="store_true",
                   help="try again the items marked unreadable (e.g. after a share was remounted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> Result:
    from active.project import Project
    from active.scoring import score

    project = Project.load(args.project)
    retried = 0
    if args.retry_unreadable:
        from storage import db, items

        retried = db.write(project.engine, items.clear_unreadable)
    report = score(project, version_id=args.version, batch_size=args.batch_size, num_workers=args.workers,
                   device=args.device, progress=not args.no_progress and not args.json)
    lines = [f"{retried} items marked unreadable are tried again"] if args.retry_unreadable else []
    if report.published:
        lines.append(f"published version {report.version_id}: the pretrained {project.config.backbone} backbone")
    lines.append(f"version {report.version_id}: {report.scored} new predictions, {report.embedded} images "
                 f"through the network in {report.seconds:.1f} s ({report.images_per_s:.1f} images/s)")
    if report.failed:
        lines.append(f"{len(report.failed)} unreadable items marked (not retried):")
        lines += [f"  item {i}: {reason}" for i, reason in list(report.failed.items())[:50]]
    return Result(report.as_dict() | {"retried_unreadable": retried}, "\n".join(lines))
