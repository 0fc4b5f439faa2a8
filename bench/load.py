"""Many annotators at once: N simulated annotators label through the real labeller processes
while background jobs (a pool scoring run, head retrains) run in a separate worker.

Builds a project of M pool items from ../shared (the shared photos; above 3,781 items, synthetic
rows pointing at the same photos), scored with mobilenet_v2 (IMAGENET1K_V1) and a head trained on
their imported labels, except ``--unscored`` items (default 200) imported afterwards, so the
background scoring job has real network work (chunked commits) to do. The scored project is cached under ``--keep
DIR`` and copied for each run (SQLite) or cloned row by row into a fresh database (``--db``,
PostgreSQL: one throwaway database per run, dropped at the end).

Latencies and CPU are measured from the moment every annotator has signed in and sees an item
(a barrier): N clients signing in at once is a start-up burst, not labelling.

Each run: N users, one round queueing every pool item (scored items by margin first), overlap 1,
``--servers`` labeller processes (`active serve --no-worker`, each on a free loopback port) and one
`active worker` process (niced, as `active serve` starts it), then N annotator processes spread
over the servers, each with its own signed-in page client (`_common.PageClient`: the page's own protocol, read as messages arrive), labelling for ``--seconds``
(mostly accept, some corrections, skips, unsure, undo) after looking at each item for about
``--think-ms`` (as an annotator does: 20 annotators are 20 people, not 20 scripts in a tight loop;
``--think-ms 0`` submits as fast as the server answers, a throughput test in which every request
queues behind the others, so its latency says how many requests wait, not what one costs), and a
signed-in no-op round trip (`/noop`) every few submissions. The first ``--retrain-after`` seconds
are quiet; then a scoring job and head retrain jobs (back to back) are queued in the store for the
worker. The project's own refresh policy is switched off (``head_every = 0``) so every job is one
this bench queued and stops.

Every acknowledged submission (the page's note "#id: accepted shirt") is checked against the
store: each in it exactly once, no item with human labels from two annotators (overlap 1), no
error text with "locked" or "busy" reaching an annotator. Latencies are split by whether a job was
running in the worker when the request was sent (from the jobs' start and end in the store).

    python bench/load.py --keep /tmp/load-cache                       # SQLite, N=20, M=2000
    eval "$(.ci/postgres start)"
    python bench/load.py --keep /tmp/load-cache --db "$ACTIVE_TEST_PG_URL" --servers 2
    .ci/postgres stop

Last line: ``submitted=<n> stored=<n> duplicates=<n> double_leases=<n> lock_errors=<n> p95_ms=<n>
p95_ms_noop=<n>``: p95_ms is the submit p95 while jobs ran (all submits with --no-background),
p95_ms_noop the no-op round trip's p95 over the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import DEFAULT_DATA, PageClient, add_synthetic_items, cli, free_port  # noqa: E402

DATASET = DEFAULT_DATA
SPLIT_FOLDERS = ("train", "validation", "test")
PASSWORD = "load-bench-password"
BACKBONE, WEIGHTS = "mobilenet_v2", "IMAGENET1K_V1"
SERVER_START_S = 180.0
STOP_GRACE_S = 20.0
SIGN_IN_S = 180.0  # for every annotator to sign in and see an item
MAX_RETRAINS = 4
NOOP_EVERY = 4  # a no-op round trip after every this many submissions
LOCK_WORDS = ("locked", "busy")
# What an annotator does with an item that has suggestions (cumulative probabilities).
ACTIONS = (("accept", 0.70), ("second", 0.78), ("skip", 0.86), ("unsure", 0.92), ("class", 0.97), ("undo", 1.0))
SUBMIT_APIS = {"accept": "/accept", "second": "/pick_2", "skip": "/skip", "unsure": "/unsure", "class": "/correct",
               "undo": "/undo"}
DONE_DECISIONS = ("accepted", "corrected", "unsure")

# Outputs of the item events as gradio_client returns them (State and Buttons are left out):
# item id, served token, photo, suggestions, why, note, class picker, map, map note.
OUT_BARS, OUT_WHY, OUT_NOTE, OUT_MAP = 3, 4, 5, 7
ITEM_RE = re.compile(r"item #(\d+)")
ACK_RE = re.compile(r"^#(\d+): (accepted|corrected|skipped|unsure)(?: (.+))?$")
UNDO_RE = re.compile(r"^undid your label on #(\d+)$")
# The second of two submissions naming one item is refused ("#X is no longer your current item",
# or "#X is not the item on this page" when it started after the first had sent the next item).
NOT_TWICE = "not recorded: #"


# ------------------------------------------------------------------------------------ the project
def build_template(root: Path, *, items: int, scored: int) -> None:
    """A SQLite project: ``items`` pool items, the first ``scored`` scored (v1 pretrained) with a
    head (v2) trained on their imported labels; the rest imported after, unscored."""
    from active.importer import import_candidates, scan_folder
    from active.project import Project
    from active.retrain import retrain
    from active.scoring import score

    cli("init", str(root), "--preset", "clothing10", "--backbone", BACKBONE, "--weights", WEIGHTS)
    project = Project.load(root)
    cands = []
    for f in SPLIT_FOLDERS:
        found, _skipped, _layout = scan_folder(DATASET / f)
        cands += found
    cands = cands[:items]
    first = min(scored, len(cands))
    rng = random.Random(0)  # a class mix in the scored part, not the first folders' classes only
    rng.shuffle(cands)
    import_candidates(project, cands[:first], split="pool", progress=False)
    t = time.perf_counter()
    rep = score(project, progress=True)
    print(f"template: scored {rep.embedded} photos with {BACKBONE} in {time.perf_counter() - t:.0f} s", flush=True)
    v = retrain(project, mode="head", progress=False)
    print(f"template: head version v{v.id} on {v.n_labels} imported labels", flush=True)
    import_candidates(project, cands[first:], split="pool", progress=False)
    add_synthetic(project, items)


def add_synthetic(project, n_total: int) -> None:  # noqa: ANN001
    """Item rows (fresh hashes, same photos, their imported labels) until the project holds ``n_total``."""
    need = add_synthetic_items(project, n_total)
    if need > 0:
        print(f"template: added {need:,} synthetic items (same photos) to reach {n_total:,}", flush=True)


def clone_rows(src_url: str, dst_url: str) -> None:
    """Copy every row of the template store into a freshly initialised one (same ids), then move
    PostgreSQL's id sequences past them."""
    from sqlalchemy import insert, select, text
    from sqlmodel import SQLModel

    from storage import db

    src, dst = db.open_engine(src_url), db.open_engine(dst_url)
    with src.connect() as sc, dst.begin() as dc:
        for table in SQLModel.metadata.sorted_tables:
            if table.name == "meta":
                continue
            rows = [dict(r) for r in sc.execute(select(table)).mappings()]
            for k in range(0, len(rows), 5000):
                dc.execute(insert(table), rows[k:k + 5000])
            if dst.dialect.name == "postgresql" and "id" in table.c and rows:
                dc.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table.name}\"', 'id'), "
                                f"(SELECT max(id) FROM \"{table.name}\"))"))
    src.dispose()
    dst.dispose()


