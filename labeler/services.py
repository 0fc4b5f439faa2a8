"""The labeller's calls into other engineers' modules, in one place.

`Services` bundles them so tests can hand in small fakes and the app never imports torch or
captum itself. `default_services()` binds the real functions: attribution maps from
`active.explain`, embeddings from `active.scoring`, the background head refresh of
`active.policy`, and disputes from `storage.disputes`. A module that is missing makes only its
feature say so on the page; labelling keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from active.project import Project


class Unavailable(RuntimeError):
    """A feature whose module is not installed in this build; the message names it."""


@dataclass
class Services:
    # (project, item_id, *, version_id, method, target) -> overlay PNG path
    explain_item: Callable[..., Path]
    # (project, cls, *, version_id, method) -> class-average PNG path
    class_average: Callable[..., Path]
    # (project, version_id) -> (item_ids (n,), embeddings (n, d))
    load_embeddings: Callable[[Project, int], tuple[np.ndarray, np.ndarray]]
    # (project) -> True when it started a background retrain
    maybe_refresh: Callable[[Project], bool]
    # (session, *, limit) -> open Dispute rows, highest score first
    open_disputes: Callable[..., list[Any]]
    # (session, dispute_id, label_row) -> marks it resolved by that review label
    resolve_dispute: Callable[..., Any]


def _missing(what: str, module: str) -> Callable[..., Any]:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise Unavailable(f"{what} needs {module}, which this build does not have yet")

    return fail


def default_services() -> Services:
    """The real implementations (imported lazily; torch loads only when an attribution is asked)."""

    def explain_item(project: Project, item_id: int, **kw: Any) -> Path:
        try:
            from active.explain import explain_item as impl
        except ImportError:
            return _missing("attribution maps", "active.explain")()
        return impl(project, item_id, **kw)

    def class_average(project: Project, cls: str, **kw: Any) -> Path:
        try:
            from active.explain import class_average as impl
        except ImportError:
            return _missing("class-average attention maps", "active.explain")()
        return impl(project, cls, **kw)

    def load_embeddings(project: Project, version_id: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            from active.scoring import load_embeddings as impl
        except ImportError:
            return _missing("similar items", "active.scoring")()
        return impl(project, version_id)

    def maybe_refresh(project: Project) -> bool:
        try:
            from active.policy import maybe_refresh as impl
        except ImportError:
            return False  # no policy module: retraining is then only by hand (`active retrain`)
        return bool(impl(project))

    def open_disputes(session: Any, *, limit: int) -> list[Any]:
        try:
            from storage import disputes
        except ImportError:
            return _missing("the review queue", "storage.disputes")()
        return list(disputes.open_disputes(session, limit=limit))

    def resolve_dispute(session: Any, dispute_id: int, label_row: Any) -> Any:
        try:
            from storage import disputes
        except ImportError:
            return _missing("resolving disputes", "storage.disputes")()
        return disputes.resolve(session, dispute_id, label_row)

    return Services(explain_item, class_average, load_embeddings, maybe_refresh, open_disputes, resolve_dispute)
