"""Does a flood of wrong sign-ins slow down everyone else? (issue 14: before the fix, 4 clients
flooding /login took another route's median from 21 ms to 328 ms, scrypt running on the event loop.)

Starts `active serve` on a free loopback port with a throwaway project, signs one reader in, and
times the reader's GET /config (served on the event loop) while 4 flooders (threads of another
process) send: nothing (idle); GET requests that need no hash (the no-op flood: the same request
load without scrypt); wrong passwords from one address (the throttle slows them down); wrong
passwords from a new address each time (X-Forwarded-For, which the server takes from a loopback
peer as from a proxy: no address limit, scrypt at full rate, off the event loop). On a machine
with few cores the hashes still take CPU from everyone: compare the login floods with the no-op one.

    python bench/login_flood.py [--seconds 6] [--flooders 4]

Last line: ``median_ms_idle=<n> median_ms_noop_flood=<n> median_ms_flood_one_address=<n>
median_ms_flood_many_addresses=<n>``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import cli, free_port  # noqa: E402

PASSWORD = "reader-password"
START_TIMEOUT_S = 120


def start_server(root: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "active.cli", "--project", str(root), "serve", "--port", str(port)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server died at start")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            return server
        except httpx.HTTPError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server did not answer within {START_TIMEOUT_S} s")


def read_latencies(url: str, seconds: float) -> list[float]:
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("login", data={"username": "reader", "password": PASSWORD}).status_code == 200
        out = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            r = c.get("config")
            out.append((time.perf_counter() - t) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"the reader got {r.status_code}")
            time.sleep(0.02)
    return out


def flood(url: str, end: float, codes: Counter, lock: threading.Lock, worker: int, mode: str) -> None:
    n = 0
    with httpx.Client(base_url=url, timeout=60) as c:
        while time.monotonic() < end:
            n += 1
            if mode == "noop":
                r = c.get("gradio_api/login_check")  # 401 at once: a request without a hash
            else:
                headers = {"X-Forwarded-For": f"10.{worker}.{n // 250 % 250}.{n % 250 + 1}"} if mode == "many" else {}
                r = c.post("login", data={"username": f"guess-{worker}-{n}", "password": "wrong-password"},
                           headers=headers)
            with lock:
                codes[r.status_code] += 1


def flood_process(url: str, seconds: float, flooders: int, mode: str, out) -> None:  # noqa: ANN001
    """The flooders, in their own process so their threads do not compete with the reader's."""
    codes, lock = Counter(), threading.Lock()
    end = time.monotonic() + seconds
    threads = [threading.Thread(target=flood, args=(url, end, codes, lock, w, mode)) for w in range(flooders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(codes))


def phase(url: str, seconds: float, flooders: int, mode: str | None) -> tuple[list[float], dict]:
    if mode is None:
        return read_latencies(url, seconds), {}
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=flood_process, args=(url, seconds + 1.0, flooders, mode, out))
    proc.start()
    time.sleep(1.0)  # the flood is under way before the reader starts
    lat = read_latencies(url, seconds)
    codes = out.get(timeout=120)
    proc.join(timeout=60)
    return lat, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--flooders", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="login-flood-") as tmp:
        root = Path(tmp) / "p"
        cli("init", str(root), "--classes", "a,b,c")
        from active.project import Project
        from storage import db, users

        db.write(Project.load(root).engine, lambda s: users.add(s, "reader", PASSWORD))
        port = free_port()
        server = start_server(root, port)
        url = f"http://127.0.0.1:{port}/"
        try:
            results = {}
            for name, mode in (("idle", None), ("noop_flood", "noop"), ("flood_one_address", "one"),
                               ("flood_many_addresses", "many")):
                lat, codes = phase(url, args.seconds, args.flooders, mode)
                results[name] = statistics.median(lat)
                p95 = sorted(lat)[int(0.95 * (len(lat) - 1))]
                print(f"{name:22s} reader GET /config: median {statistics.median(lat):6.1f} ms, p95 {p95:6.1f} ms "
                      f"({len(lat)} requests); flood answers {dict(sorted(codes.items()))}", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(" ".join(f"median_ms_{k}={v:.1f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
