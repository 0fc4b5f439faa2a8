"""The backbones we know well: one registry, without torch, that `active init` reads for its
default and its help. Any other torchvision classifier still works by name (`models.backbones`
builds whatever torchvision lists); an entry here adds what a user should know before choosing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    name: str  # torchvision's model name
    display: str
    weights: str  # the torchvision weights enum `active init` picks by default
    embedding_dim: int  # width of the penultimate features (what head retrains and kcenter use)
    note: str


REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("mobilenet_v2", "MobileNetV2", "IMAGENET1K_V1", 1280, "fast on CPU; the sample project's"),
        Backbone("resnet18", "ResNet-18", "IMAGENET1K_V1", 512, "small and quick to fine-tune"),
        Backbone("resnet50", "ResNet-50", "IMAGENET1K_V1", 2048, "the default: accurate, a GPU helps"),
        Backbone("efficientnet_b0", "EfficientNet-B0", "IMAGENET1K_V1", 1280, "accurate for its size"),
        Backbone("convnext_tiny", "ConvNeXt-T", "IMAGENET1K_V1", 768, "strong features, slower on CPU"),
    )
}
DEFAULT_BACKBONE = "resnet50"
# For a backbone outside the registry: the enum name nearly every torchvision classifier has.
FALLBACK_WEIGHTS = "IMAGENET1K_V1"


def default_weights(backbone: str) -> str:
    """The weights `active init` uses for ``backbone`` when none are given."""
    entry = REGISTRY.get(backbone)
    return entry.weights if entry is not None else FALLBACK_WEIGHTS
