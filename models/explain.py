"""Attribution maps: where a classifier looked when it picked a class (Captum).

Pure torch / torchvision / captum / matplotlib: knows nothing of SQL or of the project.

    heatmap = attribute(model, photo, "gradcam", target=3)     # (H, W) float32 in [0, 1]
    picture = overlay(photo, heatmap)                           # PIL, photo size + colour bar

Methods (registry ``METHODS``):

- ``gradcam`` (default): Captum ``LayerGradCam`` on the last convolutional block, upsampled to the
  photo. One forward pass; the backward pass only runs through the classifier head, because the
  attribution copy of the model needs no parameter gradients. Fast enough for every item.
- ``ig``: ``IntegratedGradients`` from a mean-colour baseline, few steps, batched.
- ``guided``: ``GuidedBackprop`` (ReLU6 counts as a ReLU, so mobilenets get the guided rule too).
- ``occlusion``: ``Occlusion`` with a square window of 1/5 of the shorter side, half-window
  stride, measuring the drop in the class probability.

torchvision models reuse in-place ReLU / ReLU6 modules in their forward. Captum's hooks break on
in-place ops, so every method runs on a private copy of the model with ``inplace=False``
everywhere, cached per model (and refreshed when the model's weights change). The caller's model
is never touched.

Alignment: a PIL photo is preprocessed by `preprocess` (shorter side to ``size``, whole photo, no
crop, ImageNet normalisation), so the map covers the whole photo the annotator sees and is resized
back onto it exactly. A custom ``transform`` that crops would misalign the map; pass one that
only resizes.
"""

from __future__ import annotations

import copy
import functools
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

METHOD_NAMES: tuple[str, ...] = ("gradcam", "ig", "guided", "occlusion")
DEFAULT_METHOD = "gradcam"

# torchvision's ImageNet normalisation: every backbone we offer was trained with it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
# A panorama-shaped photo is resized so its longer side is at most this many times ``size``.
MAX_ASPECT = 2.0

# Integrated Gradients: 16 Gauss-Legendre steps keep the completeness error small on these
# networks at an affordable CPU cost; all steps in one batch by default.
IG_STEPS = 16
IG_BATCH = 16
# Occlusion: window = shorter input side / OCCLUSION_FRACTION, stride = window / 2: on a 224 px
# input a 45 px patch (a collar, a shoe's toe), about 110 forward passes per image.
OCCLUSION_FRACTION = 5
OCCLUSION_BATCH = 16
# Pixel-level maps (ig, guided) have a few extreme pixels; scale by this percentile, not the max.
PIXEL_PERCENTILE = 99.5

# Overlay: the colour's opacity grows with the heat, so cold regions show the photo.
OVERLAY_ALPHA_MIN = 0.15
OVERLAY_ALPHA_MAX = 0.65
DEFAULT_CMAP = "jet"
COLORBAR_WIDTH = 72  # pixels
# Common size of the maps averaged into a class-average map: (height, width).
AVERAGE_SIZE = (224, 168)


class UnknownMethodError(ValueError):
    """An attribution method name that is not in ``METHOD_NAMES``."""


def check_method(method: str) -> str:
    if method not in METHOD_NAMES:
        raise UnknownMethodError(f"unknown attribution method {method!r}: use one of {', '.join(METHOD_NAMES)}")
    return method


# --------------------------------------------------------------------------- preprocessing


def input_size(width: int, height: int, *, size: int = DEFAULT_SIZE) -> tuple[int, int]:
    """(h, w) of the network input `preprocess` makes from a ``width`` x ``height`` photo."""
    scale = min(size / min(width, height), MAX_ASPECT * size / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess(image: Image.Image, *, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """The whole photo as the network input: shorter side ``size`` (aspect kept, longer side
    capped at ``MAX_ASPECT * size``), ImageNet normalisation. Returns (1, 3, h, w) float32."""
    h, w = input_size(image.width, image.height, size=size)
    rgb = image.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0).contiguous()


def _as_input(
    image: Image.Image | torch.Tensor, transform: Callable | None, size: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, h, w) network input and the (H, W) the heatmap must have."""
    if isinstance(image, Image.Image):
        x = transform(image.convert("RGB")) if transform is not None else preprocess(image, size=size)
        out_size = (image.height, image.width)
    elif isinstance(image, torch.Tensor):
        x = image
        out_size = (int(image.shape[-2]), int(image.shape[-1]))
    else:
        raise TypeError(f"image must be a PIL image or a (3, H, W) tensor, not {type(image).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image as a (3, H, W) or (1, 3, H, W) tensor, got {tuple(x.shape)}")
    return x.float(), out_size


# --------------------------------------------------------------------------- the attribution copy


class _ReLU6(nn.ReLU):
    """ReLU6 as an ``nn.ReLU`` subclass: same function, but Captum's GuidedBackprop (which hooks
    ``nn.ReLU`` instances only) applies the guided rule to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x)


