"""Hashes of label snapshots, one function per thing hashed. Equal snapshots give equal hashes
on any machine; labels are append-only, so a recorded hash can be recomputed from the store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def labels_hash(pairs: Iterable[tuple[int, str]]) -> str:
    """sha256 of sorted (item id, class) pairs: the training set a version learnt from, or the
    holdout labels it was evaluated on."""
    h = hashlib.sha256()
    for item_id, label in sorted(pairs):
        h.update(f"{item_id}\t{label}\n".encode())
    return h.hexdigest()


def export_hash(rows: Iterable[tuple[str, str, str]]) -> str:
    """sha256 of sorted (item sha256, class, source) rows: an export's labels, independent of the
    store's item ids (equal stores give equal hashes)."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update(json.dumps(list(row), ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()
