"""Fixtures shared by every test package: synthetic images, projects, the shared data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ACTIVE_SHARED", REPO.parent / "shared")).resolve()
DATASET = SHARED / "datasets" / "clothing-small"
TORCH_HOME = SHARED / "torch"

# Tests never download: torchvision finds mobilenet_v2's weights under ../shared/torch or fails,
# and downloads are off for every test and the processes they start (the download tests patch
# `models.backbones.download_weights` and turn it back on).
if TORCH_HOME.is_dir():
    os.environ.setdefault("TORCH_HOME", str(TORCH_HOME))
os.environ["ACTIVE_OFFLINE"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
    for item in items:
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture
def shared_dataset() -> Path:
    """../shared/datasets/clothing-small, or skip (the suite still runs without a copy)."""
    if not DATASET.is_dir():
        pytest.skip(f"{DATASET} not found: the real-data tests need ../shared beside the checkout")
    return DATASET


@pytest.fixture
def mobilenet_weights() -> Path:
    path = TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        pytest.skip(f"{path} not found: the real-weights tests need ../shared/torch")
    return path


def shared_images(per_class: int, split: str = "train") -> dict[str, list[Path]]:
    """The first ``per_class`` images of each class of a shared split (sorted, deterministic)."""
    out = {}
    for folder in sorted((DATASET / split).iterdir()):
        if folder.is_dir():
            out[folder.name] = sorted(folder.iterdir())[:per_class]
    return out


COLOURS = [(220, 40, 40), (40, 160, 60), (40, 70, 210), (230, 200, 30), (150, 50, 170), (30, 190, 190)]


def draw_image(path: Path, cls: int, *, seed: int = 0, size: tuple[int, int] = (64, 48), mode: str = "RGB",
               fmt: str | None = None, colour: int | None = None) -> Path:
    """A small synthetic product photo: a shape whose colour and form depend on ``cls``; with
    ``colour`` the fill is ``COLOURS[colour]`` instead, so form and colour are two independent
    label fields (form: rectangle for even ``cls``, ellipse for odd)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, (245, 245, 245))
    d = ImageDraw.Draw(im)
    w, h = size
    x0, y0 = rng.integers(0, w // 4), rng.integers(0, h // 4)
    box = (x0, y0, x0 + w // 2 + rng.integers(0, w // 4), y0 + h // 2 + rng.integers(0, h // 4))
    fill = COLOURS[(cls if colour is None else colour) % len(COLOURS)]
    (d.ellipse if cls % 2 else d.rectangle)(box, fill=fill)
    noise = rng.integers(0, 12, size=(h, w, 3), dtype=np.uint8)
    im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) - noise, 0, 255).astype(np.uint8))
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return draw_image


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """tmp/photos/<class>/<n>.png: 3 classes x 4 synthetic images."""
    root = tmp_path / "photos"
    for c, name in enumerate(["dress", "shirt", "shoes"]):
        for n in range(4):
            draw_image(root / name / f"{n}.png", c, seed=c * 100 + n)
    return root


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A fresh project (SQLite file, WAL) with the clothing10 taxonomy, made through the CLI."""
    from active.cli import main

    root = tmp_path / "proj"
    assert main(["init", str(root), "--classes", "dress,shirt,shoes", "--backbone", "mobilenet_v2"]) == 0
    return root


@pytest.fixture
def project(project_dir: Path):  # noqa: ANN201
    from active.project import Project

    return Project.load(project_dir)


# --------------------------------------------------------------------------- PostgreSQL

PG_ENV = "ACTIVE_TEST_PG_URL"


def _pg_admin_url() -> str:
    """The server URL from ACTIVE_TEST_PG_URL, or skip saying why there is none."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL server to test against (.ci/run starts one)")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "no server": skip with the reason
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return url


@pytest.fixture
def pg_url():  # noqa: ANN201
    """The URL of a fresh, empty PostgreSQL database (dropped after the test), or skip."""
    import uuid

    import sqlalchemy as sa

    admin_url = _pg_admin_url()
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
