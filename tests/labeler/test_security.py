"""The labeller on a shared network (issue 14, SECURITY.md): origin checks, login throttling,
revocable sessions, what the page shows before sign-in, body limits. Loopback only; every loop
is bounded."""

from __future__ import annotations

import functools
import logging
import socket
import time
from dataclasses import replace
from urllib.parse import urlsplit

import httpx
import pytest
from sqlmodel import select

from labeler import security
from labeler.security import LoginThrottle, Sessions, ThrottlePolicy, TooManyAttempts
from storage import db, users
from storage.tables import Label, Lease, User
from tests.labeler.conftest import CLASSES, PASSWORD

ALLOWED = "https://labels.example.org"
EVIL = "https://evil.example"
REVOKE_WITHIN_S = 5.0


# --------------------------------------------------------------------------- units


def test_origins_are_compared_by_host_and_port():
    assert security.normal_origin("HTTPS://Labels.Example.org:443") == "https://labels.example.org"
    assert security.normal_origin("http://127.0.0.1:7860") == "http://127.0.0.1:7860"
    for bad in ("null", "file:///etc", "https://x.org/path", "javascript:alert(1)", "https://"):
        assert security.normal_origin(bad) is None, bad
    assert security.same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert security.same_origin("https://labels.example.org", "labels.example.org")  # TLS proxy, http behind
    assert not security.same_origin("https://evil.example", "labels.example.org")
    assert not security.same_origin("http://127.0.0.1:9999", "127.0.0.1:7860")
    assert not security.same_origin("null", "127.0.0.1:7860")
    assert security.check_origins([ALLOWED + "/"]) == {ALLOWED}
    for bad in ("*", "labels.example.org", "https://x.org/app"):
        with pytest.raises(ValueError, match="not an origin"):
            security.check_origins([bad])


def test_throttle_delays_grow_then_refuse_and_forget():
    now = [0.0]
    policy = ThrottlePolicy(free=2, limit=5, base_delay_s=0.5, max_delay_s=1.5, window_s=60)
    t = LoginThrottle(user=policy, address=replace(policy, free=100, limit=1000), clock=lambda: now[0])
    waits = [t.admit("ann", "10.0.0.1") for _ in range(5)]
    assert waits == [0.0, 0.0, 0.5, 1.0, 1.5]
    with pytest.raises(TooManyAttempts) as exc:
        t.admit("ann", "10.0.0.9")  # another address does not help the name
    assert 0 < exc.value.retry_after_s <= 60
    assert t.admit("bob", "10.0.0.1") == 0.0  # another name from the same address is not held up
    now[0] += 61  # the window passed
    assert t.admit("ann", "10.0.0.1") == 0.0
    t.succeeded("ann", "10.0.0.1")
    assert t.failures("ann", "10.0.0.1")[0] == 0


def test_throttle_per_address_covers_many_names():
    policy = ThrottlePolicy(free=1, limit=3, base_delay_s=0.1, max_delay_s=0.1, window_s=60)
    t = LoginThrottle(user=replace(policy, limit=100), address=policy, clock=lambda: 0.0)
    for name in ("a", "b", "c"):
        t.admit(name, "10.0.0.1")
    with pytest.raises(TooManyAttempts):
        t.admit("d", "10.0.0.1")
    assert t.admit("d", "10.0.0.2") == 0.0


def test_sessions_end_on_disable_password_change_removal_and_age():
    gens = {"ann": 1, "bob": 1, "cat": 1, "dan": 1}
    now = [0.0]
    tokens = {"t-ann": "ann", "t-bob": "bob", "t-cat": "cat", "t-dan": "dan", "t-forged": "ann"}
    s = Sessions(lambda: dict(gens), check_every_s=0, max_age_s=100, clock=lambda: now[0])
    s.tokens = lambda: tokens
    for name in ("ann", "bob", "cat", "dan"):
        s.grant(f"t-{name}", name, 1)
    s._refresh()
    assert all(s.honoured(f"t-{n}") for n in ("ann", "bob", "cat", "dan"))
    assert not s.honoured("t-forged") and "t-forged" not in tokens  # never granted by a sign-in here
    del gens["ann"]  # disabled or removed
    gens["bob"] = 2  # new password
    s._refresh()
    assert not s.honoured("t-ann") and not s.honoured("t-bob") and s.honoured("t-cat")
    assert set(tokens) == {"t-cat", "t-dan"}
    now[0] = 101
    assert not s.honoured("t-cat")


# --------------------------------------------------------------------------- through HTTP