@dataclass
class RunStore:
    """The run's project folder and, for PostgreSQL, the throwaway database to drop afterwards."""

    root: Path
    admin_url: str | None = None
    database: str | None = None

    def drop(self) -> None:
        if not self.database:
            return
        from sqlalchemy import create_engine, text

        eng = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        finally:
            eng.dispose()


def make_run_project(template: Path, run_dir: Path, db_url: str | None) -> RunStore:
    """A fresh copy of the template for this run (SQLite: the folder; PostgreSQL: a new database)."""
    from active.project import Project

    root = run_dir / "project"
    tpl = Project.load(template)
    if db_url is None:
        with tpl.engine.connect() as conn:  # fold the WAL into the file before copying
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copytree(template, root)
        store = RunStore(root)
    else:
        from sqlalchemy import create_engine, make_url, text

        base = make_url(db_url)
        name = f"active_load_{os.getpid()}_{int(time.time())}"
        eng = create_engine(db_url, isolation_level="AUTOCOMMIT")
        try:
            with eng.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001
            raise SystemExit(f"cannot create a throwaway database on {base.render_as_string()}: {exc}") from None
        finally:
            eng.dispose()
        store = RunStore(root, admin_url=db_url, database=name)
        url = base.set(database=name).render_as_string(hide_password=False)
        cli("init", str(root), "--db", url, "--preset", "clothing10", "--backbone", BACKBONE, "--weights", WEIGHTS)
        t = time.perf_counter()
        clone_rows(tpl.db_url, url)
        shutil.copytree(tpl.artifacts, root / "artifacts", dirs_exist_ok=True)
        print(f"cloned the template into PostgreSQL database {name} in {time.perf_counter() - t:.1f} s", flush=True)
    project = Project.load(root)
    project.config.retrain.head_every = 0  # every background writer is one this bench starts
    project.config.labeling.overlap = 1
    project.save()
    return store


