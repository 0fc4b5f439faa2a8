"""The audit trail of labels: every row of one item, and the items whose label changed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from active.errors import UserError
from active.project import Project
from storage import db, items, labels, pages
from storage.enums import Decision
from storage.fields import DEFAULT_FIELD
from storage.labels import CurrentLabel
from storage.meaning import in_field
from storage.tables import Item, Label

_HEX = re.compile(r"[0-9a-f]+")
MIN_SHA_PREFIX = 6


def find_item(session: Any, ref: str) -> Item:
    """The item named by ``ref``: its id, its sha256 (or a unique prefix), or its file path."""
    ref = ref.strip()
    if ref.isdigit():
        item = items.get(session, int(ref))
        if item is not None:
            return item
    low = ref.lower()
    if len(low) >= MIN_SHA_PREFIX and _HEX.fullmatch(low):
        found = items.by_sha_prefix(session, low, limit=2)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{ref!r} matches several items' sha256: give more characters")
    for path in dict.fromkeys([ref, str(Path(ref).absolute())]):
        item = items.by_path(session, path)
        if item is not None:
            return item
    raise UserError(f"no item {ref!r}: give an item id, a sha256 (prefix of {MIN_SHA_PREFIX}+ characters) "
                    "or the image's path")


def _current_dict(cur: CurrentLabel | None) -> dict[str, Any] | None:
    if cur is None:
        return None
    return {"label": cur.label, "source": cur.source, "label_id": cur.label_id, "n_human": cur.n_human,
            "agreement": cur.agreement, "imported": cur.imported}


def row_dict(row: Label, undone_by: dict[int, int], on_pages: set[int] = frozenset()) -> dict[str, Any]:
    """One label row; ``page`` is the page (Grid tab) it was given on, if it was."""
    return {
        "id": row.id, "created_at": row.created_at.isoformat(), "field": row.field, "source": row.source,
        "annotator": row.annotator, "kind": row.kind,
        "decision": row.decision, "label": row.label, "suggestion": row.suggestion,
        "confidence": row.confidence, "model_version": row.model_version_id, "round": row.round_id,
        "undoes": row.undoes_id, "undone_by": undone_by.get(row.id or 0),
        "page": row.round_id if row.round_id in on_pages else None,
    }


def history(project: Project, ref: str) -> dict[str, Any]:
    """The item, its current label (``current``: the default field's; ``current_by_field``: every
    field's the project has) and every label row (oldest first), as a JSON-able dict."""
    with db.session(project.engine) as s:
        item = find_item(s, ref)
        rows = labels.for_items(s, [item.id or 0]).get(item.id or 0, [])
        on_pages = pages.page_ids(s, (r.round_id for r in rows))
    undone_by = {r.undoes_id: r.id or 0 for r in rows if r.decision == Decision.UNDO and r.undoes_id is not None}
    return {
        "item": {"id": item.id, "sha256": item.sha256, "path": item.path, "split": item.split,
                 "source": item.source, "meta": item.meta},
        "current": _current_dict(labels.derive(rows)),
        "current_by_field": {f: _current_dict(labels.derive(rows, f)) for f in project.field_names},
        "labels": [row_dict(r, undone_by, on_pages) for r in rows],
    }


def parse_since(text: str) -> datetime:
    """An ISO date or datetime; without a zone it is taken as UTC (the store's clock)."""
    text = text.strip()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        try:
            when = datetime.combine(date.fromisoformat(text), time())
        except ValueError:
            raise UserError(f"--since {text!r}: give an ISO date or datetime, e.g. 2024-05-01 or "
                            "2024-05-01T14:30:00+02:00") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


@dataclass(frozen=True)
class Change:
    item_id: int
    path: str
    before: CurrentLabel | None
    after: CurrentLabel | None
    changed_at: datetime  # the newest label row since the date
    by: str  # who wrote that row

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "path": self.path, "before": _current_dict(self.before),
                "after": _current_dict(self.after), "changed_at": self.changed_at.isoformat(), "by": self.by}


def changes(project: Project, since: datetime, *, field: str = DEFAULT_FIELD) -> list[Change]:
    """Items whose current label (class) of ``field`` differs between the store as of ``since`` and now.

    The label as of ``since`` is derived from the rows created before it, so a label that was
    changed and changed back is not listed, and an undo counts from when it was written.
    """
    with db.session(project.engine) as s:
        ids = labels.item_ids_since(s, since)
        grouped = labels.for_items(s, ids) if ids else {}
        paths = items.paths(s, ids) if ids else {}
    out: list[Change] = []
    for item_id in sorted(grouped):
        rows: Sequence[Label] = grouped[item_id]
        before = labels.derive([r for r in rows if r.created_at < since], field)
        after = labels.derive(rows, field)
        if (before.label if before else None) == (after.label if after else None):
            continue
        newest = max((r for r in in_field(rows, field) if r.created_at >= since),
                     key=lambda r: (r.created_at, r.id or 0))
        out.append(Change(item_id, paths.get(item_id, ""), before, after, newest.created_at, newest.annotator))
    return out