def sign_in(url: str, name: str, password: str = PASSWORD) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30)
    r = c.post("login", data={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return c


def fn_index(client: httpx.Client, api_name: str) -> int:
    cfg = client.get("config").json()
    return next(d["id"] for d in cfg["dependencies"] if d.get("api_name") == api_name)


def trace(project, name: str) -> tuple[int, int]:  # noqa: ANN001
    """(labels, leases) of ``name``: what a served event would have written."""
    with db.session(project.engine) as s:
        return (len(list(s.exec(select(Label.id).where(Label.annotator == name)))),
                len(list(s.exec(select(Lease.id).where(Lease.annotator == name)))))


@pytest.mark.parametrize("labeller", [{"allowed_origins": [ALLOWED]}], indirect=True)
def test_foreign_origins_get_no_grant_and_record_nothing(labeller):
    c = sign_in(labeller.url, "ann")
    own_host = urlsplit(labeller.url).netloc
    body = {"data": [True, "gradcam"], "fn_index": fn_index(c, "start"), "session_hash": "xsite01",
            "event_data": None, "trigger_id": None}
    preflight = {"Origin": EVIL, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for host in (own_host, "labels.internal"):  # direct, and the non-loopback Host a proxy sends
        pre = c.options("gradio_api/queue/join", headers={**preflight, "Host": host})
        join = c.post("gradio_api/queue/join", json=body, headers={"Origin": EVIL, "Host": host})
        data = c.get("gradio_api/queue/data", params={"session_hash": "xsite01"}, headers={"Origin": EVIL, "Host": host})
        for r in (pre, join, data):
            assert r.status_code == 403, (host, r.request.method, r.status_code)
            assert "access-control-allow-origin" not in r.headers
        assert c.post("gradio_api/queue/join", json=body, headers={"Origin": "null"}).status_code == 403
    time.sleep(0.5)
    assert trace(labeller.project, "ann") == (0, 0)
    # The listed origin gets a credentialed grant; the page's own origin needs none and is served.
    pre = c.options("gradio_api/queue/join", headers={**preflight, "Origin": ALLOWED})
    assert pre.headers.get("access-control-allow-origin") == ALLOWED
    assert pre.headers.get("access-control-allow-credentials") == "true"
    own = c.post("gradio_api/queue/join", json=body, headers={"Origin": f"http://{own_host}"})
    assert own.status_code == 200 and "event_id" in own.json()
    deadline = time.monotonic() + 20
    while trace(labeller.project, "ann")[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trace(labeller.project, "ann")[1] > 0  # the same event from the own origin did run
    c.close()


@pytest.fixture
def quick_throttle(monkeypatch):  # noqa: ANN001, ANN201
    """The real limits with millisecond delays, so 30 attempts take no time."""
    from labeler import server

    fast = {"base_delay_s": 0.002, "max_delay_s": 0.005}
    monkeypatch.setattr(server, "LoginThrottle", functools.partial(
        LoginThrottle, user=replace(security.USER_POLICY, **fast), address=replace(security.ADDRESS_POLICY, **fast)))


def test_thirty_wrong_passwords_lock_the_name_not_the_team(quick_throttle, labeller, caplog):  # noqa: ANN001
    caplog.set_level(logging.INFO, logger="labeler.security")
    with httpx.Client(base_url=labeller.url, timeout=30) as c:
        codes = [c.post("login", data={"username": "ann", "password": f"guess-{i:02d}"}).status_code
                 for i in range(30)]
        assert codes[0] == 400 and codes[-1] == 429 and set(codes) == {400, 429}
        last = c.post("login", data={"username": "ann", "password": PASSWORD})  # even the right password
        assert last.status_code == 429 and int(last.headers["retry-after"]) > 0
        started = time.monotonic()
        bob = c.post("login", data={"username": "bob", "password": PASSWORD})
        assert bob.status_code == 200 and time.monotonic() - started < 2.0
    # Every refused attempt is logged with the name and the address, never with the password.
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "'ann'" in r.getMessage()]
    assert len(warned) == len(codes) + 1 and all("127.0.0.1" in m for m in warned)
    assert not any("guess-" in r.getMessage() or PASSWORD in r.getMessage() for r in caplog.records)


def test_an_empty_sign_in_says_what_is_missing(labeller):
    with httpx.Client(base_url=labeller.url, timeout=30) as c:
        r = c.post("login", data={"username": "", "password": ""})
        assert r.status_code == 400 and "user name and password" in r.json()["detail"]
        r = c.post("login", data={"username": "ann", "password": ""})
        assert r.status_code == 400 and r.json()["detail"].startswith("Enter your password")
        # The page names the empty field before the form is sent (its own line says only "incorrect").
        assert "active-sign-in-missing" in c.get("").text


def test_disabled_removed_and_repassworded_users_lose_their_sessions(labeller):
    engine = labeller.project.engine
    db.write(engine, lambda s: users.add(s, "eve", PASSWORD))
    clients = {n: sign_in(labeller.url, n) for n in ("ann", "bob", "rev", "eve")}
    assert all(c.get("config").status_code == 200 for c in clients.values())

    def revoke(s) -> None:  # noqa: ANN001
        users.set_disabled(s, "ann", True)
        users.set_password(s, "bob", "a brand new password")
        s.delete(s.get(User, "rev"))

    db.write(engine, revoke)
    started = time.monotonic()
    pending = {"ann", "bob", "rev"}
    while pending and time.monotonic() - started < REVOKE_WITHIN_S:
        pending = {n for n in pending if clients[n].get("config").status_code != 401}
        time.sleep(0.1)
    assert not pending, f"still signed in after {REVOKE_WITHIN_S} s: {pending}"
    assert clients["eve"].get("config").status_code == 200  # nobody else is signed out
    with httpx.Client(base_url=labeller.url, timeout=30) as c:
        assert c.post("login", data={"username": "ann", "password": PASSWORD}).status_code == 400
        assert c.post("login", data={"username": "bob", "password": PASSWORD}).status_code == 400
        assert c.post("login", data={"username": "bob", "password": "a brand new password"}).status_code == 200
    for c in clients.values():
        c.close()


def raw_post(port: int, path: str, head: dict[str, str], first: bytes, chunks: int, chunk: bytes) -> int:
    """POST ``first`` then up to ``chunks`` pieces (stopping when the server answers or hangs up);
    returns the status code of the answer."""
    chunked = head.get("Transfer-Encoding") == "chunked"

    def frame(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in head.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + frame(first))
        sock.settimeout(0.05)
        reply = b""
        for _ in range(chunks):
            try:
                sock.sendall(frame(chunk))
            except OSError:
                break  # the server refused and closed
            try:
                reply = sock.recv(4096)
                if reply:
                    break
            except TimeoutError:
                continue
        sock.settimeout(30)
        while not reply:
            reply = sock.recv(4096)
    return int(reply.split(b" ", 2)[1])


def test_before_sign_in_nothing_leaks_and_big_bodies_are_refused(labeller):
    page = httpx.get(labeller.url, timeout=30)
    assert page.status_code == 200 and "window.gradio_config" in page.text
    assert not [c for c in CLASSES if c in page.text]
    assert httpx.get(labeller.url + "config", timeout=30).status_code == 401
    c = sign_in(labeller.url, "ann")
    # Signed in, the same page does describe the classes: the check above could have failed.
    assert all(cls in c.get("").text for cls in CLASSES)
    r = c.post("login", data={"username": "ann", "password": PASSWORD})
    cookies = r.headers.get_list("set-cookie")
    assert cookies and all("samesite=lax" in v.lower() for v in cookies)
    port = urlsplit(labeller.url).port
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    boundary = "b0undary"
    upload = {"Cookie": cookie, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    piece = b"x" * 2**16
    n_event = 3 * 2**20 // len(piece)  # the loops stop just past each limit, far below 50 MB
    n_upload = (security.MAX_UPLOAD_BYTES + 2**20) // len(piece)
    # 50 MB announced: refused before a byte of it is read.
    assert raw_post(port, "/gradio_api/upload", {**upload, "Content-Length": str(50 * 2**20)}, part, 1, piece) == 413
    # 50 MB in chunks without a length, as an upload and as an event: refused once past the limit.
    assert raw_post(port, "/gradio_api/upload", {**upload, "Transfer-Encoding": "chunked"}, part, n_upload,
                    piece) == 413
    join = {"Cookie": cookie, "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    assert raw_post(port, "/gradio_api/queue/join", join, b'{"data": ["', n_event, piece) == 413
    # A camera-sized photo (3 MiB) still uploads for Find by photo; the same size as an event does not.
    photo = httpx.post(labeller.url + "gradio_api/upload", headers={"Cookie": cookie}, timeout=30,
                       files={"files": ("photo.jpg", b"\xff\xd8" + b"x" * (3 * 2**20), "image/jpeg")})
    assert photo.status_code == 200, photo.text
    assert c.get("config").status_code == 200  # the server is fine afterwards
    # Off: the run history page, the monitoring dashboard; errors carry no internals.
    assert c.get("gradio_api/runs").status_code == 404 and c.get("monitoring").status_code in (403, 404)
    assert c.get("config").json().get("show_error") is False
    c.close()


@pytest.mark.parametrize("labeller", [{"no_auth": True}], indirect=True)
def test_a_demo_without_sign_in_answers_loopback_names_only(labeller):
    own = urlsplit(labeller.url).netloc
    assert httpx.get(labeller.url + "config", timeout=30).status_code == 200
    assert httpx.get(labeller.url + "config", headers={"Host": f"localhost:{urlsplit(labeller.url).port}"},
                     timeout=30).status_code == 200
    # A page on a DNS name rebound to 127.0.0.1 sends its own name as Host: refused.
    rebound = httpx.get(labeller.url + "config", headers={"Host": "rebind.evil.example"}, timeout=30)
    assert rebound.status_code == 403 and own not in rebound.text
