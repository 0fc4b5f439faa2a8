"""active/explain.py and `active explain`: cached overlays per (item, version, method, class),
class averages, clear errors. Model versions are inserted directly and `_load_model` returns
mobilenet_v2 (real weights) with a seeded 3-class head, so these tests do not depend on how
versions are trained; tests/active/test_explain_e2e.py runs the real modelstore. (Named apart from
tests/models/test_explain.py: the test folders are not packages, so basenames must differ.)"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from active import explain as ax
from active.cli import main
from active.errors import UserError
from tests.conftest import shared_images

CLASSES = ["dress", "shirt", "shoes"]


@pytest.fixture(scope="module")
def networks():
    """version mode -> network: the ImageNet mobilenet_v2, and the same with a 3-class head."""
    import torch
    import torchvision

    from tests.conftest import TORCH_HOME

    if not (TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth").is_file():
        pytest.skip("mobilenet_v2 weights not found under ../shared/torch")
    pretrained = torchvision.models.get_model("mobilenet_v2", weights="IMAGENET1K_V1").eval()
    head = torchvision.models.get_model("mobilenet_v2", weights="IMAGENET1K_V1").eval()
    # A head that means something: ImageNet's gown, jersey and running shoe rows.
    imagenet_rows = [578, 610, 770]
    linear = torch.nn.Linear(1280, len(CLASSES))
    with torch.no_grad():
        linear.weight.copy_(pretrained.classifier[1].weight[imagenet_rows])
        linear.bias.copy_(pretrained.classifier[1].bias[imagenet_rows])
    head.classifier[1] = linear
    return {"pretrained": pretrained, "head": head.eval()}


@pytest.fixture
def explained(project_dir: Path, tmp_path: Path, shared_dataset: Path, networks, monkeypatch):
    """A project with 2 real photos per class (small copies), a pretrained v1 and a head v2 with
    predictions; `_load_model` counts its calls."""
    from active.project import Project
    from storage import db, versions
    from storage.tables import ModelVersion, Prediction

    src = tmp_path / "photos"
    picked = shared_images(2)
    for cls in CLASSES:
        (src / cls).mkdir(parents=True)
        for p in picked[cls]:
            Image.open(p).convert("RGB").resize((120, 160)).save(src / cls / f"{p.stem}.jpg", quality=90)
    assert main(["--project", str(project_dir), "import", str(src), "--no-progress"]) == 0
    project = Project.load(project_dir)
    project.config.image_size = 112  # small inputs keep the tests fast
    with db.session(project.engine) as s:
        from storage import items

        ids = items.ids(s)
    assert len(ids) == 6

    def publish(s):
        v1 = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="IMAGENET1K_V1", mode="pretrained"))
        v2 = versions.publish(s, ModelVersion(backbone="mobilenet_v2", weights="IMAGENET1K_V1", mode="head",
                                              parent_id=v1.id, classes=CLASSES))
        rows = [Prediction(item_id=i, model_version_id=v2.id, pred=CLASSES[n % 3], confidence=0.5 + n / 20,
                           probs=[0.2, 0.3, 0.5], row=n) for n, i in enumerate(ids)]
        versions.add_predictions(s, rows)
        return v1.id, v2.id

    v1, v2 = db.write(project.engine, publish)
    calls: list[int] = []

    def load(project, version, field="category"):
        calls.append(version.id)
        return SimpleNamespace(model=networks[version.mode], classes=list(version.classes), transform=None)

    monkeypatch.setattr(ax, "_load_model", load)
    return SimpleNamespace(project=project, ids=ids, v1=v1, v2=v2, calls=calls)


def test_default_target_is_predicted_class_and_cache_is_reused(explained) -> None:
    project, item = explained.project, explained.ids[1]
    first = ax.explain(project, item)
    assert first.version_id == explained.v2 and first.target == "shirt" and not first.cached
    assert first.image == project.artifacts / "attributions" / f"v{explained.v2}" / "gradcam" / f"{item}-c1.jpg"
    with Image.open(first.image) as im:
        assert im.format == "JPEG"
        assert im.size == (120 + 72, 160)  # photo + colour bar
    heat = ax.load_heatmap(first)
    assert heat.shape == (149, 112) and np.isfinite(heat).all()  # network input resolution
    assert heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.01
    mtime = first.image.stat().st_mtime_ns
    assert explained.calls == [explained.v2]

    again = ax.explain(project, item, target="shirt")
    assert again.cached and again.image == first.image and again.image.stat().st_mtime_ns == mtime
    assert explained.calls == [explained.v2]  # no recomputation
    assert ax.explain_item(project, item) == first.image

    other = ax.explain(project, item, target="shoes")
    assert other.image.name == f"{item}-c2.jpg" and not other.cached
    assert np.abs(ax.load_heatmap(other) - heat).mean() > 0.02


def test_other_methods_are_cached_separately(explained) -> None:
    # Every method is exercised in tests/models/test_explain.py; here the cheapest one shows
    # that the cache keys on the method.
    gradcam = ax.explain_item(explained.project, explained.ids[0], target="dress")
    png = ax.explain_item(explained.project, explained.ids[0], method="guided", target="dress")
    assert png.parent.name == "guided" and png.name == gradcam.name and png != gradcam
    heat = np.load(png.with_suffix(".npy")).astype(np.float32)
    assert np.isfinite(heat).all() and heat.std() > 0.01
    assert np.abs(heat - np.load(gradcam.with_suffix(".npy"))).mean() > 0.02


def test_pretrained_version_explains_its_top_output(explained) -> None:
    done = ax.explain(explained.project, explained.ids[4], version_id=explained.v1)
    assert done.target is None and done.image.name == f"{explained.ids[4]}-top.jpg"
    with pytest.raises(UserError, match="pretrained backbone"):
        ax.explain(explained.project, explained.ids[4], version_id=explained.v1, target="dress")


def test_errors_are_clear(explained) -> None:
    p = explained.project
    with pytest.raises(UserError, match="no item 999"):
        ax.explain_item(p, 999)
    with pytest.raises(UserError, match=r"class 'sock' is not one of .*dress, shirt, shoes"):
        ax.explain_item(p, explained.ids[0], target="sock")
    with pytest.raises(UserError, match="unknown attribution method 'lime'"):
        ax.explain_item(p, explained.ids[0], method="lime")
    with pytest.raises(UserError, match="no model version 42"):
        ax.explain_item(p, explained.ids[0], version_id=42)
    assert explained.calls == []


def test_no_model_version_yet(project) -> None:
    with pytest.raises(UserError, match="no model version yet"):
        ax.explain_item(project, 1)


def test_unreadable_photo(explained) -> None:
    from storage import db, items

    with db.session(explained.project.engine) as s:
        path = Path(items.get(s, explained.ids[2]).path)
    path.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=f"item {explained.ids[2]} .* cannot be read"):
        ax.explain_item(explained.project, explained.ids[2])


def test_concurrent_requests_share_one_whole_file(explained) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            results.append(ax.explain_item(explained.project, explained.ids[3]))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    with Image.open(results[0]) as im:
        im.load()
    leftovers = [f for f in results[0].parent.iterdir() if f.name.startswith(".")]
    assert leftovers == []


def test_class_average(explained) -> None:
    p = explained.project
    assert ax.class_average(p, "dress", limit=5, cached_only=True) is None  # not made yet, and not made now
    png = ax.class_average(p, "dress", limit=5)
    assert png.is_file() and png.parent == p.artifacts / "attributions" / f"v{explained.v2}" / "class-average" / "gradcam"
    info = __import__("json").loads(png.with_suffix(".json").read_text())
    assert len(info["items"]) == 2 and info["skipped"] == {}  # items 0 and 3 are predicted "dress"
    mean = np.load(png.with_suffix(".npy"))
    assert mean.max() == pytest.approx(1.0) and mean.std() > 0.01
    n_calls = len(explained.calls)
    assert ax.class_average(p, "dress", limit=5) == png and len(explained.calls) == n_calls
    assert ax.class_average(p, "dress", limit=5, cached_only=True) == png
    with pytest.raises(UserError, match="not one of"):
        ax.class_average(p, "sock")


def test_cli(explained, tmp_path, capsys) -> None:
    import json

    root = str(explained.project.root)
    out = tmp_path / "map.jpg"
    # the CLI loads the project from disk: keep the small inputs of the fixture
    explained.project.save()
    assert main(["--project", root, "--json", "explain", str(explained.ids[0]), "--target", "shoes",
                 "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target"] == "shoes" and data["method"] == "gradcam" and Path(data["out"]) == out
    assert out.read_bytes() == Path(data["path"]).read_bytes()
    assert main(["--project", root, "explain", "999"]) == 2
    assert "no item 999" in capsys.readouterr().err
    assert main(["--project", root, "explain", str(explained.ids[0]), "--target", "sock"]) == 2
    assert "class 'sock'" in capsys.readouterr().err
    assert main(["--project", root, "explain"]) == 2
    assert main(["--project", root, "explain", "--class-average", "shirt", "--out", str(out)]) == 0
    assert "class average of 'shirt'" in capsys.readouterr().out
    for name in ("notes.xyz", "notes"):  # no image format: refused, and a file already there is kept
        odd = tmp_path / name
        odd.write_text("mine")
        assert main(["--project", root, "explain", str(explained.ids[0]), "--out", str(odd)]) == 2
        assert f"cannot write an image named {name!r}" in capsys.readouterr().err and odd.read_text() == "mine"


def test_cli_without_versions(project_dir, capsys) -> None:
    assert main(["--project", str(project_dir), "explain", "1"]) == 2
    assert "no model version yet" in capsys.readouterr().err


def test_method_registry_matches_the_implementations() -> None:
    from active import attribution_methods as registry
    from models.explain import DEFAULT_METHOD, METHOD_NAMES, METHODS, SINGLE_PASS

    assert tuple(registry.REGISTRY) == METHOD_NAMES == tuple(METHODS)
    assert registry.DEFAULT_METHOD == DEFAULT_METHOD == ax.DEFAULT_METHOD
    assert {m.name for m in registry.REGISTRY.values() if m.single_pass} == SINGLE_PASS



def test_the_labeller_leaves_class_averages_to_a_worker(explained) -> None:
    from labeler.services import default_services
    from storage import db
    from storage import jobs as store

    p = explained.project
    average = default_services().class_average
    n_calls = len(explained.calls)
    assert average(p, "shirt", version_id=explained.v2, method="gradcam") is None  # queued, not computed here
    assert average(p, "shoes", version_id=explained.v2, method="gradcam") is None
    assert len(explained.calls) == n_calls
    with db.session(p.engine) as s:
        queued = store.active(s)
    assert [(j.kind, j.args) for j in queued] == [("class_averages", {"version_id": explained.v2, "method": "gradcam"})]