def prepare(root: Path, n_annotators: int) -> tuple[list[str], int]:
    """Add the annotators and open one round over the whole pool; returns (names, queued)."""
    from sqlmodel import select

    from active.project import Project
    from storage import db, users, versions, work
    from storage.tables import Item, Prediction

    project = Project.load(root)
    names = [f"ann{k:02d}" for k in range(n_annotators)]
    with db.session(project.engine) as s:
        v = versions.latest(s)
        margins = dict(s.exec(select(Prediction.item_id, Prediction.margin)
                              .where(Prediction.model_version_id == v.id, Prediction.margin.is_not(None))).all())
        pool = list(s.exec(select(Item.id).where(Item.split == "pool").order_by(Item.id)))
    ids = sorted(pool, key=lambda i: (i not in margins, margins.get(i, 1.0), i))

    def fn(s):  # noqa: ANN001, ANN202
        for n in names:
            users.add(s, n, PASSWORD, role="annotator")
        work.open_round(s, strategy="margin", model_version_id=v.id, item_ids=ids,
                        scores=[float(margins.get(i, 1.0)) for i in ids], score_name="margin")

    db.write(project.engine, fn)
    project.engine.dispose()
    return names, len(ids)


def count_versions(root: Path) -> int:
    from sqlalchemy import func
    from sqlmodel import select

    from active.project import Project
    from storage import db
    from storage.tables import ModelVersion

    project = Project.load(root)
    with db.session(project.engine) as s:
        n = int(s.exec(select(func.count()).select_from(ModelVersion)).one())
    project.engine.dispose()
    return n


# ------------------------------------------------------------------------------------ annotators
def _unescape(md: str) -> str:
    return re.sub(r"\\(.)", r"\1", md or "").strip()


