"""Model versions on disk: publish atomically, find the current one, load it (cached per process).

Layout of ``artifacts/v{id}/`` (the paths are recorded in ``ModelVersion.artifacts``):

- ``meta.json``       what made the version (backbone, weights, image size, classes, recipe)
- ``embeddings/``     chunk files ``{start_row:09d}.npy`` (rows, d) float32 of the penultimate
                      features, for versions that run their own network (pretrained, full)
- ``model.pth``       state dict of a fine-tuned network (mode "full"); in a project with several
                      label fields its final Linear holds one output block per field trained
                      (the default field's first, then ``artifacts["fields"][f]["outputs"]``:
                      [start, stop] of field f's), see `output_layout`
- ``head.npz``        a linear head on the embeddings of ``embeddings_from`` (mode "head")

Every version's ``model(x)`` gives *calibrated* logits: the temperature is folded into the final
Linear, so ``softmax(model(x))`` are the probabilities the UI shows. The pretrained version keeps
the weights' own (ImageNet) head and has ``classes == []``: it makes no predictions for our classes.

Publishing writes every file into ``artifacts/.staging-<host>-<pid>-<random>/``, then, inside the
transaction that inserts the row, renames that folder to ``v{id}`` and commits: the row appears
last, and a crash at any point leaves the previous version current (an orphan ``v{id}`` without a
row is cleared by the next publish that gets that id; the staging folder of a killed process by
the next run that stages a version).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from active.atomic import write_atomic
from active.errors import UserError
from active.tempdirs import make_owned_dir, remove_orphans
from storage import db, versions
from storage.fields import DEFAULT_FIELD, field_classes
from storage.tables import ModelVersion

if TYPE_CHECKING:
    from torch import nn

    from active.project import Project

CACHE_SIZE = 2
MODES = ("pretrained", "head", "full")
EMBEDDINGS_DIR = "embeddings"
CHECKPOINT = "model.pth"
HEAD_FILE = "head.npz"
STAGING_PREFIX = ".staging-"
# A staging folder untouched this long belongs to a crashed run (a full fine-tune writes its
# files at the end, so this must exceed the longest training).
STALE_STAGING_S = 7 * 24 * 3600

_cache: OrderedDict[tuple[str, int, str | None], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


@dataclass
class LoadedModel:
    """A version ready to run. ``model`` is in eval mode and gives calibrated logits;
    ``classes`` index its outputs (empty for the pretrained backbone, whose outputs are the
    weights' own categories); ``transform`` maps a PIL RGB image to a (3, S, S) tensor."""

    model: nn.Module
    classes: list[str]
    transform: Any
    version_id: int
    mode: str
    backbone: str


def current_version(project: Project) -> ModelVersion | None:
    """The newest published version that is not held back, which scoring and retraining work on
    (None before the first `active score`). It serves only once it covers the pool: see
    `serving_version`."""
    with db.session(project.engine) as s:
        latest = versions.latest(s)
        if latest is None or not held_back(latest):
            return latest
        return next((v for v in reversed(versions.all_versions(s)) if not held_back(v)), None)


def held_back(version: ModelVersion) -> bool:
    """A fine-tune that ended worse on the holdout than the version serving then: kept, never
    scored on the pool, so it never serves (`active.retrain.serving_decision` sets it)."""
    return bool(((version.metrics or {}).get("serving") or {}).get("held_back"))


def serving_version(project: Project) -> ModelVersion | None:
    """The version that serves suggestions, selection and the UI (`storage.versions.serving`)."""
    with db.session(project.engine) as s:
        return versions.serving(s)


def get_version(project: Project, version_id: int) -> ModelVersion:
    with db.session(project.engine) as s:
        v = versions.get(s, version_id)
    if v is None:
        raise UserError(f"no model version {version_id} in this project (see `active status`)")
    return v


def version_dir(project: Project, version: ModelVersion) -> Path:
    return project.artifacts / version.artifacts.get("dir", f"v{version.id}")


def embedding_source(project: Project, version: ModelVersion) -> ModelVersion:
    """The version whose embedding array this version's Prediction rows index (itself, or for a
    head version the network version it sits on)."""
    src = version.artifacts.get("embeddings_from")
    return version if src is None or src == version.id else get_version(project, int(src))


# ---------------------------------------------------------------- publishing

def new_staging(project: Project) -> Path:
    """An empty private folder under artifacts/ to write a version's files into (named after this
    process, see `active.tempdirs`); staging folders of killed runs are removed first."""
    clear_stale_staging(project)
    return make_owned_dir(project.artifacts, STAGING_PREFIX)


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def publish(project: Project, version: ModelVersion, staging: Path, *,
            only_if_first: bool = False) -> ModelVersion:
    """Make ``staging`` the version's folder and insert its row, atomically (files first, row last).

    With ``only_if_first`` the version is published only when the project has none yet; otherwise
    the existing latest version is returned and ``staging`` removed (two first scorings racing).
    """
    _fsync_tree(staging)
    final: Path | None = None
    try:
        with db.session(project.engine, write=True) as s:
            if only_if_first:
                existing = versions.latest(s)
                if existing is not None:
                    shutil.rmtree(staging, ignore_errors=True)
                    return existing
            version.artifacts = {**version.artifacts, "dir": "pending"}
            versions.publish(s, version)  # flush: the id is known, the row is not yet visible
            final = project.artifacts / f"v{version.id}"
            if final.exists():  # left by a publish that crashed before its commit: no row owns it
                shutil.rmtree(final)
            os.replace(staging, final)
            version.artifacts = {**version.artifacts, "dir": final.name}
            s.add(version)
    except BaseException:
        if final is not None and final.exists() and not staging.exists():
            os.replace(final, staging)  # the row was not committed: put the files back aside
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version


def clear_stale_staging(project: Project, *, older_than_s: float = STALE_STAGING_S) -> None:
    """Remove staging folders of crashed publishes (they never became versions): those whose
    owner process on this host is gone, and any untouched for ``older_than_s`` (a young folder of
    another host's or a live process may belong to a retrain still running)."""
    remove_orphans(project.artifacts, STAGING_PREFIX)
    if project.artifacts.is_dir():
        now = time.time()
        for p in project.artifacts.glob(f"{STAGING_PREFIX}*"):
            if now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- building networks

def weights_spec(backbone: str, weights: str):  # noqa: ANN201
    """`models.backbones.resolve_weights`, with its errors as one-line `UserError`s."""
    from models.backbones import BackboneError, WeightsError, resolve_weights

    try:
        return resolve_weights(backbone, weights)
    except (WeightsError, BackboneError) as exc:
        raise UserError(str(exc)) from None


def build_network(backbone: str, num_classes: int | None, weights: str) -> nn.Module:
    """The model factory: a fresh torchvision network (train mode), errors as `UserError`."""
    from models.backbones import BackboneError, WeightsError, build

    try:
        return build(backbone, num_classes, weights_spec(backbone, weights))
    except (WeightsError, BackboneError) as exc:
        raise UserError(str(exc)) from None


def make_transform(backbone: str, weights: str, image_size: int):  # noqa: ANN201
    from models.backbones import eval_transform

    return eval_transform(weights_spec(backbone, weights), image_size=image_size)


def head_to_linear(head_arrays: dict[str, np.ndarray]):  # noqa: ANN201
    """A `models.head.Head` as one nn.Linear on raw embeddings, standardisation and temperature
    folded in: ``softmax(linear(e)) == head.predict_proba(e)``."""
    import torch
    from torch import nn

    w = head_arrays["weight"].astype(np.float64)
    b = head_arrays["bias"].astype(np.float64)
    mean, scale = head_arrays["mean"].astype(np.float64), head_arrays["scale"].astype(np.float64)
    t = float(head_arrays["temperature"])
    w_raw = w / scale
    linear = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w_raw / t))
        linear.bias.copy_(torch.from_numpy((b - w_raw @ mean) / t))
    return linear


