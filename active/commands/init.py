"""Create a project folder: active.toml (taxonomy, backbone, image size, retrain policy, db url),
the database, artifacts/ and exports/. The taxonomy comes from --classes, from --preset, or is
inferred from folder names at the first import."""

from __future__ import annotations

import argparse
from pathlib import Path

from active.backbones import REGISTRY, default_weights
from active.commands import Result
from active.errors import UserError
from active.project import (
    CONFIG_NAME,
    DEFAULT_BACKBONE,
    DEFAULT_DB,
    DEFAULT_WEIGHTS,
    PRESETS,
    Config,
    Project,
    parse_classes,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", type=Path, help="project folder to create (default: --project or cwd)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="any torchvision classifier name; known well: "
                        + "; ".join(f"{b.name} ({b.note})" for b in REGISTRY.values())
                        + f" (default: {DEFAULT_BACKBONE})")
    p.add_argument("--weights",
                   help="torchvision weights name, a .pth file, or 'none' (default: the backbone's own, "
                        f"{DEFAULT_WEIGHTS} for {DEFAULT_BACKBONE})")
    p.add_argument("--db", default=DEFAULT_DB,
                   help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: active.db in DIR)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classes", help="comma-separated class names")
    group.add_argument("--preset", choices=sorted(PRESETS), help="a built-in taxonomy")
    p.add_argument("--image-size", type=int, default=224, help="network input size (default: 224)")


def run(args: argparse.Namespace) -> Result:
    from storage.db import StoreError, create_schema, describe_error, make_engine, safe_url

    root = (args.dir or args.project).absolute()
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} exists and is not a folder: choose another project folder")
    if (root / CONFIG_NAME).exists():
        raise UserError(f"{root / CONFIG_NAME} already exists: this folder is a project already")
    if args.image_size < 32:
        raise UserError("--image-size must be at least 32")
    classes = parse_classes(args.classes) if args.classes else list(PRESETS.get(args.preset or "", []))
    weights = args.weights or default_weights(args.backbone)
    if weights.lower().endswith((".pth", ".pt")):
        weights = str(Path(weights).absolute())
    config = Config(classes=classes, backbone=args.backbone, weights=weights, image_size=args.image_size,
                    db=args.db)
    project = Project(root, config)
    root.mkdir(parents=True, exist_ok=True)
    try:
        create_schema(make_engine(project.db_url))
    except StoreError as exc:
        raise UserError(str(exc)) from None
    except Exception as exc:  # a bad URL or an unreachable server: one line, not a traceback
        raise UserError(f"cannot open database {safe_url(args.db)}: {describe_error(exc)}") from None
    project.artifacts.mkdir(exist_ok=True)
    project.exports.mkdir(exist_ok=True)
    project.save()
    taxonomy = ", ".join(classes) if classes else "(inferred from folder names at the first import)"
    shown_db = safe_url(args.db)  # never echo a password from the URL (terminals, CI logs)
    text = (f"created project {root}\n  backbone: {args.backbone} ({weights})\n  classes: {taxonomy}\n"
            f"  database: {shown_db}\nnext: active --project {root} import FOLDER")
    return Result({"project": str(root), "classes": classes, "backbone": args.backbone,
                   "weights": weights, "db": shown_db}, text)
