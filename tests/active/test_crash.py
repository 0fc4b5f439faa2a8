"""Crash safety of `active score`, `active retrain` (head, full), `active export`, and of an
`active worker` running a scoring job or a fine-tune job.

Each test runs the real CLI in a subprocess, SIGKILLs it at a seeded random moment (after the
n-th of its progress events, plus a random delay) and then checks what a user would rely on: the
store opens and passes its checks, every ModelVersion row is whole (its folder loads), the current
model still serves, no label was lost or duplicated, and re-running the command finishes the work
and leaves no temp folders behind. ACTIVE_CRASH_SEED=<n> replays other moments.

The subprocess runs `active.cli.main` with a pause (and a line in a marker file) at a few
checkpoints: inside every Prediction-writing transaction (after its embedding file is written),
just before a version is published (its staging folder complete, no row yet), at the start of a
fine-tune, and before every image an export places. The pauses widen the windows where a kill
is most harmful and give the test something to poll instead of sleeping fixed times.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from killing import sigkill_when
from modelfixtures import make_tiny_project
from sqlalchemy import text
from sqlmodel import select

from active import modelstore, policy
from active.export import MANIFEST_NAME, read_csv
from active.project import Project
from active.retrain import retrain
from active.scoring import load_embeddings, load_probs
from storage import db, versions
from storage.tables import Item, Label, ModelVersion, Prediction
from tests.conftest import REPO, draw_image

# The default kills both retrains inside the publish window (staging folder written, no row yet),
# the score run mid-pool and the export early; other seeds replay other moments.
SEED = int(os.environ.get("ACTIVE_CRASH_SEED", "39"))
CHUNK = 8  # items per scoring transaction in the subprocess (default 256): many commits to land between
START_TIMEOUT_S = 180  # importing torch on a loaded 2-core machine can take a while
RUNNER = r"""
import importlib, os, sys, time
marks, pause = os.environ["CRASH_MARKS"], float(os.environ["CRASH_PAUSE"])

def checkpoint(target):
    module, attr = target.split(":")
    mod = importlib.import_module(module)
    real = getattr(mod, attr)

    def paused(*args, **kwargs):
        with open(marks, "a") as fh:
            fh.write(target + "\n")
        time.sleep(pause)
        return real(*args, **kwargs)

    setattr(mod, attr, paused)

for target in filter(None, os.environ["CRASH_CHECKPOINTS"].split(",")):
    checkpoint(target)
if os.environ.get("CRASH_CHUNK"):
    import active.scoring
    active.scoring.score.__kwdefaults__["chunk_size"] = int(os.environ["CRASH_CHUNK"])
