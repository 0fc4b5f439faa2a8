"""Attribution maps of a project's items, cached on disk per (item, model version, method, class).

Layout under ``artifacts/attributions/v{version}/``:

- ``{method}/{item}-c{k}.jpg``  overlay of the photo with the map for class index ``k`` of that
  version, and a colour bar; ``.npy`` beside it: the heatmap (h, w) float16 in [0, 1] at the
  network's input resolution (the overlay is that map resized onto the photo).
  ``{item}-top.jpg`` for the pretrained version, which has none of our classes: its top output.
- ``class-average/{method}/c{k}-n{n}-{key}.jpg`` (+ ``.npy``, ``.json``): the mean map of the
  ``n`` most confident items predicted as class ``k`` over their mean photo; ``key`` hashes the
  item ids, so new predictions give a new file instead of a stale one.

Files are written to a temporary name and renamed, so a reader (the UI prefetching the next item,
a second process) sees a whole picture or none. The network comes from `active.modelstore.load_model`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from active import attribution_methods
from active.atomic import write_atomic
from active.attribution_methods import DEFAULT_METHOD
from active.errors import UserError
from storage.fields import DEFAULT_FIELD, field_classes, field_prediction

if TYPE_CHECKING:
    from active.project import Project
    from storage.tables import ModelVersion

ATTRIBUTIONS_DIR = "attributions"
CLASS_AVERAGE_DIR = "class-average"
# Items averaged into a class-average map: enough for a stable mean, few enough to compute in
# seconds with Grad-CAM on CPU.
CLASS_AVERAGE_LIMIT = 32
# Overlays of very large photos are scaled down to this longer side (the UI shows them smaller).
MAX_OVERLAY_SIDE = 1600
# Overlays are JPEG: they are photos, and a 470x530 Grad-CAM overlay encoded in 2 ms to 37 kB as
# JPEG against 25 ms and 270 kB as PNG (zlib level 1), measured on the shared sample. Every
# labelled item has one on the page, so that is CPU per label and bytes per next item.
OVERLAY_SUFFIX = ".jpg"
OVERLAY_QUALITY = 90


@dataclass(frozen=True)
class ItemExplanation:
    """Where an item's map lies and what it explains."""

    image: Path  # the overlay (JPEG)
    heatmap: Path  # (h, w) float16 .npy
    item_id: int
    version_id: int
    method: str
    target: str | None  # class name; None for the pretrained version's own top output
    cached: bool  # True when the files were there already


def check_method(method: str) -> str:
    try:
        return attribution_methods.get(method).name
    except attribution_methods.UnknownMethodError as exc:
        raise UserError(str(exc)) from None


def _load_model(project: Project, version: ModelVersion, field: str = DEFAULT_FIELD) -> Any:
    """`active.modelstore.load_model` (a seam the tests replace to avoid building versions)."""
    from active.modelstore import load_model

    return load_model(project, version, field=field)


def resolve_version(project: Project, version_id: int | None) -> ModelVersion:
    from storage import db, versions

    with db.session(project.engine) as s:
        version = versions.serving(s) if version_id is None else versions.get(s, version_id)
    if version is None:
        if version_id is None:
            raise UserError("this project has no model version yet: run `active score` first "
                            "(it publishes the pretrained backbone as version 1)")
        raise UserError(f"no model version {version_id} in this project (see `active status`)")
    return version


def warm_up(project: Project) -> bool:
    """Import the attribution stack and load the serving version's network into the per-process
    cache, so that the first map a labeller makes does not pay for them while annotators wait:
    importing torch and torchvision alone took ~13 s on a busy 2-core machine, and an import holds
    up every request of the process meanwhile. False when there is no version to load yet."""
    try:
        version = resolve_version(project, None)
    except UserError:  # nothing to explain yet: no imports (a new project's labeller starts at once)
        return False
    from captum.attr import LayerGradCam  # noqa: F401 - the default method (Grad-CAM)'s

    import models.explain  # noqa: F401 - torch, torchvision and the overlay's imports

    _load_model(project, version)
    return True


def _class_index(version: ModelVersion, cls: str, field: str = DEFAULT_FIELD) -> int:
    classes = field_classes(version, field)
    if not classes:
        if field != DEFAULT_FIELD:
            raise UserError(f"model version {version.id} has no head for field {field!r}: run `active retrain` first")
        raise UserError(f"model version {version.id} is the pretrained backbone and knows none of this "
                        f"project's classes: run `active retrain` first, or leave out the target")
    if cls not in classes:
        raise UserError(f"class {cls!r} is not one of model version {version.id}'s classes "
                        f"({', '.join(classes)})")
    return classes.index(cls)


def _version_dir(project: Project, version_id: int) -> Path:
    return project.artifacts / ATTRIBUTIONS_DIR / f"v{version_id}"


def _load_photo(item: Any) -> Any:
    from models.images import ImageError, load_rgb

    try:
        return load_rgb(item.path)
    except ImageError as exc:
        raise UserError(f"item {item.id} ({item.path}) cannot be read: {exc}") from None


def _fit(photo: Any) -> Any:
    """The photo, scaled down when its longer side exceeds ``MAX_OVERLAY_SIDE``."""
    from PIL import Image

    longer = max(photo.size)
    if longer <= MAX_OVERLAY_SIDE:
        return photo
    scale = MAX_OVERLAY_SIDE / longer
    return photo.resize((max(1, round(photo.width * scale)), max(1, round(photo.height * scale))),
                        Image.Resampling.BILINEAR)


