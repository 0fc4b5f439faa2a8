"""active.scoring: the first version, resumable chunked scoring, unreadable files, head reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from modelfixtures import make_tiny_project
from sqlmodel import select

from active import modelstore, scoring
from active.errors import UserError
from active.scoring import load_embeddings, load_probs, score, uncertainty
from storage import db, versions
from storage.tables import Item, Prediction


@pytest.fixture(autouse=True)
def _fresh_cache():  # noqa: ANN202
    modelstore.clear_cache()
    yield
    modelstore.clear_cache()


def test_uncertainty_columns() -> None:
    pred, conf, margin, ent = uncertainty(np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]]))
    assert pred[0] == 0 and conf[0] == pytest.approx(0.7) and margin[0] == pytest.approx(0.5)
    assert margin[1] == pytest.approx(0.0) and ent[1] == pytest.approx(np.log(3))


def test_first_score_publishes_pretrained_and_stores_embeddings(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=3)
    report = score(project, num_workers=0, batch_size=4, chunk_size=4)
    assert report.published and report.version_id == 1 and report.scored == 9 and not report.failed
    v = modelstore.current_version(project)
    assert v.mode == "pretrained" and v.classes == [] and (project.artifacts / "v1" / "model.pth").is_file()
    ids, emb = load_embeddings(project, 1)
    assert ids.tolist() == list(range(1, 10)) and emb.shape == (9, 1024) and emb.dtype == np.float32
    assert len(list((project.artifacts / "v1" / "embeddings").glob("*.npy"))) == 3  # 4 + 4 + 1
    with db.session(project.engine) as s:
        preds = versions.predictions(s, 1)
    assert all(p.pred is None and p.probs is None for p in preds.values())
    assert sorted(p.row for p in preds.values()) == list(range(9))
    pids, probs = load_probs(project, 1)
    assert pids.shape == (0,) and probs.shape == (0, 0)
    # embeddings match the loaded model run directly (same network in a fresh process: from model.pth)
    modelstore.clear_cache()
    from models.infer import embed_and_predict

    lm = modelstore.load_model(project, 1)
    with db.session(project.engine) as s:
        paths = [s.get(Item, int(i)).path for i in ids]
    direct = embed_and_predict(lm.model, paths, transform=lm.transform, num_workers=0)
    np.testing.assert_allclose(direct.embeddings, emb, rtol=1e-4, atol=1e-5)
    assert score(project, num_workers=0).scored == 0  # nothing left to do


def test_resume_after_a_crash_mid_run(tmp_path: Path, make_image, monkeypatch) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4)
    real = scoring._write_chunk
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "_write_chunk", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        score(project, num_workers=0, batch_size=5, chunk_size=5)
    with db.session(project.engine) as s:
        assert len(versions.predictions(s, 1)) == 5  # the first chunk was committed
    monkeypatch.setattr(scoring, "_write_chunk", real)
    modelstore.clear_cache()  # as if in a new process
    report = score(project, num_workers=0, batch_size=5, chunk_size=5)
    assert report.scored == 7 and not report.published
    ids, emb = load_embeddings(project, 1)
    assert ids.tolist() == list(range(1, 13))
    from models.infer import embed_and_predict

    lm = modelstore.load_model(project, 1)
    with db.session(project.engine) as s:
        paths = [s.get(Item, int(i)).path for i in ids]
    direct = embed_and_predict(lm.model, paths, transform=lm.transform, num_workers=0)
    np.testing.assert_allclose(direct.embeddings, emb, rtol=1e-4, atol=1e-5)


def test_unreadable_file_is_marked_and_not_retried(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=2)
    with db.session(project.engine) as s:
        victim = s.exec(select(Item).where(Item.id == 3)).one()
    Path(victim.path).write_bytes(Path(victim.path).read_bytes()[:60])  # truncated after import
    report = score(project, num_workers=0, batch_size=2, chunk_size=2)
    assert list(report.failed) == [3] and report.scored == 5
    with db.session(project.engine) as s:
        assert "truncated" in s.get(Item, 3).error or "cannot decode" in s.get(Item, 3).error
        assert 3 not in versions.predictions(s, 1)
    assert score(project, num_workers=0).failed == {}
    ids, _ = load_embeddings(project, 1)
    assert 3 not in ids.tolist() and len(ids) == 5
    # The file is mended (a share remounted, say): --retry-unreadable scores it after all.
    make_image(Path(victim.path), 0, seed=99)
    from active.cli import main

    assert main(["--project", str(project.root), "score", "--retry-unreadable", "--workers", "0",
                 "--no-progress"]) == 0
    with db.session(project.engine) as s:
        assert s.get(Item, 3).error is None and 3 in versions.predictions(s, 1)


def test_head_version_reuses_embeddings_and_embeds_only_new_items(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    from active.retrain import retrain

    project = make_tiny_project(tmp_path, make_image, per_class=4)
    score(project, num_workers=0)
    v2 = retrain(project, mode="head", num_workers=0)
    assert v2.id == 2 and v2.artifacts["embeddings_from"] == 1
    ids1, emb1 = load_embeddings(project, 1)
    ids2, emb2 = load_embeddings(project, 2)
    assert ids2.tolist() == ids1.tolist()
    np.testing.assert_array_equal(emb1, emb2)
    pids, probs = load_probs(project, 2)
    assert pids.tolist() == ids1.tolist() and probs.shape == (12, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)
    with db.session(project.engine) as s:
        p = versions.predictions(s, 2)[int(pids[0])]
    assert p.pred == v2.classes[int(np.argmax(p.probs))] and p.confidence == pytest.approx(max(p.probs), abs=1e-5)
    # a new import: only it goes through the network; both versions get its prediction
    make_image(tmp_path / "more" / "dress" / "new.png", 0, seed=999)
    from active.cli import main

    assert main(["--project", str(project.root), "import", str(tmp_path / "more"), "--no-progress"]) == 0
    report = score(project, num_workers=0)
    assert report.version_id == 2 and report.embedded == 1 and report.scored == 2
    with db.session(project.engine) as s:
        assert s.exec(select(Prediction).where(Prediction.item_id == 13)).all().__len__() == 2
    # the stored probabilities are what the loaded head version computes
    from models.infer import embed_and_predict

    lm = modelstore.load_model(project, 2)
    assert lm.classes == list(v2.classes) and lm.mode == "head"
    with db.session(project.engine) as s:
        paths = [s.get(Item, int(i)).path for i in pids[:4]]
    direct = embed_and_predict(lm.model, paths, transform=lm.transform, num_workers=0)
    np.testing.assert_allclose(direct.probs, probs[:4], atol=1e-4)


def test_load_model_errors(tmp_path: Path, make_image) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=1)
    with pytest.raises(UserError, match="no model version yet"):
        modelstore.load_model(project)
    with pytest.raises(UserError, match="no model version 7"):
        load_embeddings(project, 7)
