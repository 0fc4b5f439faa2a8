"""Torchvision classifiers by name, with a new head for our classes and penultimate embeddings.

Any classification model of `torchvision.models` works when its last layer is an ``nn.Linear``
reachable through one of the attributes torchvision uses (``fc``, ``classifier``, ``head``,
``heads``): resnets, mobilenets, efficientnets, vgg, convnext, regnet, densenet, vit, swin...
The *embedding* of an image is the input of that final Linear (the penultimate features).

Weights are one of:
- a torchvision enum name (``IMAGENET1K_V1``, ``DEFAULT``...), loaded from the cache
  ``$TORCH_HOME/hub/checkpoints``. When the file is not there it is downloaded the way
  torchvision users expect (the weights' own ``get_state_dict``: torch.hub, progress bar, hash
  check) unless downloads are forbidden (``offline=True`` or ``ACTIVE_OFFLINE=1``), in which case
  the error names the file to put there;
- a ``.pth``/``.pt`` file: a state dict of the same architecture (any head size), optionally
  wrapped as ``{"model": ...}`` or ``{"state_dict": ...}``;
- ``none``: random initialisation, only when asked for by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms import v2 as T

from models import OFFLINE_ENV

# Attributes under which torchvision classifiers keep their last layer, in the order we look.
HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads")
NO_WEIGHTS = ("none", "")
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eval preset without weights' meta: resize the short side to size * 256/224, centre crop size.
RESIZE_RATIO = 256 / 224
WHITE = 255


class WeightsError(Exception):
    """The weights asked for cannot be had; the message names the file and the options."""


class BackboneError(Exception):
    """The backbone name is unknown or its architecture has no final Linear we can replace."""


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights come from. kind: "enum" | "file" | "none"."""

    kind: str
    name: str  # what the user wrote (enum name, path, or "none")
    enum: Any = None  # torchvision WeightsEnum member when kind == "enum"
    path: Path | None = None  # the checkpoint file (cache file for enums)