def output_layout(version: ModelVersion) -> list[tuple[str, int, int]]:
    """(field, start, stop) of each label field's outputs of a version's network, the default
    field's first: one block (the default field's classes) unless a fine-tune trained several
    fields at once; [] for the pretrained backbone (no outputs for our classes)."""
    layout = [(DEFAULT_FIELD, 0, len(version.classes))] if version.classes else []
    if version.mode == "full":
        for name, spec in ((version.artifacts or {}).get("fields") or {}).items():
            if "outputs" in spec:
                layout.append((name, int(spec["outputs"][0]), int(spec["outputs"][1])))
    return layout


def _network_of(project: Project, version: ModelVersion, field: str | None = DEFAULT_FIELD) -> nn.Module:
    if version.mode == "pretrained" and "checkpoint" not in version.artifacts:
        return build_network(version.backbone, None, version.weights)
    if version.mode in ("pretrained", "full"):
        ckpt = version_dir(project, version) / version.artifacts.get("checkpoint", CHECKPOINT)
        if not ckpt.is_file():
            raise UserError(f"model version {version.id}: checkpoint {ckpt} is missing")
        layout = output_layout(version)
        net = build_network(version.backbone, max((stop for _, _, stop in layout), default=0) or None, str(ckpt))
        if field is None or len(layout) < 2:
            return net
        from models.backbones import keep_outputs

        # One field's block alone, so that the network's softmax is that field's.
        _, start, stop = next(b for b in layout if b[0] == field)
        return keep_outputs(net, start, stop)
    if version.mode == "head":
        from models.backbones import replace_final_linear

        source = embedding_source(project, version)
        net = _network_of(project, source)
        if field == DEFAULT_FIELD:
            path = version_dir(project, version) / version.artifacts.get("head", HEAD_FILE)
        else:  # a label field's own head on the same network (`active.retrain`)
            path = version_dir(project, version) / version.artifacts["fields"][field]["head"]
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        return replace_final_linear(net, head_to_linear(arrays))
    raise UserError(f"model version {version.id} has unknown mode {version.mode!r}")