from active.cli import main
sys.exit(main(sys.argv[1:]))
"""
PREDICTIONS = "storage.versions:add_predictions"  # inside the transaction, after the chunk's embedding file
PUBLISH = "active.modelstore:publish"  # the staging folder is written, the row not inserted
TRAIN = "models.train:fine_tune"
PLACE = "active.export:place_file"


@pytest.fixture(autouse=True)
def _fresh_cache():  # noqa: ANN202
    modelstore.clear_cache()
    yield
    modelstore.clear_cache()


def _rng(name: str) -> random.Random:
    return random.Random(SEED * 1_000_003 + zlib.crc32(name.encode()))


def _marks(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def kill_during(project: Project, argv: list[str], *, checkpoints: list[str], expected_marks: int,
                rng: random.Random, pause: float, tmp_path: Path, tail: tuple[str, ...] = ("--no-progress",)) -> str:
    """Run ``active --project P *argv`` in a subprocess and SIGKILL it after its n-th checkpoint
    (n drawn from 1..expected_marks) plus a random delay. Returns a description of the moment."""
    n = rng.randint(1, expected_marks)
    # After the last checkpoint only the pause is sure to remain; elsewhere the delay may run into
    # the work that follows (a commit, the next batch, a rename).
    delay = rng.uniform(0, 0.8 * pause if n == expected_marks else 2 * pause)
    marks = tmp_path / f"marks-{time.monotonic_ns()}"
    log = marks.with_suffix(".stderr")
    env = {**os.environ, "PYTHONPATH": str(REPO), "CRASH_MARKS": str(marks), "CRASH_PAUSE": str(pause),
           "CRASH_CHECKPOINTS": ",".join(checkpoints), "CRASH_CHUNK": str(CHUNK)}
    with log.open("wb") as err:  # a file, not a pipe: a chatty child never blocks on a full pipe
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, "--project", str(project.root), *argv,
                                 *tail], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    alive = sigkill_when(proc, lambda: _marks(marks) >= n, delay=delay, timeout=START_TIMEOUT_S)
    moment = f"killed after checkpoint {n}/{expected_marks} + {delay:.3f} s (ACTIVE_CRASH_SEED={SEED})"
    stderr = log.read_text(errors="replace")[-800:]
    assert alive, f"the command ended before the kill, {moment}; marks {_marks(marks)}; stderr: {stderr}"
    assert proc.returncode == -signal.SIGKILL, moment
    return moment


# ------------------------------------------------------------------ what must hold after a kill


def label_rows(project: Project) -> list[tuple]:
    with db.session(project.engine) as s:
        return [(r.id, r.item_id, r.label, r.kind, r.annotator) for r in s.exec(select(Label).order_by(Label.id))]


def readable_items(project: Project) -> dict[int, str]:
    with db.session(project.engine) as s:
        return {i.id: i.path for i in s.exec(select(Item).where(Item.error.is_(None)).order_by(Item.id))}


def check_store(project: Project, moment: str, *, labels_before: list[tuple]) -> list[ModelVersion]:
    """The store opens (schema check), is intact, every visible version is whole and the current
    one serves; no label changed. Returns the versions."""
    engine = db.open_engine(project.db_url)  # a fresh engine: the schema check runs
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok", moment
    engine.dispose()
    assert label_rows(project) == labels_before, f"labels changed: {moment}"
    modelstore.clear_cache()
    with db.session(project.engine) as s:
        rows = versions.all_versions(s)
        row_of = {(p.model_version_id, p.row) for p in s.exec(select(Prediction))}
        n_preds = len(s.exec(select(Prediction.id)).all())
    assert len(row_of) == n_preds, f"two predictions of one version share an embedding row: {moment}"
    for v in rows:
        folder = modelstore.version_dir(project, v)
        assert folder.name == f"v{v.id}" and folder.is_dir(), f"version {v.id} has no folder {folder}: {moment}"
        modelstore.load_model(project, v)  # raises on a missing or torn artifact
    current = modelstore.current_version(project)
    assert current is not None and current.id == rows[-1].id
    serve(project, current, limit=4)
    return rows


def serve(project: Project, version: ModelVersion, *, limit: int | None = None):  # noqa: ANN201
    """Run the version over the first ``limit`` readable items (default all): `Inference` with
    embeddings (n, d) and probabilities (n, c) (the model serves)."""
    from models.infer import embed_and_predict

    loaded = modelstore.load_model(project, version)
    paths = list(readable_items(project).values())[:limit]
    out = embed_and_predict(loaded.model, paths, transform=loaded.transform, num_workers=0)
    assert len(out.index) == len(paths) and np.isfinite(out.logits).all()
    return out


def check_scored(project: Project, version: ModelVersion, moment: str) -> None:
    """Every readable item has exactly one Prediction of ``version`` (and of the network version
    whose embeddings it uses); its stored embedding and probabilities are what the version's
    network gives for the image now (a head version runs its source's network up to the head)."""
    items = readable_items(project)
    ids = sorted(items)
    source = modelstore.embedding_source(project, version)
    with db.session(project.engine) as s:
        for vid in {version.id, source.id}:
            got = s.exec(select(Prediction.item_id).where(Prediction.model_version_id == vid)).all()
            assert sorted(got) == ids, f"version {vid}: {len(got)} predictions for {len(ids)} items: {moment}"
    fresh = serve(project, version)
    emb_ids, emb = load_embeddings(project, version.id)
    assert emb_ids.tolist() == ids, moment
    np.testing.assert_allclose(emb, fresh.embeddings, atol=1e-4, err_msg=f"stored embeddings differ: {moment}")
    if version.classes:
        prob_ids, probs = load_probs(project, version.id)
        assert prob_ids.tolist() == ids, moment
        np.testing.assert_allclose(probs, fresh.probs, atol=1e-4, err_msg=moment)


def check_clean(project: Project, moment: str) -> None:
    """No staging folder left, and every v{id} folder belongs to a version row (nothing beside
    them: a fine-tune's progress lives in its job's row)."""
    with db.session(project.engine) as s:
        ids = {v.id for v in versions.all_versions(s)}
    left = sorted(p.name for p in project.artifacts.iterdir())
    assert left == sorted(f"v{i}" for i in ids), f"artifacts/ holds {left}: {moment}"


def add_pool(project: Project, tmp_path: Path, cli, per_class: int, *, corrupt: bool = False) -> None:  # noqa: ANN001
    folder = tmp_path / "more"
    for c, name in enumerate(project.config.classes):
        for n in range(per_class):
            draw_image(folder / name / f"m{n}.png", 2 * c, seed=7000 + 100 * c + n, size=(40, 32))
    assert cli("--project", project.root, "import", folder, "--no-progress").code == 0
    if corrupt:  # broken after import: scoring marks it unreadable
        (folder / "dress" / "m0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


# ------------------------------------------------------------------ the tests


def test_sigkill_during_score(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=3)
    retrain(project, mode="head", num_workers=0)  # v1 pretrained + v2 head, every item scored
    add_pool(project, tmp_path, cli, 20, corrupt=True)  # 60 new items, one of them unreadable
    before = label_rows(project)
    # 60 items in chunks of 8 through the network (8 transactions) + 1 head transaction
    moment = kill_during(project, ["score", "--workers", "0", "--batch-size", "4"], checkpoints=[PREDICTIONS],
                         expected_marks=9, rng=_rng("score"), pause=0.2, tmp_path=tmp_path)
    rows = check_store(project, moment, labels_before=before)
    assert [v.id for v in rows] == [1, 2], moment  # scoring never publishes a version once there is one

    again = cli("--project", project.root, "--json", "score", "--workers", "0", "--no-progress")
    assert again.code == 0, again.err
    assert len(readable_items(project)) == 68
    check_scored(project, rows[-1], moment)
    check_clean(project, moment)
    assert label_rows(project) == before


def test_sigkill_during_head_retrain(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4, holdout_per_class=1)
    retrain(project, mode="head", num_workers=0)  # v1 + v2
    add_pool(project, tmp_path, cli, 8)  # 24 new items: the retrain embeds them first (3 chunks)
    before = label_rows(project)
    # 3 network chunks of v1, publish, 1 head transaction of the new version
    moment = kill_during(project, ["retrain", "--mode", "head", "--workers", "0", "--batch-size", "4"],
                         checkpoints=[PREDICTIONS, PUBLISH], expected_marks=5, rng=_rng("head"), pause=0.25,
                         tmp_path=tmp_path)
    rows = check_store(project, moment, labels_before=before)
    assert [v.id for v in rows] in ([1, 2], [1, 2, 3]), moment

    again = cli("--project", project.root, "--json", "retrain", "--mode", "head", "--workers", "0", "--no-progress")
    assert again.code == 0, again.err
    new = modelstore.current_version(project)
    assert new.id == again.data["version"] == rows[-1].id + 1 and new.mode == "head", moment
    check_scored(project, new, moment)
    check_clean(project, moment)
    assert label_rows(project) == before


def test_sigkill_during_full_retrain(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=4)
    retrain(project, mode="head", num_workers=0)  # v1 + v2: a model with our classes serves
    before = label_rows(project)
    # fine-tune start, publish, 2 network chunks of the new version (12 items)
    moment = kill_during(project, ["retrain", "--mode", "full", "--epochs", "1", "--workers", "0",
                                   "--batch-size", "4"],
                         checkpoints=[TRAIN, PUBLISH, PREDICTIONS], expected_marks=4, rng=_rng("full"), pause=0.3,
                         tmp_path=tmp_path)
    rows = check_store(project, moment, labels_before=before)
    assert [v.id for v in rows] in ([1, 2], [1, 2, 3]), moment

    again = cli("--project", project.root, "--json", "retrain", "--mode", "full", "--epochs", "1",
                "--batch-size", "4", "--workers", "0", "--no-progress")
    assert again.code == 0, again.err
    new = modelstore.current_version(project)
    assert new.id == rows[-1].id + 1 and new.mode == "full", moment
    check_scored(project, new, moment)
    check_clean(project, moment)
    assert label_rows(project) == before


def check_export(project: Project, out: Path, moment: str) -> dict:
    """``out`` holds one whole export: the manifest, a row per labelled item, exactly the files
    the rows name, each with the bytes of its item."""
    import json

    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    rows = read_csv(out / "labels.csv")
    with db.session(project.engine) as s:
        n_labelled = len(set(s.exec(select(Label.item_id)).all()))
    assert len(rows) == manifest["counts"]["exported"] == n_labelled, moment
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert files == {r["exported_path"] for r in rows} | {"labels.csv", MANIFEST_NAME}, moment
    for r in rows:
        assert hashlib.sha256((out / r["exported_path"]).read_bytes()).hexdigest() == r["sha256"], moment
    return manifest


def test_sigkill_during_export(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    project = make_tiny_project(tmp_path, make_image, per_class=12)
    out = tmp_path / "dataset"
    argv = ["export", "--format", "imagefolder", "--out", str(out), "--copy"]
    assert cli("--project", project.root, *argv, "--no-progress").code == 0
    first = check_export(project, out, "first export")
    before = label_rows(project)
    moment = kill_during(project, [*argv, "--overwrite"], checkpoints=[PLACE], expected_marks=36,
                         rng=_rng("export"), pause=0.04, tmp_path=tmp_path)
    # the earlier export is still in place, whole: the new one was being built aside
    assert check_export(project, out, moment)["created_at"] == first["created_at"], moment
    assert label_rows(project) == before

    again = cli("--project", project.root, *argv, "--overwrite", "--no-progress")
    assert again.code == 0, again.err
    assert check_export(project, out, moment)["created_at"] != first["created_at"]
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")) == [], \
        f"temp folders of the killed export are left beside it: {moment}"
    assert label_rows(project) == before


# ------------------------------------------------------------------ a worker killed mid-job


def _job_row(project: Project, job_id: int):  # noqa: ANN202
    from storage import jobs as store

    with db.session(project.engine) as s:
        return store.get(s, job_id)


def test_sigkill_of_a_worker_during_a_scoring_job_retries_it(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    from datetime import timedelta

    from active import jobs

    project = make_tiny_project(tmp_path, make_image, per_class=3)
    retrain(project, mode="head", num_workers=0)  # v1 + v2, every item scored
    add_pool(project, tmp_path, cli, 20, corrupt=True)
    before = label_rows(project)
    job, _ = jobs.enqueue(project, "score", {"num_workers": 0, "batch_size": 4})
    moment = kill_during(project, ["worker", "--once", "--name", "doomed"], checkpoints=[PREDICTIONS],
                         expected_marks=9, rng=_rng("worker-score"), pause=0.2, tmp_path=tmp_path, tail=())
    row = _job_row(project, job.id)
    assert row.state == "running" and row.worker == "doomed" and row.attempts == 1, moment
    rows = check_store(project, moment, labels_before=before)
    assert [v.id for v in rows] == [1, 2], moment
    # Another worker finds it silent, queues it again and finishes it (resumed: nothing twice).
    assert jobs.work(project, name="second", once=True, stale_after=timedelta(0), poll_s=0.05) == [(job.id, "done")]
    row = _job_row(project, job.id)
    assert row.attempts == 2 and row.worker == "second", moment
    assert "doomed stopped heartbeating" in row.reason and "attempt 2 of 3" in row.reason, moment
    check_scored(project, rows[-1], moment)
    check_clean(project, moment)
    assert label_rows(project) == before


def test_sigkill_of_a_worker_during_a_fine_tune_fails_it_with_the_reason(tmp_path: Path, make_image, cli) -> None:  # noqa: ANN001
    from datetime import timedelta

    from active import jobs
    from storage import jobs as store

    project = make_tiny_project(tmp_path, make_image, per_class=4)
    retrain(project, mode="head", num_workers=0)  # v1 + v2
    before = label_rows(project)
    args = {"epochs": 1, "num_workers": 0, "batch_size": 4}
    job = db.write(project.engine, lambda s: store.enqueue(s, "full", args, gpu=True, max_attempts=1)[0])
    moment = kill_during(project, ["worker", "--once", "--name", "doomed"], checkpoints=[TRAIN, PUBLISH, PREDICTIONS],
                         expected_marks=4, rng=_rng("worker-full"), pause=0.3, tmp_path=tmp_path, tail=())
    rows = check_store(project, moment, labels_before=before)
    assert [v.id for v in rows] in ([1, 2], [1, 2, 3]), moment
    # Its last attempt: the next worker fails it, saying why, and the labeller and status say so.
    assert jobs.work(project, name="second", once=True, stale_after=timedelta(0), poll_s=0.05) == []
    row = _job_row(project, job.id)
    assert row.state == "failed" and "doomed stopped heartbeating" in row.reason, moment
    assert policy.describe_progress(policy.fine_tune_progress(project)).startswith("last fine-tune: failed (worker doomed")
    # Queued again by hand (or by the policy), a worker finishes the work.
    again, _ = jobs.enqueue(project, "full", args)
    assert jobs.work(project, name="second", once=True, poll_s=0.05) == [(again.id, "done")], _job_row(project, again.id).reason
    new = modelstore.current_version(project)
    assert new.id == rows[-1].id + 1 and new.mode == "full" and _job_row(project, again.id).result["version"] == new.id
    check_scored(project, new, moment)
    check_clean(project, moment)
    assert label_rows(project) == before


PARENT = r"""
import os, subprocess, sys, time
marks, argv = sys.argv[1], sys.argv[2:]
worker = subprocess.Popen([sys.executable, "-c", os.environ["RUNNER"], *argv, "--parent", str(os.getpid())],
                          stdout=subprocess.DEVNULL, stderr=open(marks + ".stderr", "wb"))
print(worker.pid, flush=True)
while not os.path.exists(marks):  # the worker is inside its job
    time.sleep(0.05)
os._exit(0)  # the labeller that started it goes away without stopping it (killed, or a crash)
"""


def test_a_worker_whose_labeller_went_away_stops_mid_job_and_queues_it_again(tmp_path: Path, make_image,  # noqa: ANN001
                                                                            cli) -> None:  # noqa: ANN001
    """`active serve` starts its worker with --parent: when that process is gone, the job in hand
    is queued again at once (as SIGTERM does), not run to its end on cores nobody needs now."""
    from active import jobs
    from active.commands.worker import PARENT_CHECK_S

    project = make_tiny_project(tmp_path, make_image, per_class=3)
    retrain(project, mode="head", num_workers=0)
    add_pool(project, tmp_path, cli, 20)
    job, _ = jobs.enqueue(project, "score", {"num_workers": 0, "batch_size": 4})
    marks = tmp_path / "marks"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNNER": RUNNER, "CRASH_MARKS": str(marks),
           "CRASH_PAUSE": "60", "CRASH_CHECKPOINTS": PREDICTIONS, "CRASH_CHUNK": str(CHUNK)}
    parent = subprocess.run([sys.executable, "-c", PARENT, str(marks), "--project", str(project.root), "worker",
                             "--name", "orphan"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=START_TIMEOUT_S)
    worker = int(parent.stdout.split()[0])
    # Paused 60 s inside the job's first transaction; it must be gone long before that.
    deadline = time.monotonic() + 5 * PARENT_CHECK_S + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker ran on after its labeller went away")
    row = _job_row(project, job.id)
    assert row.state == "queued" and row.worker is None, (row.state, row.worker, row.reason)