@dataclass
class _Prepared:
    model: nn.Module  # the private copy: eval mode, no in-place ops, no parameter gradients
    layer_name: str  # the last conv block, by name (same in the caller's model and the copy)
    fingerprint: tuple
    lock: threading.Lock


_prepared: weakref.WeakKeyDictionary[nn.Module, _Prepared] = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when the weights change in place (optimiser steps, load_state_dict) or move."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else None
    return (device, len(tensors), sum(t._version for t in tensors))


def _copy_for_attribution(model: nn.Module) -> nn.Module:
    clone = copy.deepcopy(model).eval()
    for name, module in list(clone.named_modules()):
        if hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False
        if type(module) is nn.ReLU6:
            parent, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent) if parent else clone, child, _ReLU6())
    _fuse_batch_norms(clone)
    for p in clone.parameters():
        p.requires_grad_(False)
    if _device(clone).type == "cpu":
        # oneDNN's convolutions run faster on channels-last tensors (inputs follow in `explain`):
        # a mobilenet_v2 Grad-CAM on one CPU thread 53 -> 39 ms.
        clone = clone.to(memory_format=torch.channels_last)
    return clone


def _fuse_batch_norms(model: nn.Module) -> None:
    """Fold each eval-mode BatchNorm2d that directly follows a Conv2d in a Sequential into that
    convolution (the same function, one op fewer: BatchNorm was 15% of a mobilenet_v2 forward on
    CPU). Pairs that a block calls by name (ResNet's conv1/bn1...) are left as they are; its
    ``downsample`` Sequential is folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for k in range(len(seq) - 1):
            conv, bn = seq[k], seq[k + 1]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and bn.running_mean is not None):
                seq[k] = fuse_conv_bn_eval(conv, bn)
                seq[k + 1] = nn.Identity()


def _prepare(model: nn.Module, layer: str | None) -> _Prepared:
    fp = _fingerprint(model)
    with _prepared_lock:
        prep = _prepared.get(model)
        if prep is None or prep.fingerprint != fp or (layer is not None and prep.layer_name != layer):
            clone = _copy_for_attribution(model)
            name = layer if layer is not None else find_target_layer(clone)
            clone.get_submodule(name)  # a clear AttributeError for a wrong name
            prep = _Prepared(clone, name, fp, threading.Lock())
            _prepared[model] = prep
    return prep


# Modules whose 4-D output is a resampling of the features, not features: never the CAM layer.
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def find_target_layer(model: nn.Module, *, probe_size: int = DEFAULT_SIZE) -> str:
    """Name of the last convolutional block, the layer Grad-CAM explains.

    ResNet-like models: the last module named ``layer4``. Models with a ``features`` Sequential
    (mobilenet, efficientnet, vgg, densenet, convnext, ...): its last child. Anything else: a
    traced forward pass picks the outermost module, called once, that returns the last spatial
    (N, C, H>1, W>1) feature map before pooling.
    """
    names = dict(model.named_modules())
    for name in reversed(list(names)):
        if name.rpartition(".")[2] == "layer4":
            return name
    for name in reversed(list(names)):
        module = names[name]
        if name.rpartition(".")[2] == "features" and isinstance(module, nn.Sequential) and len(module):
            return f"{name}.{len(module) - 1}"
    return _trace_last_spatial(model, probe_size)


def _trace_last_spatial(model: nn.Module, probe_size: int) -> str:
    calls: dict[str, int] = {}
    outputs: list[tuple[str, torch.Tensor]] = []

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, inp: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if (isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1
                    and out.shape[-2] > 1 and not isinstance(module, _POOLS)):
                outputs.append((name, out))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros(1, 3, probe_size, probe_size, device=device))
    finally:
        for h in handles:
            h.remove()
    if not outputs:
        raise ValueError("no convolutional feature map found in the model: pass layer=NAME")
    last = outputs[-1][1]
    same = [n for n, t in outputs if t is last and calls[n] == 1]
    if not same:
        raise ValueError("the last feature map comes from a module called more than once: pass layer=NAME")
    return min(same, key=lambda n: n.count("."))


# --------------------------------------------------------------------------- methods


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _scale(a: torch.Tensor, *, percentile: float | None) -> torch.Tensor:
    """Non-negative map -> [0, 1], dividing by its max (or a high percentile) and clipping."""
    a = a.clamp_min(0)
    top = a.max() if percentile is None else torch.quantile(a.flatten().float(), percentile / 100)
    if not torch.isfinite(top) or top <= 0:
        top = a.max()
    if top <= 0:
        return torch.zeros_like(a)
    return (a / top).clamp(0, 1)


def _gradcam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, **_: object) -> torch.Tensor:
    from captum.attr import LayerGradCam

    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True)
    return cam[0, 0].detach()


def _ig(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, *, ig_steps: int | None = None,
        internal_batch_size: int | None = None, **_: object) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    attr = IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=target, n_steps=ig_steps or IG_STEPS,
        internal_batch_size=internal_batch_size or IG_BATCH,
    )
    return attr[0].abs().sum(0).detach()


def _guided(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, **_: object) -> torch.Tensor:
    from captum.attr import GuidedBackprop

    with warnings.catch_warnings():  # Captum announces its (temporary) hooks on every call
        warnings.filterwarnings("ignore", category=UserWarning, module="captum")
        attr = GuidedBackprop(model).attribute(x, target=target)
    return attr[0].abs().sum(0).detach()


def occlusion_geometry(height: int, width: int) -> tuple[int, int]:
    """(window, stride) in input pixels for an input of this size."""
    window = max(4, round(min(height, width) / OCCLUSION_FRACTION))
    return window, max(1, window // 2)


def _occlusion(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int, *,
               occlusion_window: int | None = None, occlusion_stride: int | None = None,
               internal_batch_size: int | None = None, **_: object) -> torch.Tensor:
    from captum.attr import Occlusion

    window, stride = occlusion_geometry(x.shape[-2], x.shape[-1])
    window = occlusion_window or window
    stride = occlusion_stride or stride

    def probs(inp: torch.Tensor) -> torch.Tensor:
        return model(inp).softmax(dim=1)

    with torch.no_grad():
        attr = Occlusion(probs).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
            baselines=0.0, target=target, perturbations_per_eval=internal_batch_size or OCCLUSION_BATCH,
        )
    return attr[0, 0].detach()


class _TopClass(nn.Module):
    """The network's top logit as a (1, 1) output: explaining output 0 of this explains the
    predicted class (the gradient of a max is the gradient of its argmax) with no extra forward
    pass. Only for methods that evaluate the network at the input alone (gradcam, guided)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.picked = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        idx = out.detach().argmax(dim=1, keepdim=True)
        self.picked = int(idx[0, 0])
        return out.gather(1, idx)


