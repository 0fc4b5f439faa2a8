"""The torch-free registries agree with what implements them."""

from __future__ import annotations


def test_backbone_registry_matches_torchvision() -> None:
    from active.backbones import REGISTRY, default_weights
    from models.backbones import build, classification_models, embedding_dim

    known = set(classification_models())
    for b in REGISTRY.values():
        assert b.name in known
        assert embedding_dim(build(b.name, None, "none")) == b.embedding_dim, b.name
    assert default_weights("resnet50") == "IMAGENET1K_V1" and default_weights("some_new_net") == "IMAGENET1K_V1"


def test_dispute_rules_cover_every_reason_and_export_formats_every_writer() -> None:
    from active.disputes import RULES
    from active.export import FORMATS
    from storage.disputes import QUEUES
    from storage.enums import DisputeReason

    assert set(RULES) == {r.value for r in DisputeReason}
    assert all(r.reason in QUEUES[r.queue] for r in RULES.values())
    assert {n for n, f in FORMATS.items() if f.table is None} == {"hf"}  # per-split metadata instead
