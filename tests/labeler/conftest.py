"""A running labeller on a free local port with a synthetic project, driven by gradio_client.

Other engineers' heavy pieces (attribution maps, embeddings, disputes, the retrain policy) are
replaced by small fakes with the same signatures, so these tests need no torch model.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlmodel import select

from storage import db, users, versions, work
from storage.tables import Dispute, Item, ModelVersion, Prediction
from tests.conftest import draw_image

CLASSES = ["dress", "shirt", "shoes"]
PASSWORD = "correct horse"
N_ITEMS = 12
EMB_DIM = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Fakes:
    """Stand-ins for active.explain / active.scoring / active.policy / storage.disputes."""

    folder: Path
    embeddings: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    refresh_calls: int = 0
    refresh_starts: bool = False
    explained: list[tuple] = field(default_factory=list)

    def explain_item(self, project, item_id, *, version_id=None, method="gradcam", target=None):  # noqa: ANN001
        self.explained.append((item_id, version_id, method, target))
        out = self.folder / f"ex-{item_id}-{version_id}-{method}-{target}.png"
        Image.new("RGB", (32, 32), (200, 30 * len(method) % 255, 40)).save(out)
        return out

    def class_average(self, project, cls, *, version_id=None, method="gradcam"):  # noqa: ANN001
        out = self.folder / f"avg-{cls}-{version_id}.png"
        Image.new("RGB", (32, 32), (20, 90, 200)).save(out)
        return out

    def load_embeddings(self, project, version_id):  # noqa: ANN001
        return self.embeddings[version_id]

    def maybe_refresh(self, project) -> bool:  # noqa: ANN001
        self.refresh_calls += 1
        return self.refresh_starts

    def open_disputes(self, session, *, limit):  # noqa: ANN001
        from storage import disputes

        return disputes.open_disputes(session, limit=limit)  # the review queue (holdout ones are apart)

    def resolve_dispute(self, session, dispute_id, label_row):  # noqa: ANN001
        d = session.get(Dispute, dispute_id)
        d.status = "resolved"
        d.resolution_label_id = label_row.id
        session.add(d)


def add_version(project, item_ids: list[int], *, seed: int, fakes: Fakes, n_labels: int = 0,
                accuracy: float | None = None) -> int:
    """Publish a synthetic head version with predictions (and embeddings) for ``item_ids``."""
    rng = np.random.default_rng(seed)

    def fn(s):  # noqa: ANN001, ANN202
        v = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="IMAGENET1K_V1", mode="head",
                                             classes=CLASSES, n_labels=n_labels,
                                             metrics={"holdout": {"accuracy": accuracy}} if accuracy else {}))
        rows = []
        for row, i in enumerate(item_ids):
            p = rng.dirichlet(np.ones(len(CLASSES)))
            order = np.sort(p)[::-1]
            rows.append(Prediction(item_id=i, model_version_id=v.id, pred=CLASSES[int(p.argmax())],
                                   confidence=float(p.max()), margin=float(order[0] - order[1]),
                                   entropy=0.0, probs=p.tolist(), row=row))
        versions.add_predictions(s, rows)
        return v.id

    vid = db.write(project.engine, fn)
    fakes.embeddings[vid] = (np.asarray(item_ids, dtype=np.int64),
                             rng.normal(size=(len(item_ids), EMB_DIM)).astype(np.float32))
    return vid


@dataclass
class Running:
    url: str
    project: object
    app: object
    fakes: Fakes
    item_ids: list[int]
    version_id: int

    def client(self, name: str):  # noqa: ANN201
        from gradio_client import Client

        return Client(self.url, auth=(name, PASSWORD), verbose=False)


@pytest.fixture
def labeller(project, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    """The running app; ``indirect`` parametrisation passes extra `launch` keywords."""
    from active.importer import import_candidates, scan_folder
    from labeler.app import launch
    from labeler.services import Services

    photos = tmp_path / "photos"
    for n in range(N_ITEMS):
        draw_image(photos / f"{n:02d}.png", n % 3, seed=n, size=(96, 128))
    cands, _skipped, _layout = scan_folder(photos)
    import_candidates(project, cands, progress=False)
    with db.session(project.engine) as s:
        item_ids = list(s.exec(select(Item.id).order_by(Item.id)))
    fakes = Fakes(tmp_path)
    vid = add_version(project, item_ids, seed=1, fakes=fakes, accuracy=0.5)

    def setup(s):  # noqa: ANN001, ANN202
        work.open_round(s, strategy="margin", model_version_id=vid, item_ids=item_ids,
                        scores=[0.01 * k for k in range(len(item_ids))], score_name="margin")
        users.add(s, "ann", PASSWORD, role="annotator")
        users.add(s, "bob", PASSWORD, role="annotator")
        users.add(s, "rev", PASSWORD, role="reviewer")

    db.write(project.engine, setup)
    services = Services(fakes.explain_item, fakes.class_average, fakes.load_embeddings, fakes.maybe_refresh,
                        fakes.open_disputes, fakes.resolve_dispute)
    port = free_port()
    demo, app = launch(project, host="127.0.0.1", port=port, services=services, block=False, quiet=True,
                       **getattr(request, "param", {}))
    try:
        yield Running(f"http://127.0.0.1:{port}/", project, app, fakes, item_ids, vid)
    finally:
        demo.close()
        app.close()
