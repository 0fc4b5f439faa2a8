"""Shared bits of the model benchmarks: picking images and weights, printing results."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# ../shared beside the checkout, or where ACTIVE_SHARED says (a worktree elsewhere).
SHARED = Path(os.environ.get("ACTIVE_SHARED", REPO.parent / "shared")).resolve()
DEFAULT_DATA = SHARED / "datasets" / "clothing-small"
if "TORCH_HOME" not in os.environ and (SHARED / "torch").is_dir():
    os.environ["TORCH_HOME"] = str(SHARED / "torch")
LARGE_ITEMS = 50_000  # the "large" project of the UI latency benches


def jpegs(root: Path, n: int) -> tuple[list[Path], list[int]]:
    """``n`` JPEGs round-robin over the class folders of ``root`` (or its train/), with labels."""
    base = root / "train" if (root / "train").is_dir() else root
    folders = sorted(p for p in base.iterdir() if p.is_dir())
    if not folders:
        raise SystemExit(f"no class folders under {base}")
    files = [sorted(f.glob("*.jp*g")) for f in folders]
    paths, labels = [], []
    k = 0
    while len(paths) < n and any(k < len(f) for f in files):
        for c, f in enumerate(files):
            if k < len(f) and len(paths) < n:
                paths.append(f[k])
                labels.append(c)
        k += 1
    return paths, labels


def weights_for(backbone: str, wanted: str) -> str:
    """The weights asked for when they are cached, else "none" (throughput does not depend on
    the values of the weights; the bench says which it used)."""
    from models.backbones import WeightsError, resolve_weights

    try:
        return resolve_weights(backbone, wanted, offline=True).name
    except WeightsError:
        return "none"


def report(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(json.dumps(rows))
        return
    widths = [max(len(c), *(len(_fmt(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def add_synthetic_items(project, n_total: int, *, copy_predictions: bool = False,  # noqa: ANN001
                        batch: int = 2000) -> int:
    """Add pool item rows pointing at the same photos (fresh hashes), with the originals' imported
    labels (and, with ``copy_predictions``, their predictions: same photo, same embedding row),
    until the project holds ``n_total`` items. Returns how many were added."""
    import hashlib

    from sqlmodel import select

    from storage import db
    from storage.tables import Item, Label, Prediction

    with db.session(project.engine) as s:
        base = list(s.exec(select(Item).where(Item.split == "pool").order_by(Item.id)))
        n_have = len(list(s.exec(select(Item.id))))
        given = {lab.item_id: lab.label for lab in s.exec(select(Label).where(Label.kind == "imported"))}
        by_item: dict[int, list[Prediction]] = {}
        if copy_predictions:
            for p in s.exec(select(Prediction)):
                by_item.setdefault(p.item_id, []).append(p)
    need = max(n_total - n_have, 0)
    for start in range(0, need, batch):
        def fn(s, start=start):  # noqa: ANN001, ANN202
            new = []
            for k in range(start, min(start + batch, need)):
                src = base[k % len(base)]
                sha = hashlib.sha256(f"{src.sha256}/{k}".encode()).hexdigest()
                new.append((src, Item(sha256=sha, path=src.path, width=src.width, height=src.height, mode=src.mode,
                                      source="synthetic", split="pool", meta={"copy_of": src.id})))
            s.add_all(it for _, it in new)
            s.flush()
            for src, it in new:
                if src.id in given:
                    s.add(Label(item_id=it.id, annotator="import", label=given[src.id], kind="imported",
                                decision="given"))
                for p in by_item.get(src.id, []):
                    s.add(Prediction(item_id=it.id, model_version_id=p.model_version_id, pred=p.pred,
                                     confidence=p.confidence, margin=p.margin, entropy=p.entropy, probs=p.probs,
                                     row=p.row))

        db.write(project.engine, fn)
    return need


def free_port() -> int:
    """A free TCP port on loopback (the benches' servers never bind anything else)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str) -> None:
    """Run an `active` command in-process; stop the bench when it fails."""
    from active.cli import main

    code = main(list(args))
    if code != 0:
        raise SystemExit(f"active {' '.join(args)} failed with exit code {code}")


def import_clothing(root: Path, dataset: Path) -> None:
    """A new mobilenet_v2 project at ``root`` holding clothing-small: train + validation as the pool
    (folder names as imported labels), test as the holdout."""
    from active.importer import import_candidates, scan_folder
    from active.project import Project

    cli("init", str(root), "--preset", "clothing10", "--backbone", "mobilenet_v2", "--weights", "IMAGENET1K_V1")
    project = Project.load(root)
    for split, folders in (("pool", ("train", "validation")), ("holdout", ("test",))):
        for f in folders:
            cands, _skipped, _layout = scan_folder(dataset / f)
            import_candidates(project, cands, split=split, progress=False)


def grown_copy(small: Path, large: Path, n_total: int) -> None:
    """``large``: a copy of the project ``small`` grown with synthetic items to ``n_total``."""
    import shutil

    from active.project import Project

    with Project.load(small).engine.connect() as conn:  # fold the WAL into the file before copying
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(small, large)
    add_synthetic_items(Project.load(large), n_total, copy_predictions=True)
    print(f"grew {large.name} to {n_total:,} items", flush=True)


@contextmanager
def labeller_server(root: Path, repo: Path = REPO) -> Iterator[int]:
    """Serve the project at ``root`` with `python -m labeler` in a separate process; yields its port."""
    import subprocess
    import time

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(repo), GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, "-m", "labeler", "--project", str(root), "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"server died: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def latency_parser(doc: str | None, *, count: str, count_default: int, count_help: str, warmup: int,
                   think_ms: float, think_help: str, large: int) -> argparse.ArgumentParser:
    """The options the UI latency benches share: one project, or a small and a grown large one."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, help="an existing scored project (measured alone)")
    ap.add_argument(f"--{count}", type=int, default=count_default, help=count_help)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--think-ms", type=float, default=think_ms, help=think_help)
    ap.add_argument("--large", type=int, default=large)
    ap.add_argument("--keep", type=Path, help="build the projects here and keep them (default: a temp dir)")
    return ap


def small_and_large(args: argparse.Namespace, dataset: Path, build_small: Callable[[Path], None], *,
                    prefix: str) -> tuple[Path, Path, Path]:
    """(work dir, small project, large project), built from ``dataset`` unless ``--keep`` has them."""
    import tempfile

    if not dataset.is_dir():
        raise SystemExit(f"{dataset} not found: pass --project DIR or put ../shared beside the checkout")
    work = args.keep or Path(tempfile.mkdtemp(prefix=prefix))
    small, large = work / "small", work / "large"
    if not (small / "active.toml").exists():
        build_small(small)
    if not (large / "active.toml").exists():
        grown_copy(small, large, args.large)
    return work, small, large


def model_bench_parser(doc: str | None, *, n: int, n_help: str, batch_size: int) -> argparse.ArgumentParser:
    """The options the model benches (score.py, train.py) share."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", default="mobilenet_v2,resnet50")
    p.add_argument("--weights", default="IMAGENET1K_V1")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=n, help=n_help)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--workers", type=int, default=None, help="decoding workers (default: one per core, max 8)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    return p