def explain(
    project: Project,
    item_id: int,
    *,
    version_id: int | None = None,
    method: str = DEFAULT_METHOD,
    target: str | None = None,
    field: str = DEFAULT_FIELD,
) -> ItemExplanation:
    """The map of ``method`` for ``item_id`` under a model version (default: the current one),
    for class ``target`` of label field ``field`` (default: that version's predicted class for
    the item), computed once and cached. Raises `UserError` for an unknown item, class, method,
    version or a field the version has no head for."""
    from storage import db, items, versions

    check_method(method)
    version = resolve_version(project, version_id)
    with db.session(project.engine) as s:
        item = items.get(s, int(item_id))
        pred = versions.predictions(s, version.id, [int(item_id)]).get(int(item_id)) if item else None
    if item is None:
        raise UserError(f"no item {item_id} in this project")
    if item.error:
        raise UserError(f"item {item_id} ({item.path}) cannot be read: {item.error}")
    guess = field_prediction(pred, field) if pred is not None else None
    if target is None and guess is not None and guess.pred in field_classes(version, field):
        target = guess.pred
    if target is None and field != DEFAULT_FIELD:
        _class_index(version, "", field)  # says there is no head for the field
    index = _class_index(version, target, field) if target is not None else None
    stem = f"{item.id}-c{index}" if index is not None else f"{item.id}-top"
    if field != DEFAULT_FIELD:
        stem = f"{item.id}-{field}-c{index}"
    image = _version_dir(project, version.id) / method / f"{stem}{OVERLAY_SUFFIX}"
    npy = image.with_suffix(".npy")
    if image.is_file() and npy.is_file():
        return ItemExplanation(image, npy, item.id, version.id, method, target, cached=True)

    from models import explain as mx

    loaded = _load_model(project, version, field)
    photo = _load_photo(item)
    size = project.config.image_size
    result = mx.explain(loaded.model, photo, method, index, size=size,
                        output_size=mx.input_size(photo.width, photo.height, size=size))
    heat = result.heatmap
    write_atomic(npy, lambda fh: np.save(fh, heat.astype(np.float16)))
    _save_overlay(image, mx.overlay(_fit(photo), heat))
    return ItemExplanation(image, npy, item.id, version.id, method, target, cached=False)


def _save_overlay(path: Path, picture: Any) -> None:  # noqa: ANN401
    write_atomic(path, lambda fh: picture.save(fh, format="JPEG", quality=OVERLAY_QUALITY))


def explain_item(project: Project, item_id: int, **kwargs: Any) -> Path:  # noqa: ANN401
    """Path of the cached overlay of `explain` (same keyword arguments)."""
    return explain(project, item_id, **kwargs).image


def load_heatmap(explanation: ItemExplanation | Path) -> np.ndarray:
    """The stored heatmap: (h, w) float32 in [0, 1]."""
    path = explanation.heatmap if isinstance(explanation, ItemExplanation) else Path(explanation)
    return np.load(path.with_suffix(".npy")).astype(np.float32)


def class_average(
    project: Project,
    cls: str,
    *,
    version_id: int | None = None,
    method: str = DEFAULT_METHOD,
    limit: int = CLASS_AVERAGE_LIMIT,
    progress: bool = False,
    cached_only: bool = False,
) -> Path | None:
    """Overlay (JPEG) of the mean map of the ``limit`` most confident items predicted as ``cls``,
    on their mean photo: what the model looks at for that class. Cached per (version, method,
    class, items). Items whose photo cannot be read are left out and listed in the ``.json``.
    ``cached_only``: None instead of making it (the labeller leaves that to a worker's job)."""
    from storage import attributions, db

    check_method(method)
    if limit < 1:
        raise UserError("limit must be at least 1")
    version = resolve_version(project, version_id)
    index = _class_index(version, cls)
    with db.session(project.engine) as s:
        preds = attributions.top_predicted(s, version.id, cls, limit)
    if not preds:
        raise UserError(f"model version {version.id} predicts no item as {cls!r} "
                        f"(has `active score` run with it?)")
    ids = [p.item_id for p in preds]
    key = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:12]
    image = _version_dir(project, version.id) / CLASS_AVERAGE_DIR / method / f"c{index}-n{len(ids)}-{key}{OVERLAY_SUFFIX}"
    if image.is_file():
        return image
    if cached_only:
        return None

    from tqdm import tqdm

    from models import explain as mx
    from models.images import ImageError, load_rgb
    from storage import items

    with db.session(project.engine) as s:
        paths = {i: items.get(s, i).path for i in ids}
    maps, photos, used, skipped = [], [], [], {}
    for item_id in tqdm(ids, desc=f"class average {cls}", disable=not progress, unit="item"):
        try:
            photos.append(load_rgb(paths[item_id]))
        except ImageError as exc:
            skipped[item_id] = str(exc)
            continue
        done = explain(project, item_id, version_id=version.id, method=method, target=cls)
        maps.append(load_heatmap(done))
        used.append(item_id)
    if not maps:
        raise UserError(f"none of the {len(ids)} items predicted as {cls!r} can be read: {skipped}")
    mean_map = mx.average_maps(maps)
    picture = mx.overlay(mx.average_image(photos), mean_map)
    info = {"version": version.id, "method": method, "class": cls, "items": used, "skipped": skipped}
    write_atomic(image.with_suffix(".npy"), lambda fh: np.save(fh, mean_map))
    write_atomic(image.with_suffix(".json"), lambda fh: fh.write(json.dumps(info, indent=1).encode()))
    _save_overlay(image, picture)
    return image
