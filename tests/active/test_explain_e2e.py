"""`active explain` on versions made by the real pipeline: `active score` (pretrained
mobilenet_v2) then `active retrain --mode head`, on 12 small copies of shared photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from active import modelstore
from active.cli import main
from tests.conftest import TORCH_HOME, shared_images

pytestmark = pytest.mark.slow
CLASSES = ["dress", "shirt", "shoes"]
PER_CLASS = 4
PHOTO_SIZE = (120, 160)


@pytest.fixture
def trained(tmp_path: Path, shared_dataset: Path):  # noqa: ANN201
    from active.project import Project

    if not (TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file():
        pytest.skip("mobilenet_v2 weights not found under ../shared/torch")
    src = tmp_path / "photos"
    picked = shared_images(PER_CLASS)
    for cls in CLASSES:
        (src / cls).mkdir(parents=True)
        for p in picked[cls]:
            Image.open(p).convert("RGB").resize(PHOTO_SIZE).save(src / cls / f"{p.stem}.jpg", quality=90)
    root = tmp_path / "proj"
    assert main(["init", str(root), "--classes", ",".join(CLASSES), "--backbone", "mobilenet_v2",
                 "--weights", "IMAGENET1K_V1"]) == 0
    assert main(["--project", str(root), "import", str(src), "--no-progress"]) == 0
    modelstore.clear_cache()
    assert main(["--project", str(root), "score", "--workers", "0", "--no-progress"]) == 0
    assert main(["--project", str(root), "retrain", "--mode", "head", "--workers", "0", "--no-progress"]) == 0
    yield Project.load(root)
    modelstore.clear_cache()


def test_explain_real_versions(trained, tmp_path, capsys) -> None:
    from active import explain as ax
    from storage import db, items, versions

    project = trained
    current = modelstore.current_version(project)
    assert current.mode == "head" and current.classes == CLASSES
    with db.session(project.engine) as s:
        item_id = items.ids(s)[0]
        pred = versions.predictions(s, current.id, [item_id])[item_id].pred
    loaded = modelstore.load_model(project, current.id)
    inplace_before = {n: m.inplace for n, m in loaded.model.named_modules() if hasattr(m, "inplace")}

    out = tmp_path / "map.png"
    assert main(["--project", str(project.root), "--json", "explain", str(item_id), "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == current.id and data["target"] == pred and not data["cached"]
    with Image.open(out) as im:  # asked for as .png: re-encoded from the cached JPEG
        assert im.format == "PNG" and im.size == (PHOTO_SIZE[0] + 72, PHOTO_SIZE[1])
    heat = ax.load_heatmap(Path(data["heatmap"]))
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01

    # the given and the suggested class side by side (the review tab)
    other = next(c for c in CLASSES if c != pred)
    side = ax.explain(project, item_id, target=other)
    assert side.target == other and not np.array_equal(ax.load_heatmap(side), heat)

    # the pretrained version explains its own top ImageNet output
    first = ax.explain(project, item_id, version_id=1)
    assert first.target is None and first.image.is_file()

    png = ax.class_average(project, pred, limit=4)
    assert png.is_file() and json.loads(png.with_suffix(".json").read_text())["items"]
    inplace_after = {n: m.inplace for n, m in loaded.model.named_modules() if hasattr(m, "inplace")}
    assert inplace_after == inplace_before and any(inplace_before.values())
