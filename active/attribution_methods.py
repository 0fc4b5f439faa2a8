"""The attribution methods: one registry, without torch, that the CLI's choices, the labeller's
list and `active.explain` read. `models.explain.METHODS` holds the torch implementation of each
name (a test checks that the two agree); adding a method is one entry here plus its function there.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnknownMethodError(ValueError):
    """No attribution method of that name; the message lists the valid ones."""


@dataclass(frozen=True)
class AttributionMethod:
    name: str
    display: str  # what the labeller's list shows
    single_pass: bool  # one forward and backward pass: cheap enough to compute ahead of the annotator
    help: str


REGISTRY: dict[str, AttributionMethod] = {
    m.name: m
    for m in (
        AttributionMethod("gradcam", "Grad-CAM", True, "class activation of the last convolutional block"),
        AttributionMethod("ig", "Integrated Gradients", False, "path integral of pixel gradients from a black image"),
        AttributionMethod("guided", "Guided Backprop", True, "gradients passed only through positive activations"),
        AttributionMethod("occlusion", "Occlusion", False, "how much hiding each patch lowers the class score"),
    )
}
DEFAULT_METHOD = "gradcam"


def get(name: str) -> AttributionMethod:
    """The method ``name``, or `UnknownMethodError` listing the valid names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown attribution method {name!r}: use one of {', '.join(REGISTRY)}") from None
