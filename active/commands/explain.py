"""Show where the model looked: an attribution map of one item over its photo, with a colour bar
(Grad-CAM by default; ig, guided and occlusion take longer). The map explains the class the
model version predicts for the item, or --target CLASS. With --class-average CLASS instead of an
item: the mean map of the items predicted as that class, over their mean photo. Maps are cached
under artifacts/attributions/."""

from __future__ import annotations

import argparse
from pathlib import Path

from active.atomic import write_atomic
from active.attribution_methods import DEFAULT_METHOD, REGISTRY
from active.commands import Result
from active.errors import UserError
from active.explain import CLASS_AVERAGE_LIMIT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("item", nargs="?", type=int, metavar="ITEM", help="item id (see `active status`)")
    p.add_argument("--method", choices=list(REGISTRY), default=DEFAULT_METHOD,
                   help=f"attribution method (default: {DEFAULT_METHOD})")
    p.add_argument("--target", metavar="CLASS", help="class to explain (default: the predicted class)")
    p.add_argument("--version", type=int, metavar="N", help="model version (default: the current one)")
    p.add_argument("--field", help="the label field whose head to explain (default: category; one item only)")
    p.add_argument("--class-average", metavar="CLASS",
                   help="instead of one item: the mean map of the items predicted as CLASS")
    p.add_argument("--limit", type=int, default=CLASS_AVERAGE_LIMIT,
                   help=f"items in a class average (default: {CLASS_AVERAGE_LIMIT})")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write the overlay here too, in the format its suffix names (.jpg, .png, .webp...)")


def run(args: argparse.Namespace) -> Result:
    from active import explain
    from active.project import Project

    if (args.item is None) == (args.class_average is None):
        raise UserError("give either an ITEM id or --class-average CLASS")
    project = Project.load(args.project)
    if args.class_average is not None:
        image = explain.class_average(project, args.class_average, version_id=args.version,
                                    method=args.method, limit=args.limit, progress=not args.json)
        data = {"class": args.class_average, "method": args.method, "path": str(image)}
        what = f"class average of {args.class_average!r} ({args.method})"
    else:
        field = project.check_field(args.field) if args.field else project.field_names[0]
        done = explain.explain(project, args.item, version_id=args.version, method=args.method,
                               target=args.target, field=field)
        image = done.image
        data = {"item": done.item_id, "field": field, "version": done.version_id, "method": done.method,
                "target": done.target, "path": str(image), "heatmap": str(done.heatmap), "cached": done.cached}
        what = (f"item {done.item_id}, model v{done.version_id}, {done.method}, "
                f"class {done.target if done.target is not None else '(top output)'}")
    if args.out is not None:
        out = args.out.expanduser()
        if out.parent and not out.parent.is_dir():
            raise UserError(f"--out: folder {out.parent} does not exist")
        if out.is_dir():
            raise UserError(f"--out: {out} is a folder; give a file name such as {out / 'map.jpg'}")
        _write_as(image, out)
        data["out"] = str(out)
    return Result(data, f"{what}: {data.get('out', image)}")


def _write_as(image: Path, out: Path) -> None:
    """``image`` at ``out``: copied when the suffixes agree, else re-encoded by Pillow in the
    format the suffix names (a map asked for as map.png is a PNG, whatever the cache holds).
    Written to a temporary name and renamed: a refused or failed write leaves ``out`` as it was."""
    jpeg = (".jpg", ".jpeg")
    a, b = image.suffix.lower(), out.suffix.lower()
    if a == b or (a in jpeg and b in jpeg):
        write_atomic(out, image.read_bytes())
        return
    from PIL import Image

    fmt = Image.registered_extensions().get(b)
    if fmt is None or fmt not in Image.SAVE:
        raise UserError(f"--out: Pillow cannot write an image named {out.name!r}; use .jpg or .png")
    try:
        with Image.open(image) as im:
            im.load()
            write_atomic(out, lambda fh: im.save(fh, format=fmt))
    except OSError as exc:  # e.g. a format that cannot hold an RGB picture
        raise UserError(f"--out: cannot write {out.name!r} as {fmt}: {exc}") from None
