"""The labeller's calls into other engineers' modules, in one place.

`Services` bundles them so tests can hand in small fakes and the app never imports torch or
captum itself. `default_services()` binds the real functions: attribution maps from
`active.explain`, embeddings from `active.scoring`, an uploaded photo's embedding from `active.grid`, the head refresh of `active.policy` and
the class-average maps (both queued as jobs for a worker), and disputes from `storage.disputes`;
every item's map is made in a child process (`labeler.mapchild`). The imports are lazy so that the app
loads torch only when an attribution or embedding is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from active.project import Project
from labeler.mapchild import ChildMaps


@dataclass
class Services:
    # (project, item_id, *, version_id, method, target) -> overlay picture path
    explain_item: Callable[..., Path]
    # (project, cls, *, version_id, method) -> class-average picture path, None while a worker makes it
    class_average: Callable[..., Path | None]
    # (project, version_id) -> (item_ids (n,), embeddings (n, d))
    load_embeddings: Callable[[Project, int], tuple[np.ndarray, np.ndarray]]
    # (project) -> True when it started a background retrain
    maybe_refresh: Callable[[Project], bool]
    # (session, *, limit) -> open Dispute rows, highest score first
    open_disputes: Callable[..., list[Any]]
    # (session, dispute_id, label_row) -> marks it resolved by that review label
    resolve_dispute: Callable[..., Any]
    # (project, version_id, photo path) -> (embedding (d,), the version's top class for it)
    embed_photo: Callable[[Project, int, str], tuple[np.ndarray, str]] | None = None
    # (project) -> whether it loaded the serving network: run once before the server listens
    warm_up: Callable[[Project], bool] | None = None
    # where the default method's maps are made, every item's (None: by explain_item, in this process)
    maps_child: ChildMaps | None = None


def default_services() -> Services:
    """The real implementations (imported lazily; torch loads only when an attribution is asked)."""

    def explain_item(project: Project, item_id: int, **kw: Any) -> Path:
        from active.explain import explain_item as impl

        return impl(project, item_id, **kw)

    def class_average(project: Project, cls: str, **kw: Any) -> Path | None:
        from active import jobs
        from active.explain import class_average as impl

        # Attribution over many photos is heavy work: a worker's job makes the maps, never this process.
        path = impl(project, cls, cached_only=True, **kw)
        if path is None:
            jobs.enqueue(project, "class_averages", {"version_id": kw.get("version_id"), "method": kw.get("method")},
                         requested_by="labeller")
        return path

    def load_embeddings(project: Project, version_id: int) -> tuple[np.ndarray, np.ndarray]:
        from active.scoring import load_embeddings as impl

        return impl(project, version_id)

    def maybe_refresh(project: Project) -> bool:
        from active.policy import maybe_refresh as impl

        return bool(impl(project))

    def open_disputes(session: Any, *, limit: int) -> list[Any]:
        from storage import disputes

        return list(disputes.open_disputes(session, limit=limit))

    def resolve_dispute(session: Any, dispute_id: int, label_row: Any) -> Any:
        from storage import disputes

        return disputes.resolve(session, dispute_id, label_row)

    def embed_photo(project: Project, version_id: int, path: str) -> tuple[np.ndarray, str]:
        from active.grid import embed_photo as impl

        return impl(project, version_id, path)

    def warm_up(project: Project) -> bool:
        from active.explain import warm_up as impl

        return impl(project)

    return Services(explain_item, class_average, load_embeddings, maybe_refresh, open_disputes, resolve_dispute,
                    embed_photo, warm_up, ChildMaps())