def annotate(name: str, url: str, seconds: float, max_labels: int, out: str, seed: int,
             classes: list[str], double: float, think_s: float, ready: Any) -> None:  # noqa: ANN401
    """One annotator process: sign in and open the first item, wait at ``ready`` (a barrier) until
    every annotator has, then label for ``seconds`` or ``max_labels``,
    looking at each item for ``think_s`` seconds on average (uniform between half and 1.5 times
    that, so the annotators do not press in step) before deciding.

    Appends one JSON line per event to ``out`` (flushed, so a killed process loses nothing):
    ``label`` (acknowledged by the server's note), ``error`` (exception text or an unexpected
    note), ``unacked`` (a submission whose answer never came), ``shown`` (an item on screen).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; Ctrl-C goes to it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    rng = random.Random(seed)
    fh = open(out, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def emit(**rec) -> None:  # noqa: ANN003
        fh.write(json.dumps(rec) + "\n")

    client = None
    for attempt in range(10):
        try:
            client = PageClient(url, name, PASSWORD, files=False, analytics_enabled=False,
                                httpx_kwargs={"timeout": 120})
            break
        except Exception as exc:  # noqa: BLE001
            emit(t="error", api="/login", msg=f"{type(exc).__name__}: {exc}")
            time.sleep(min(2 ** attempt * 0.2, 5))
    if client is None:
        ready.abort()  # the others start now, without this one
        return
    try:
        out_ = client.predict(True, "gradcam", api_name="/start")
    except Exception as exc:  # noqa: BLE001
        emit(t="error", api="/start", msg=f"{type(exc).__name__}: {exc}")
        ready.abort()
        return
    with contextlib.suppress(threading.BrokenBarrierError):  # one that never signed in does not hold us up
        ready.wait(SIGN_IN_S)
    deadline = time.time() + seconds
    time.sleep(think_s * rng.uniform(0, 1))  # people do not look up at one instant: no burst at the start
    labelled = sent = 0
    while time.time() < deadline and labelled < max_labels:
        if think_s > 0:
            time.sleep(think_s * rng.uniform(0.5, 1.5))
        why = out_[OUT_WHY] or ""
        m = ITEM_RE.search(why)
        if m is None:
            emit(t="done", msg=_unescape(why)[:200])  # nothing left to label
            break
        item = int(m.group(1))
        emit(t="shown", item=item, map=out_[OUT_MAP] is not None)  # the map came with the item
        bars = out_[OUT_BARS] if isinstance(out_[OUT_BARS], dict) else None
        ranked = [c["label"] for c in (bars or {}).get("confidences", [])]
        r = rng.random()
        action = next(a for a, p in ACTIONS if r < p) if ranked else "class"
        if action == "second" and len(ranked) < 2:
            action = "accept"
        if action == "undo" and labelled == 0:
            action = "accept"
        label = None
        args: tuple = (item, True, "gradcam")  # every decision names the item on screen
        if action == "accept":
            label, want = ranked[0], "accepted"
        elif action == "second":
            label, want = ranked[1], "corrected"
        elif action == "class":
            label = rng.choice(classes)
            want = "accepted" if ranked and ranked[0] == label else "corrected"
            args = (item, label, True, "gradcam")
        elif action in ("skip", "unsure"):
            want = {"skip": "skipped", "unsure": "unsure"}[action]
        else:
            want = "undo"
        sent += 1
        if sent % NOOP_EVERY == 1:  # the baseline: a signed-in round trip that does nothing
            at, t = time.time(), time.perf_counter()
            try:
                client.predict(api_name="/noop")
                emit(t="noop", at=at, ms=(time.perf_counter() - t) * 1000)
            except Exception as exc:  # noqa: BLE001
                emit(t="error", api="/noop", item=item, msg=f"{type(exc).__name__}: {exc}")
        api = SUBMIT_APIS[action]
        twice = action != "undo" and rng.random() < double
        at, t = time.time(), time.perf_counter()
        try:
            if twice:  # two tabs / two keys at once: both requests carry the same item
                answers = client.predict_many([(args, api)] * 2)
            else:
                answers = [client.predict(*args, api_name=api)]
        except Exception as exc:  # noqa: BLE001
            ms = (time.perf_counter() - t) * 1000
            emit(t="error", api=api, item=item, msg=f"{type(exc).__name__}: {exc}", ms=ms, at=at)
            emit(t="unacked", item=item, decision=want, label=label, n=2 if twice else 1)
            continue  # the page still shows the same item (its state did not change)
        ms = (time.perf_counter() - t) * 1000
        for res in answers:
            note = _unescape(res[OUT_NOTE])
            mu, ma = UNDO_RE.match(note), ACK_RE.match(note)
            if mu:  # what the server says it stored is what counts as submitted
                emit(t="label", item=int(mu.group(1)), decision="undo", label=None, ms=ms, at=at)
            elif ma:
                got = (int(ma.group(1)), ma.group(2), ma.group(3) or None)
                emit(t="label", item=got[0], decision=got[1], label=got[2], ms=ms, at=at)
                labelled += 1
                if got != (item, want, label) and not twice:
                    emit(t="error", api=api, item=item, msg=f"stored {got} where {(item, want, label)} was sent")
            elif note == "nothing to undo" or (twice and note.startswith(NOT_TWICE)):
                emit(t="refused", item=item, note=note)
            else:
                emit(t="error", api=api, item=item, msg=f"unexpected note: {note!r} for {want} {label}", ms=ms)
                emit(t="unacked", item=item, decision=want, label=label)
        out_ = answers[-1]
        if twice:  # the page shows whichever answer came last: reload it, as a person would
            try:
                out_ = client.predict(True, "gradcam", api_name="/start")
            except Exception as exc:  # noqa: BLE001
                emit(t="error", api="/start", item=item, msg=f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(Exception):
        client.close()
    fh.close()


# ------------------------------------------------------------------------------------ background
@dataclass
class Background:
    """A scoring job once and head retrain jobs back to back, queued in the store after
    ``retrain_after_s``; a separate worker process runs them."""

    root: Path
    retrain_after_s: float
    t0: float = field(default_factory=time.monotonic)
    ids: list[int] = field(default_factory=list)
    retrains: int = 0

    def __post_init__(self) -> None:
        from active.project import Project

        self.project = Project.load(self.root)

    def _enqueue(self, kind: str) -> None:
        from active import jobs

        job, _ = jobs.enqueue(self.project, kind, requested_by="bench")
        self.ids.append(int(job.id))

    def _states(self) -> dict[int, str]:
        from storage import db, jobs

        with db.session(self.project.engine) as s:
            return {j.id: str(j.state) for j in jobs.listing(s, limit=1000) if j.id in self.ids}

    def active(self) -> bool:
        return any(st in ("queued", "running") for st in self._states().values())

    def poll(self, *, more: bool) -> None:
        if not more or time.monotonic() - self.t0 < self.retrain_after_s:
            return
        if not self.ids:
            self._enqueue("score")
        states = self._states()
        head_active = any(states.get(i) in ("queued", "running") for i in self.ids[1:])
        if not head_active and self.retrains < MAX_RETRAINS:
            self.retrains += 1
            self._enqueue("head")

    def stop(self) -> None:
        """Cancel what is still queued or running (a running job stops at its next report)."""
        from storage import db, jobs

        for job_id, st in self._states().items():
            if st in ("queued", "running"):
                with contextlib.suppress(jobs.JobError):
                    db.write(self.project.engine, lambda s, j=job_id: jobs.cancel(s, j))

    def finished(self) -> list[tuple[str, str, float, str | None]]:
        """(kind, state, seconds it ran, reason) of every job queued."""
        from storage import db, jobs

        out = []
        with db.session(self.project.engine) as s:
            for job_id in self.ids:
                j = jobs.get(s, job_id)
                start, end = jobs.utc(j.started_at), jobs.utc(j.finished_at or j.heartbeat_at)
                secs = (end - start).total_seconds() if start and end else 0.0
                out.append((j.kind, str(j.state), secs, j.reason))
        return out

    def busy_intervals(self) -> list[tuple[float, float]]:
        """(start, end) in epoch seconds of every job while it ran (still running: until now)."""
        from storage import db, jobs

        spans = []
        with db.session(self.project.engine) as s:
            for job_id in self.ids:
                j = jobs.get(s, job_id)
                if j.started_at is None:
                    continue
                end = jobs.utc(j.finished_at or j.heartbeat_at)
                spans.append((jobs.utc(j.started_at).timestamp(), end.timestamp() if end else time.time()))
        return spans


def children_cpu_s() -> float:
    """CPU seconds (user + system) of this process's children that have ended and been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by a running process (with its children that ended
    and were waited for: a worker's job processes) and by its descendants now alive (Linux /proc):
    (the process itself, its live descendants). A labeller's live descendant is its attribution child."""
    tick = os.sysconf("SC_CLK_TCK")

    def own(p: int) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return sum(int(f) for f in fields[11:15]) / tick  # utime, stime, and of children waited for

    def kids(p: int) -> list[int]:
        try:
            return [int(c) for t in Path(f"/proc/{p}/task").iterdir() for c in (t / "children").read_text().split()]
        except OSError:
            return []

    below, todo = 0.0, kids(pid)
    while todo:
        p = todo.pop()
        below += own(p)
        todo += kids(p)
    return own(pid), below