def classification_models() -> list[str]:
    """Names of torchvision's classification models (``resnet50``, ``mobilenet_v2``...)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_backbone(backbone: str) -> str:
    names = classification_models()
    if backbone not in names:
        raise BackboneError(f"unknown backbone {backbone!r}: use a torchvision classifier such as "
                            f"resnet50, mobilenet_v2, efficientnet_b0, vgg16 (all: {', '.join(names)})")
    return backbone


def checkpoint_dir() -> Path:
    """Where torchvision caches downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_from_env() -> bool:
    """Whether ``ACTIVE_OFFLINE`` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def download_weights(member: Any) -> None:
    """Fetch a torchvision weights enum member into ``$TORCH_HOME/hub/checkpoints`` with
    torchvision's own mechanism (torch.hub's download, its progress bar on stderr, the hash in
    the file name checked). The one place that touches the network: tests patch it."""
    member.get_state_dict(progress=True, check_hash=True)


def resolve_weights(backbone: str, weights: str | os.PathLike | None, *,
                    offline: bool | None = None) -> WeightsSpec:
    """Turn a weights option into a `WeightsSpec` whose file is there, downloading a torchvision
    weights file that is not cached yet unless ``offline`` (default: ``ACTIVE_OFFLINE``).

    Raises `WeightsError` naming the file looked for and the options when it cannot be had.
    """
    check_backbone(backbone)
    text = "" if weights is None else str(weights).strip()
    if text.lower() in NO_WEIGHTS:
        return WeightsSpec("none", "none")
    looks_like_file = text.endswith(WEIGHT_FILE_SUFFIXES) or os.sep in text or Path(text).is_file()
    if looks_like_file:
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} not found: give an existing .pth file, a torchvision "
                               f"weights name such as IMAGENET1K_V1, or --weights none for random init")
        return WeightsSpec("file", str(path), path=path.resolve())
    enum_cls = torchvision.models.get_model_weights(backbone)
    try:
        member = enum_cls[text]
    except KeyError:
        names = ", ".join(enum_cls.__members__)
        raise WeightsError(f"{backbone} has no weights named {text!r}: use one of {names}, "
                           f"a .pth file, or none") from None
    cache = checkpoint_dir() / os.path.basename(urlparse(member.url).path)
    if cache.is_file():
        return WeightsSpec("enum", member.name, enum=member, path=cache)
    help_text = (f"Put that file there (download {member.url} on a connected machine), "
                 f"or set TORCH_HOME to the folder holding hub/checkpoints/{cache.name}, "
                 f"or pass a .pth file as weights, or use --weights none for random init")
    if offline_from_env() if offline is None else offline:
        raise WeightsError(f"weights {backbone} {text} are not available offline: looked for {cache} "
                           f"(downloads are off: --offline or {OFFLINE_ENV}=1). {help_text}")
    try:
        download_weights(member)
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, a bad hash: all mean "not here"
        raise WeightsError(f"weights {backbone} {text} could not be downloaded into {cache} "
                           f"({type(exc).__name__}: {exc}). {help_text}") from None
    if not cache.is_file():
        raise WeightsError(f"weights {backbone} {text}: the download did not leave {cache}. {help_text}")
    return WeightsSpec("enum", member.name, enum=member, path=cache)


def find_final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The dotted name and module of the model's final Linear (whose input is the embedding)."""
    for attr in HEAD_ATTRIBUTES:
        sub = getattr(model, attr, None)
        if sub is None or not isinstance(sub, nn.Module):
            continue
        if isinstance(sub, nn.Linear):
            return attr, sub
        linears = [(n, m) for n, m in sub.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            name, module = linears[-1]
            return f"{attr}.{name}", module
        raise BackboneError(f"{type(model).__name__}.{attr} has no Linear layer (its classifier is "
                            f"{type(sub).__name__}): this architecture is not supported")
    raise BackboneError(f"{type(model).__name__} has none of the attributes {', '.join(HEAD_ATTRIBUTES)}: "
                        "cannot find its classifier layer")


def replace_final_linear(model: nn.Module, new: nn.Module) -> nn.Module:
    """Put ``new`` where the final Linear was (in place); returns ``model``."""
    name, _ = find_final_linear(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def set_final_linear(model: nn.Module, weight: np.ndarray, bias: np.ndarray, *, start: int | None = None) -> nn.Module:
    """Start the final Linear from ``weight`` (out, in) and ``bias`` (out,) (in place); returns ``model``.

    ``start``: set only the outputs ``start .. start + out`` (one block of a layer with several
    output blocks, see `output_blocks`); None: ``weight`` must cover the whole layer."""
    _, linear = find_final_linear(model)
    rows = linear.weight.shape[0] if start is None else weight.shape[0]
    first = 0 if start is None else start
    fits = (weight.ndim == 2 and weight.shape[1] == linear.weight.shape[1] and weight.shape[0] == rows
            and first >= 0 and first + rows <= linear.weight.shape[0])
    if not fits or linear.bias is None or bias.shape != (weight.shape[0],):
        where = "" if start is None else f" at output {start}"
        raise ValueError(f"a final Linear of {tuple(linear.weight.shape)} cannot start from {weight.shape}, "
                         f"{bias.shape}{where}")
    with torch.no_grad():
        linear.weight[first:first + rows].copy_(torch.as_tensor(weight, dtype=linear.weight.dtype))
        linear.bias[first:first + rows].copy_(torch.as_tensor(bias, dtype=linear.bias.dtype))
    return model


def output_blocks(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) of each output block of a final Linear whose outputs are ``sizes`` blocks
    laid end to end (one block per label field of a network fine-tuned on several)."""
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"output block sizes must be >= 1, got {list(sizes)}")
    stops = np.cumsum([int(n) for n in sizes]).tolist()
    return [(stop - int(n), stop) for n, stop in zip(sizes, stops, strict=True)]


def keep_outputs(model: nn.Module, start: int, stop: int) -> nn.Module:
    """Cut the final Linear down to its outputs ``start .. stop`` (in place; one output block of
    a network with several, so that its softmax is that block's alone); returns ``model``."""
    _, linear = find_final_linear(model)
    if not 0 <= start < stop <= linear.out_features:
        raise ValueError(f"outputs {start}..{stop} are not within the final Linear's {linear.out_features}")
    if (start, stop) == (0, linear.out_features):
        return model
    part = nn.Linear(linear.in_features, stop - start, bias=linear.bias is not None).to(linear.weight.device,
                                                                                     linear.weight.dtype)
    with torch.no_grad():
        part.weight.copy_(linear.weight[start:stop])
        if linear.bias is not None:
            part.bias.copy_(linear.bias[start:stop])
    return replace_final_linear(model, part)


def embedding_dim(model: nn.Module) -> int:
    return find_final_linear(model)[1].in_features


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_file(model: nn.Module, path: Path, backbone: str) -> None:
    state = _state_dict_from_file(path)
    name, linear = find_final_linear(model)
    w = state.get(f"{name}.weight")
    if w is not None and w.ndim == 2 and tuple(w.shape) != tuple(linear.weight.shape):
        # A checkpoint with another head size (e.g. one of our fine-tuned versions): match it.
        replace_final_linear(model, nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=linear.bias is not None))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsError(f"{path} does not fit {backbone}: {' '.join(first)}") from None


def build(backbone: str, num_classes: int | None, weights: str | os.PathLike | None = "none") -> nn.Module:
    """A torchvision classifier with ``num_classes`` outputs, in train mode.

    The head is a fresh Linear unless ``weights`` is a file whose head already has
    ``num_classes`` outputs (how our own fine-tuned checkpoints are loaded back).

    ``num_classes=None`` keeps the weights' own head (e.g. the 1000 ImageNet classes): that is the
    pretrained backbone used before the first retrain. Raises `WeightsError` / `BackboneError`.
    """
    spec = weights if isinstance(weights, WeightsSpec) else resolve_weights(backbone, weights)
    if spec.kind == "enum":
        model = torchvision.models.get_model(backbone, weights=spec.enum)
    else:
        model = torchvision.models.get_model(backbone, weights=None)
        if spec.kind == "file":
            _load_file(model, spec.path, backbone)
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        _, old = find_final_linear(model)
        if old.out_features != num_classes or spec.kind == "enum":
            replace_final_linear(model, nn.Linear(old.in_features, num_classes))
    return model


def _preset(spec: WeightsSpec, image_size: int | None) -> tuple[int, int, tuple, tuple, Any]:
    """(resize, crop, mean, std, interpolation) of the eval preset."""
    crop, resize = 224, 256
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    interpolation = T.InterpolationMode.BILINEAR
    if spec.kind == "enum" and getattr(spec.enum.transforms, "keywords", None) is not None:
        kw = spec.enum.transforms.keywords
        crop = int(kw.get("crop_size", crop))
        resize = int(kw.get("resize_size", round(crop * RESIZE_RATIO)))
        mean, std = tuple(kw.get("mean", mean)), tuple(kw.get("std", std))
        interpolation = kw.get("interpolation", interpolation)
    if image_size is not None and image_size != crop:
        resize, crop = round(resize * image_size / crop), image_size
    return resize, crop, mean, std, interpolation


def eval_transform(spec: WeightsSpec, *, image_size: int | None = None) -> T.Compose:
    """PIL RGB image -> float tensor (3, crop, crop): the weights' own preset (resize, centre crop,
    normalisation) when they have one, else Resize + CenterCrop + ImageNet normalisation; scaled
    to ``image_size`` when given."""
    resize, crop, mean, std, interp = _preset(spec, image_size)
    return T.Compose([T.ToImage(), T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(crop),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])


def train_transform(spec: WeightsSpec, *, image_size: int | None = None,
                    rotation_degrees: float = 10.0) -> T.Compose:
    """The fine-tuning augmentation: the eval geometry plus RandomHorizontalFlip and
    RandomRotation(10), ImageNet normalisation. Output (3, crop, crop) float."""
    resize, crop, mean, std, interp = _preset(spec, image_size)
    return T.Compose([T.ToImage(), T.Resize(resize, interpolation=interp, antialias=True), T.CenterCrop(crop),
                      T.RandomHorizontalFlip(),
                      # Product shots are cut out on white: rotated corners are filled white too.
                      T.RandomRotation(rotation_degrees, fill=WHITE),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