def model_bench_args(doc: str | None, *, n: int, n_help: str, batch_size: int) -> tuple[argparse.Namespace, Any, int]:
    """(arguments, torch device, decoding workers) of a model bench, from its command line."""
    args = model_bench_parser(doc, n=n, n_help=n_help, batch_size=batch_size).parse_args()
    import torch

    from models.infer import default_device, default_workers

    device = torch.device(args.device) if args.device else default_device()
    return args, device, default_workers() if args.workers is None else args.workers


def ui_client(url: str, user: str, password: str, **kwargs: Any) -> Any:  # noqa: ANN401
    """A signed-in gradio_client for a labeller on loopback.

    gradio_client opens a fresh httpx client for every request and every file it downloads, and
    with certificate checks on each of those loads the whole CA bundle (~20 ms idle, 150+ ms on a
    busy 2-core machine): a cost of the bench's client, not of the labeller, which a browser never
    pays. The URL is plain http on 127.0.0.1, so there is no certificate to check.
    """
    from gradio_client import Client

    return Client(url, auth=(user, password), verbose=False, ssl_verify=False, **kwargs)


class PageClient:
    """A signed-in client that sends events and gets their photos the way a browser page does.

    gradio_client signs in and reads the app's config; events then go over the same protocol as
    the page's own client (POST ``queue/join``, then the ``queue/data`` event stream, read as it
    arrives), on one kept-alive connection per client. gradio_client's own event path is not used
    for timing: it waits for messages by polling every 50 ms (`gradio_client.utils`,
    ``time.sleep(0.05)``), so every round trip it measures is rounded up to a step of 50 ms (a
    no-op read as ~60 ms, an event of the labeller as ~115), and it opens new connections for each
    event, a cost a page never pays. The files an event's outputs name (photo, attention map) are
    fetched as a browser fetches the `<img>`s it is handed at once: concurrently, over kept-alive
    connections, into memory. ``predict`` returns the outputs without State components, with
    each file replaced by its bytes (b"" for no file); ``files=False`` leaves file outputs as
    gradio_client describes them (dicts), unfetched.
    """

    FETCHERS = 4  # parallel image requests, as a browser makes to one host (it allows 6)

    def __init__(self, url: str, user: str, password: str, *, files: bool = True,
                 **kwargs: Any) -> None:  # noqa: ANN401
        from concurrent.futures import ThreadPoolExecutor

        import httpx

        self.client = ui_client(url, user, password, download_files=False, **kwargs)
        self.files = files
        self.http = httpx.Client(cookies=self.client.cookies, headers=self.client.headers, verify=False,
                                 limits=httpx.Limits(max_keepalive_connections=self.FETCHERS + 1), timeout=120)
        self._pool = ThreadPoolExecutor(self.FETCHERS, thread_name_prefix="img")

    def _get(self, url: str) -> bytes:
        r = self.http.get(url)
        r.raise_for_status()
        return r.content

    def events(self, calls: list[tuple[tuple, str]]) -> list[list[Any]]:
        """Send events at once, as a page does when two arrive together (``calls``: (arguments,
        api name) each), and wait for all their outputs (State components included)."""
        import json

        c = self.client
        ids: dict[str, int] = {}
        for k, (args, api_name) in enumerate(calls):
            fn_index = c._infer_fn_index(api_name, None)
            body = {"data": list(c.endpoints[fn_index].insert_empty_state(*args)), "fn_index": fn_index,
                    "event_data": None, "session_hash": c.session_hash, "trigger_id": None}
            r = self.http.post(c.sse_data_url, json=body)
            r.raise_for_status()
            ids[r.json()["event_id"]] = k
        results: dict[int, list[Any]] = {}
        # One event stream per page (session), read as messages arrive. The server ends it after
        # the session's last event (close_stream): read to that end, so the connection is kept.
        with self.http.stream("GET", c.sse_url, params={"session_hash": c.session_hash}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                k = ids.get(msg.get("event_id"))
                if msg.get("msg") == "process_completed" and k is not None:
                    if not msg.get("success", True):
                        err = (msg.get("output") or {}).get("error")
                        raise RuntimeError(f"{calls[k][1]} failed: {err}")
                    results[k] = list(msg["output"]["data"])
        if len(results) != len(calls):
            raise RuntimeError(f"{[a for _, a in calls]}: the event stream ended before every event's outputs")
        return [results[k] for k in range(len(calls))]

    def predict_many(self, calls: list[tuple[tuple, str]]) -> list[Any]:
        """`events`, each answer as `predict` returns it."""
        return [self.outputs(api_name, out) for (_, api_name), out in zip(calls, self.events(calls), strict=True)]

    def predict(self, *args: Any, api_name: str) -> Any:  # noqa: ANN401
        return self.predict_many([(args, api_name)])[0]

    def outputs(self, api_name: str, raw: list[Any]) -> Any:  # noqa: ANN401
        """An event's raw outputs as `predict` returns them (State left out, files fetched)."""
        from gradio_client import utils

        c = self.client
        values = list(c.endpoints[c._infer_fn_index(api_name, None)].remove_skipped_components(*raw))
        if self.files:
            files = {k: self._pool.submit(self._get, v["url"]) for k, v in enumerate(values)
                     if isinstance(v, dict) and utils.is_file_obj_with_meta(v) and v.get("url")}
            for k, fut in files.items():
                values[k] = fut.result()
        return values[0] if len(values) == 1 else tuple(values)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.http.close()
        self.client.close()
