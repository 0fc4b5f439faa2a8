"""Integration on real photos with mobilenet_v2 + its ImageNet weights (../shared): scoring with
a crash and resume, head retrain, a 1-epoch full fine-tune on small images, the weights-missing
message."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from active import modelstore, scoring
from active.cli import main
from active.project import Project
from storage import db
from storage.tables import Item

pytestmark = pytest.mark.slow
TRAIN_PER_CLASS = 3  # 30 pool images + 10 holdout images


@pytest.fixture(scope="module")
def real_project(tmp_path_factory) -> Project:  # noqa: ANN001
    from tests.conftest import DATASET, TORCH_HOME, shared_images

    weights = TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    if not DATASET.is_dir() or not weights.is_file():
        pytest.skip(f"needs {DATASET} and {weights} (../shared beside the checkout)")

    tmp = tmp_path_factory.mktemp("real")
    for split, n, dest in (("train", TRAIN_PER_CLASS, "pool"), ("test", 1, "hold")):
        for cls, files in shared_images(n, split).items():
            (tmp / dest / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(f, tmp / dest / cls / f.name)
    root = tmp / "proj"
    assert main(["init", str(root), "--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1"]) == 0
    assert main(["--project", str(root), "import", str(tmp / "pool"), "--no-progress"]) == 0
    assert main(["--project", str(root), "import", str(tmp / "hold"), "--split", "holdout", "--no-progress"]) == 0
    modelstore.clear_cache()
    yield Project.load(root)
    modelstore.clear_cache()


def test_score_crash_and_resume_with_real_weights(real_project: Project, monkeypatch) -> None:  # noqa: ANN001
    real = scoring._write_chunk
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed mid-run")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "_write_chunk", crash_on_second)
    with pytest.raises(RuntimeError):
        scoring.score(real_project, batch_size=16, chunk_size=16, num_workers=2)
    monkeypatch.undo()
    report = scoring.score(real_project, batch_size=16, chunk_size=16, num_workers=2)
    assert report.scored == 40 - 16 and not report.failed
    ids, emb = scoring.load_embeddings(real_project, 1)
    assert ids.shape == (40,) and emb.shape == (40, 1280) and np.isfinite(emb).all()
    from models.infer import embed_and_predict

    lm = modelstore.load_model(real_project, 1)
    check = [0, 15, 16, 39]  # either side of the chunk that crashed
    with db.session(real_project.engine) as s:
        paths = [s.get(Item, int(ids[k])).path for k in check]
    direct = embed_and_predict(lm.model, paths, transform=lm.transform, num_workers=0)
    np.testing.assert_allclose(direct.embeddings, emb[check], rtol=1e-3, atol=1e-4)


def test_head_retrain_beats_chance_on_holdout(real_project: Project) -> None:
    from active.retrain import retrain

    v = retrain(real_project, mode="head", num_workers=2)
    hold = v.metrics["holdout"]
    assert v.mode == "head" and hold["n"] == 10
    # 10 classes, 3 labels each: chance is 0.1; ImageNet features do far better
    assert hold["accuracy"] >= 0.4
    ids, probs = scoring.load_probs(real_project, v.id)
    assert probs.shape == (40, 10)


def test_full_fine_tune_one_epoch_small_images(real_project: Project) -> None:
    from active.retrain import retrain

    real_project.config.image_size = 64  # small images keep a CPU epoch short
    real_project.save()
    v = retrain(real_project, mode="full", epochs=1, batch_size=16, num_workers=2)
    assert v.mode == "full" and v.artifacts["image_size"] == 64
    assert v.metrics["holdout"]["n"] == 10 and np.isfinite(v.metrics["train"]["history"][0]["loss"])
    serving = v.metrics["serving"]
    if serving["held_back"]:
        # Worse on the holdout than the head serving now (64 px, one epoch): kept, never scored.
        assert "kept, not served" in serving["reason"]
        from storage import db, versions

        with db.session(real_project.engine) as s:
            assert not versions.covers_pool(s, v.id) and versions.serving(s).id != v.id
        return
    ids, probs = scoring.load_probs(real_project, v.id)
    assert probs.shape == (40, 10)
    ids_e, emb = scoring.load_embeddings(real_project, v.id)
    assert emb.shape == (40, 1280)


def test_weights_missing_is_one_clear_message(tmp_path: Path, make_image, monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root = tmp_path / "p"
    assert main(["init", str(root), "--classes", "a,b", "--backbone", "resnet50", "--weights", "IMAGENET1K_V1"]) == 0
    make_image(tmp_path / "imgs" / "a" / "0.png", 0)
    make_image(tmp_path / "imgs" / "b" / "0.png", 1)
    assert main(["--project", str(root), "import", str(tmp_path / "imgs"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["--project", str(root), "score"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-0676ba61.pth") in err
    assert "--weights none" in err and ".pth" in err
    assert modelstore.current_version(Project.load(root)) is None
    assert main(["--project", str(root), "retrain", "--mode", "full", "--epochs", "1"]) == 2
    assert "resnet50-0676ba61.pth" in capsys.readouterr().err