def stop_process(p: subprocess.Popen | mp.Process) -> None:
    """SIGTERM, then SIGKILL after a grace."""
    from active.commands.serve import stop_worker

    if isinstance(p, subprocess.Popen):
        stop_worker(p)
    elif p.is_alive():
        p.terminate()
        p.join(STOP_GRACE_S)
        if p.is_alive():
            p.kill()
            p.join()


def start_server(root: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    with open(log, "w") as fh:
        server = subprocess.Popen([sys.executable, "-m", "active.cli", "--project", str(root), "serve",
                                   "--host", "127.0.0.1", "--port", str(port), "--no-worker"],
                                  env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    end = time.monotonic() + SERVER_START_S
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server died at start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    stop_process(server)
    raise SystemExit(f"the server did not listen on port {port} within {SERVER_START_S:.0f} s")


# ------------------------------------------------------------------------------------ the checks
@dataclass
class Figures:
    submitted: int
    stored: int
    lost: int
    duplicates: int  # store rows beyond the submissions they match
    twice: int  # effective labels beyond one per (annotator, item) in the store
    unacked_stored: int
    double_leases: int
    double_leases_store: int
    lock_errors: int
    errors: Counter
    latencies: list[tuple[float, float]]  # (sent at, epoch s; ms) of every submission
    noops: list[tuple[float, float]]  # (sent at; ms) of every no-op round trip
    per_annotator: dict[str, int]


def read_records(files: dict[str, Path]) -> dict[str, list[dict]]:
    out = {}
    for name, path in files.items():
        recs = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut off by a kill
                    recs.append(json.loads(line))
        out[name] = recs
    return out


def effective(events: list[tuple[str, int, str]]) -> dict[str, list[tuple[int, str]]]:
    """annotator -> [(item, decision)] of their labels that still count, from (annotator, item,
    decision) in order (an undo cancels that annotator's latest label on the item)."""
    stacks: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for ann, item, decision in events:
        if decision == "undo":
            for k in range(len(stacks[ann]) - 1, -1, -1):
                if stacks[ann][k][0] == item:
                    del stacks[ann][k]
                    break
        else:
            stacks[ann].append((item, decision))
    return stacks


def net_done(events: list[tuple[str, int, str]]) -> dict[int, set[str]]:
    """item -> annotators whose done-decision label on it still counts."""
    done: dict[int, set[str]] = defaultdict(set)
    for ann, st in effective(events).items():
        for item, decision in st:
            if decision in DONE_DECISIONS:
                done[item].add(ann)
    return done


def twice_by_one(events: list[tuple[str, int, str]]) -> int:
    """Labels beyond the first that one annotator holds on one item (a second decision on an item
    must be refused: "not recorded twice")."""
    return sum(n - 1 for st in effective(events).values() for n in Counter(i for i, _ in st).values())


def check(root: Path, records: dict[str, list[dict]]) -> Figures:
    from sqlmodel import select

    from active.project import Project
    from storage import db
    from storage.tables import Label

    project = Project.load(root)
    names = list(records)
    with db.session(project.engine) as s:
        rows = list(s.exec(select(Label).where(Label.kind == "human", Label.annotator.in_(names)).order_by(Label.id)))
    project.engine.dispose()

    submitted: Counter = Counter()
    unacked: Counter = Counter()
    errors: Counter = Counter()
    latencies: list[tuple[float, float]] = []
    noops: list[tuple[float, float]] = []
    events: list[tuple[str, int, str]] = []
    per_annotator: dict[str, int] = {}
    for ann, recs in records.items():
        per_annotator[ann] = 0
        for r in recs:
            if r["t"] == "label":
                submitted[(ann, r["item"], r["decision"], r["label"])] += 1
                latencies.append((r.get("at", 0.0), r["ms"]))
                events.append((ann, r["item"], r["decision"]))
                per_annotator[ann] += 1
            elif r["t"] == "unacked":
                unacked[(ann, r["item"], r["decision"], r["label"])] += r.get("n", 1)
            elif r["t"] == "noop":
                noops.append((r["at"], r["ms"]))
            elif r["t"] == "error":
                errors[r["msg"][:300]] += 1
                if "ms" in r:
                    latencies.append((r.get("at", 0.0), r["ms"]))
    stored_rows = Counter((r.annotator, r.item_id, r.decision, r.label) for r in rows)
    stored = lost = duplicates = unacked_stored = 0
    for key in submitted.keys() | stored_rows.keys():
        sub, have = submitted[key], stored_rows[key]
        stored += min(sub, have)
        lost += max(0, sub - have)
        extra = max(0, have - sub)
        explained = min(extra, unacked[key])  # committed, but its answer never reached the annotator
        unacked_stored += explained
        duplicates += extra - explained
    double = sum(1 for anns in net_done(events).values() if len(anns) > 1)
    store_events = []
    by_id = {r.id: r for r in rows}
    for r in rows:
        if r.decision == "undo":
            target = by_id.get(r.undoes_id)
            store_events.append((r.annotator, target.item_id if target else -1, "undo"))
        else:
            store_events.append((r.annotator, r.item_id, r.decision))
    double_store = sum(1 for anns in net_done(store_events).values() if len(anns) > 1)
    twice = twice_by_one(store_events)
    lock = sum(n for msg, n in errors.items() if any(w in msg.lower() for w in LOCK_WORDS))
    return Figures(sum(submitted.values()), stored, lost, duplicates, twice, unacked_stored, double, double_store,
                   lock, errors, latencies, noops, per_annotator)


# ------------------------------------------------------------------------------------ main
def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def split_by_jobs(samples: list[tuple[float, float]], spans: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Milliseconds of the requests sent while a job ran in the worker, and of the others."""
    busy, quiet = [], []
    for at, ms in samples:
        (busy if any(a <= at <= b for a, b in spans) else quiet).append(ms)
    return busy, quiet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=20, help="simulated annotators (processes)")
    ap.add_argument("--servers", type=int, default=1, help="labeller processes the annotators are spread over")
    ap.add_argument("--items", type=int, default=2000, help="pool items in the project")
    ap.add_argument("--unscored", type=int, default=200,
                    help="items left unscored when the project is built, for the background scoring job")
    ap.add_argument("--db", help="SQLAlchemy URL of a PostgreSQL server (a throwaway database is created there)")
    ap.add_argument("--seconds", type=float, default=60, help="labelling time")
    ap.add_argument("--max-labels", type=int, default=5000, help="labels per annotator at most")
    ap.add_argument("--retrain-after", type=float,
                    help="quiet seconds before the jobs are queued (default: half of --seconds)")
    ap.add_argument("--double", type=float, default=0.05,
                    help="share of submissions sent twice at once (two tabs, two keys): one must be stored")
    ap.add_argument("--drain", type=float, default=60,
                    help="seconds the running job may go on after the labelling before it is cancelled")
    ap.add_argument("--think-ms", type=float, default=1500,
                    help="time an annotator looks at an item before deciding (mean; 0: submit as fast as the "
                         "server answers, which measures throughput, not what an annotator waits)")
    ap.add_argument("--no-background", action="store_true", help="no jobs (labelling only)")
    ap.add_argument("--keep", type=Path, help="cache the scored template project here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.annotators < 1 or args.items < 1 or args.seconds <= 0 or args.servers < 1:
        raise SystemExit("--annotators, --servers, --items and --seconds must be positive")
    if not DATASET.is_dir():
        raise SystemExit(f"{DATASET} not found: put ../shared beside the checkout or set ACTIVE_SHARED")
    quiet_s = args.seconds / 2 if args.retrain_after is None else args.retrain_after
    cache = args.keep or Path(tempfile.mkdtemp(prefix="load-cache-"))
    scored = max(args.items - max(args.unscored, 0), 0)
    template = cache / f"template-{args.items}-{scored}"
    if not (template / "active.toml").exists():
        if template.exists():
            shutil.rmtree(template)  # a build that was interrupted
        t = time.perf_counter()
        build_template(template, items=args.items, scored=scored)
        print(f"template built in {time.perf_counter() - t:.0f} s", flush=True)
    if args.keep:
        (cache / "runs").mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="load-run-", dir=cache / "runs" if args.keep else None))
    store = None
    servers: list[subprocess.Popen] = []
    worker = None
    annotators: list[mp.Process] = []
    bg = None
    try:
        store = make_run_project(template, run_dir, args.db)
        root = store.root
        names, queued = prepare(root, args.annotators)
        versions_before = count_versions(root)
        from active.commands.serve import start_worker
        from active.project import Project

        project = Project.load(root)
        classes = list(project.config.classes)
        backend = "PostgreSQL" if args.db else "SQLite"
        print(f"{backend}: {args.items:,} pool items ({scored:,} scored, {args.items - scored:,} left for the "
              f"background scoring), {queued:,} queued, {len(names)} annotators over {args.servers} labeller "
              f"process(es), one worker, overlap 1", flush=True)
        cpu = {"start": children_cpu_s()}  # the clients' CPU: children's, read as they end (see below)
        urls = []
        for k in range(args.servers):
            port = free_port()
            servers.append(start_server(root, port, run_dir / f"server{k}.log"))
            urls.append(f"http://127.0.0.1:{port}/")
        worker = start_worker(project)  # niced, as `active serve` starts it; its log in artifacts/worker.log
        ctx = mp.get_context("spawn")
        files = {n: run_dir / f"{n}.jsonl" for n in names}
        # Measured from the moment every annotator has signed in and sees an item: the sign-in of
        # N clients at once (each fetching the app's config) is a start-up burst, not labelling.
        ready = ctx.Barrier(len(names) + 1)
        for k, n in enumerate(names):
            p = ctx.Process(target=annotate, args=(n, urls[k % len(urls)], args.seconds, args.max_labels,
                                                   str(files[n]), args.seed * 1000 + k, classes, args.double,
                                                   args.think_ms / 1000, ready), daemon=True)
            p.start()
            annotators.append(p)
        try:
            ready.wait(SIGN_IN_S)
        except threading.BrokenBarrierError:
            print("not every annotator signed in and saw an item: the others label without them", flush=True)
        window = {"before": [tree_cpu_s(p.pid) for p in [*servers, worker]]}
        t0 = time.time()
        if not args.no_background:
            bg = Background(root, quiet_s)  # the first part of the labelling time quiet
        hard_stop = t0 + args.seconds + max(60.0, args.seconds)
        while any(p.is_alive() for p in annotators) and time.time() < hard_stop:
            if bg is not None:
                bg.poll(more=time.time() < t0 + args.seconds)
            time.sleep(0.5)
        killed = [p for p in annotators if p.is_alive()]
        window["after"] = [tree_cpu_s(p.pid) for p in [*servers, worker]]
        for p in killed:
            stop_process(p)
        for p in annotators:
            p.join()
        cpu["clients"] = children_cpu_s()
        wall = time.time() - t0
        spans: list[tuple[float, float]] = []
        if bg is not None:  # a running retrain may publish (bounded); the rest is cancelled
            end = time.monotonic() + args.drain
            while bg.active() and time.monotonic() < end:
                time.sleep(0.5)
            bg.stop()
            spans = bg.busy_intervals()
        for server in servers:
            stop_process(server)
        servers = []
        stop_process(worker)
        worker = None
        records = read_records(files)
        figs = check(root, records)
        shown = [r for recs in records.values() for r in recs if r.get("t") == "shown"]
        published = count_versions(root) - versions_before
        submits = [ms for _, ms in figs.latencies]
        busy, quiet = split_by_jobs(figs.latencies, spans)
        noop_busy, noop_quiet = split_by_jobs(figs.noops, spans)
        noops = [ms for _, ms in figs.noops]
        print(f"labelling wall time {wall:.0f} s; {figs.submitted:,} acknowledged submissions "
              f"({figs.submitted / wall:.1f}/s); per annotator min {min(figs.per_annotator.values())} "
              f"max {max(figs.per_annotator.values())}; {len(killed)} annotators had to be stopped", flush=True)
        if bg is not None:
            for what, state, dur, reason in bg.finished():
                print(f"background job {what}: {state} after {dur:.0f} s" + (f" ({reason})" if reason else ""),
                      flush=True)
            print(f"model versions published during the run: {published}", flush=True)
        print(f"lost={figs.lost} duplicates={figs.duplicates} same_annotator_twice={figs.twice} "
              f"committed_but_unacknowledged={figs.unacked_stored} "
              f"double_leases(recorded)={figs.double_leases} double_leases(store)={figs.double_leases_store}")
        used = [(a[0] - b[0], a[1] - b[1]) for b, a in zip(window["before"], window["after"], strict=True)]
        labellers, maps = sum(u[0] for u in used[:-1]), sum(u[1] for u in used[:-1])
        # The annotators' clients run on this machine too, which real annotators' browsers do not.
        print(f"CPU seconds while labelling ({os.cpu_count()} cores x {wall:.0f} s = {os.cpu_count() * wall:.0f} "
              f"available): annotator clients {cpu['clients'] - cpu['start']:.0f} (with their sign-in), labeller processes "
              f"{labellers:.0f}, their attribution children {maps:.0f}, worker {sum(used[-1]):.0f}"
              + (" (PostgreSQL's own processes not counted)" if args.db else ""))
        print(f"the attention map came with the item {sum(bool(r.get('map')) for r in shown):,} of {len(shown):,} times")
        print(f"errors reaching annotators: {sum(figs.errors.values())} ({figs.lock_errors} locked/busy)")
        for msg, n in figs.errors.most_common(8):
            print(f"  {n:5d} x {msg}")
        logs = "".join((run_dir / f"server{k}.log").read_text(errors="replace") for k in range(args.servers))
        print(f"server logs: {logs.count('Traceback')} tracebacks, "
              f"{sum(w in logs.lower() for w in LOCK_WORDS)} lock words; run folder {run_dir}")
        print(f"submit latency over {len(submits):,} requests: p50 {float(np.percentile(submits or [np.nan], 50)):.0f} ms, "
              f"p95 {p95(submits):.0f} ms; while jobs ran: p95 {p95(busy):.0f} ms ({len(busy):,}), "
              f"without jobs: p95 {p95(quiet):.0f} ms ({len(quiet):,})")
        print(f"no-op round trip over {len(noops):,} requests: p95 {p95(noops):.0f} ms; while jobs ran "
              f"{p95(noop_busy):.0f} ms ({len(noop_busy):,}), without {p95(noop_quiet):.0f} ms ({len(noop_quiet):,})")
        headline = p95(busy) if bg is not None else p95(submits)
        print(f"submitted={figs.submitted} stored={figs.stored} duplicates={figs.duplicates + figs.twice} "
              f"double_leases={max(figs.double_leases, figs.double_leases_store)} lock_errors={figs.lock_errors} "
              f"p95_ms={headline:.0f} p95_ms_noop={p95(noops):.0f}")
    finally:
        for p in annotators:
            stop_process(p)
        if bg is not None:
            bg.stop()
        for p in [*servers, *([worker] if worker is not None else [])]:
            stop_process(p)
        if store is not None:
            store.drop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