# Methods that run the network once, at the input: `_TopClass` serves them.
SINGLE_PASS = frozenset({"gradcam", "guided"})

# method -> (function giving a non-negative (h, w) map, percentile used to scale it)
METHODS: dict[str, tuple[Callable[..., torch.Tensor], float | None]] = {
    "gradcam": (_gradcam, None),
    "ig": (_ig, PIXEL_PERCENTILE),
    "guided": (_guided, PIXEL_PERCENTILE),
    "occlusion": (_occlusion, None),
}


@dataclass(frozen=True)
class Attribution:
    """heatmap: (H, W) float32 in [0, 1]; target: the output index it explains."""

    heatmap: np.ndarray
    target: int
    method: str


def explain(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    method: str = DEFAULT_METHOD,
    target: int | None = None,
    *,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    size: int = DEFAULT_SIZE,
    layer: str | None = None,
    output_size: tuple[int, int] | None = None,
    **options: object,
) -> Attribution:
    """Like `attribute`, and also says which output index was explained. ``output_size``
    (height, width) overrides the size of the returned map (default: the photo's)."""
    check_method(method)
    prep = _prepare(model, layer)
    x, out_size = _as_input(image, transform, size)
    net = prep.model
    x = x.to(_device(net))
    if _device(net).type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)  # as the copy's weights (`_copy_for_attribution`)
    fn, percentile = METHODS[method]
    with prep.lock:
        layer_module = net.get_submodule(prep.layer_name)
        if target is None and method in SINGLE_PASS:
            top = _TopClass(net)  # the top class is found in the attribution's own forward pass
            raw = fn(top, layer_module, x, 0, **options)
            target = top.picked
        else:
            if target is None:
                with torch.no_grad():
                    target = int(net(x).argmax(dim=1)[0])
            raw = fn(net, layer_module, x, int(target), **options)
    # Scale at the network's resolution (a percentile of a 50-megapixel map would be dear), then
    # resize onto the photo and bring the top back to exactly 1.
    raw = _scale(torch.nan_to_num(raw.float(), nan=0.0, posinf=0.0, neginf=0.0), percentile=percentile)
    out_size = tuple(output_size) if output_size is not None else out_size
    up = F.interpolate(raw[None, None], size=out_size, mode="bilinear", align_corners=False)[0, 0]
    heat = _scale(up, percentile=None)
    return Attribution(heat.cpu().numpy().astype(np.float32), target, method)


