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


def test_labeller_maps_are_made_in_a_niced_child_process(trained) -> None:
    """`labeler.mapchild.ChildMaps`: the child writes the map into the project's cache (the
    in-process call then finds it), runs at a lower priority, and a child that dies is replaced
    without losing the map asked for."""
    import os
    import signal

    from active import explain as ax
    from labeler.mapchild import ChildMaps
    from storage import db, items, versions

    project = trained
    current = modelstore.current_version(project)
    with db.session(project.engine) as s:
        ids = items.ids(s)[:2]
        preds = versions.predictions(s, current.id, ids)
    maps = ChildMaps(nice=5)
    try:
        pid = maps.pid()
        assert pid != os.getpid()
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)
        path = maps.explain_item(project, ids[0], version_id=current.id, method="gradcam", target=preds[ids[0]].pred)
        again = ax.explain(project, ids[0], version_id=current.id, method="gradcam", target=preds[ids[0]].pred)
        assert again.cached and again.image == path and path.stat().st_size > 0

        os.kill(pid, signal.SIGKILL)
        other = maps.explain_item(project, ids[1], version_id=current.id, method="gradcam",
                                  target=preds[ids[1]].pred)
        assert other.is_file()
        assert maps.pid() != pid  # a new child took over
    finally:
        maps.close()


def test_the_map_child_exits_with_its_labeller(tmp_path: Path) -> None:
    """A labeller killed with SIGKILL leaves no map process behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from labeler.mapchild import ChildMaps\n"
        "if __name__ == '__main__':\n"
        "    m = ChildMaps(nice=0)\n"
        "    print(m.pid(), flush=True)\n"
        "    time.sleep(600)\n")
    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:  # gone, or a zombie nobody reaped yet (a container's init may not)
            if Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the map child outlived its killed labeller")