def load_model(project: Project, version: ModelVersion | int | None = None, *,
               field: str | None = DEFAULT_FIELD) -> LoadedModel:
    """The network of ``version`` (default: the current one) in eval mode, cached per process
    (the last `CACHE_SIZE` (version, field) networks: with several fields one version may take one
    entry per field and one for ``field=None``). Checkpoints load with ``torch.load(weights_only=True)``.
    The network's outputs are the classes of label field ``field``: a head version's network
    ends in that field's head, a fine-tune trained on several fields in that field's output
    block. ``field=None``: a network version with every output block it has (`output_layout`;
    what scoring runs, one pass for every field); ``classes`` are then the default field's."""
    if version is None:
        version = current_version(project)
        if version is None:
            raise UserError("this project has no model version yet: run `active score` first")
    elif isinstance(version, int):
        version = get_version(project, version)
    if field is not None and field != DEFAULT_FIELD and not field_classes(version, field):
        raise UserError(f"model version {version.id} has no head for field {field!r}: run `active retrain --mode head` "
                        "once the field has labels of two classes")
    if field is None and version.mode == "head":
        raise ValueError("field=None loads a network version with all its outputs; a head version has one per field")
    if field is None and len(output_layout(version)) < 2:
        field = DEFAULT_FIELD  # one block (or none): the same network, one cache entry
    key = (str(project.root), int(version.id), field)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    image_size = int(version.artifacts.get("image_size", project.config.image_size))
    init_weights = version.artifacts.get("init_weights", version.weights)
    net = _network_of(project, version, field)
    net.eval()
    loaded = LoadedModel(net, field_classes(version, field or DEFAULT_FIELD), make_transform(version.backbone, init_weights, image_size),
                         int(version.id), version.mode, version.backbone)
    with _cache_lock:
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return loaded


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