def attribute(
    model: nn.Module,
    image: Image.Image | torch.Tensor,
    method: str = DEFAULT_METHOD,
    target: int | None = None,
    **kwargs: Any,  # noqa: ANN401 - the keyword options of `explain`
) -> np.ndarray:
    """Heatmap of where ``model`` looked to score class ``target`` on ``image``.

    model: a classifier returning logits (1, n_classes); it is not modified (see module doc).
    image: a PIL photo (preprocessed by ``transform``, default `preprocess(size=size)`) or an
        already normalised tensor (3, H, W) / (1, 3, H, W).
    method: one of ``METHOD_NAMES``.
    target: output index to explain; None = the model's top class.
    layer: Grad-CAM layer name; None = `find_target_layer`.
    output_size: (height, width) of the map, if not the photo's (e.g. `input_size` for storage).
    kwargs: ``transform``, ``size``, ``layer``, ``output_size`` as for `explain`, and the options
    ``ig_steps``, ``internal_batch_size``, ``occlusion_window``, ``occlusion_stride``.

    Returns (H, W) float32 in [0, 1] at the size of the photo (or of the tensor).
    """
    return explain(model, image, method, target, **kwargs).heatmap


# --------------------------------------------------------------------------- pictures


@functools.lru_cache(maxsize=32)
def _colorbar(height: int, cmap: str) -> Image.Image:
    """A vertical colour bar ``COLORBAR_WIDTH`` x ``height`` rendered with matplotlib's Agg."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(COLORBAR_WIDTH / dpi, height / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    margin = min(0.08, 12 / height)
    ax = fig.add_axes((0.12, margin, 0.22, 1 - 2 * margin))
    bar = ColorbarBase(ax, cmap=colormaps[cmap], norm=Normalize(0, 1), orientation="vertical")
    bar.set_ticks([0.0, 0.5, 1.0])
    bar.ax.tick_params(labelsize=max(6, min(10, height // 40)))
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy()).resize((COLORBAR_WIDTH, height))


def overlay(
    image: Image.Image,
    heatmap: np.ndarray,
    *,
    cmap: str = DEFAULT_CMAP,
    colorbar: bool = True,
) -> Image.Image:
    """The heatmap (H', W') coloured with ``cmap`` over the photo (W, H), resized to the photo.

    Returns an RGB image of (W + COLORBAR_WIDTH, H) with the colour bar, or (W, H) without.
    """
    from matplotlib import colormaps

    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    photo = image.convert("RGB")
    w, h = photo.size
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    colours = colormaps[cmap](heat)[..., :3].astype(np.float32)  # (H, W, 3) in [0, 1]
    alpha = (OVERLAY_ALPHA_MIN + (OVERLAY_ALPHA_MAX - OVERLAY_ALPHA_MIN) * heat)[..., None]
    base = np.asarray(photo, dtype=np.float32) / 255.0
    mixed = (1 - alpha) * base + alpha * colours
    out = Image.fromarray((mixed * 255 + 0.5).astype(np.uint8))
    if not colorbar:
        return out
    canvas = Image.new("RGB", (w + COLORBAR_WIDTH, h), "white")
    canvas.paste(out, (0, 0))
    canvas.paste(_colorbar(h, cmap), (w, 0))
    return canvas


def resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) -> ``size`` = (height, width), bilinear, float32."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape == tuple(size):
        return heat
    return np.asarray(Image.fromarray(heat, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR))


def average_maps(heatmaps: Iterable[np.ndarray], *, size: tuple[int, int] = AVERAGE_SIZE) -> np.ndarray:
    """Class-average map: the mean of per-item heatmaps, each resized to ``size`` (height, width).

    Returns (height, width) float32 in [0, 1], rescaled so its maximum is 1 (the mean of maps
    that disagree is flat; the rescale keeps the pattern readable under a colour map).
    """
    total = np.zeros(size, dtype=np.float64)
    n = 0
    for heat in heatmaps:
        total += resize_map(heat, size)
        n += 1
    if n == 0:
        raise ValueError("no heatmaps to average")
    mean = total / n
    top = mean.max()
    return (mean / top if top > 0 else mean).astype(np.float32)


def average_image(images: Sequence[Image.Image], *, size: tuple[int, int] = AVERAGE_SIZE) -> Image.Image:
    """The pixel mean of the photos, each resized to ``size`` (height, width): the backdrop of a
    class-average map."""
    if not images:
        raise ValueError("no images to average")
    total = np.zeros((*size, 3), dtype=np.float64)
    for im in images:
        total += np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return Image.fromarray((total / len(images) + 0.5).astype(np.uint8))
