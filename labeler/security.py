"""What keeps the labeller safe on a shared network (SECURITY.md), in front of Gradio.

- `Guard`, an ASGI middleware around the whole server: refuses requests whose ``Origin`` is neither
  the server's own nor one the operator allowed (so a hostile page cannot ride a session), bodies
  over `MAX_BODY_BYTES`, and, in a no-sign-in demo, any ``Host`` that is not loopback (DNS
  rebinding); ends sessions `Sessions` no longer honours; rewrites Gradio's ``SameSite=None``
  cookies to ``Lax``; keeps the API description out of the page shown before sign-in.
- `LoginThrottle`: growing delays, then HTTP 429, per user name and per client address.
- `Sessions`: ties each Gradio sign-in token to the user row that granted it; a disabled,
  deleted or re-passworded user loses it within `SESSION_CHECK_S`.
- `make_auth`: the sign-in check Gradio calls, with the throttle, logging of failures (never the
  password) and the scrypt hash run off the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# Events are a few kB; the one upload (Find by photo) is a product photo, which straight from a
# camera can be 10-15 MB. Anything larger is refused before it is read into memory.
MAX_BODY_BYTES = 1 * 2**20
MAX_UPLOAD_BYTES = 20 * 2**20
UPLOAD_PATH_SUFFIX = "/upload"  # Gradio's file upload route (gradio_api/upload)
SESSION_CHECK_S = 1.0  # how stale the view of users may be (disable -> 401 well within 5 s)
SESSION_MAX_AGE_S = 12 * 3600  # a sign-in lasts a working day, not until the server restarts
TOKEN_COOKIE_PREFIX = "access-token-"  # Gradio's session cookies: access-token[-unsecure]-<id>
LOOPBACK_NAMES = ("localhost",)
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- origins


def normal_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-cased with the scheme's default port dropped, or None
    when ``origin`` is not an http(s) origin (``null``, ``file://``...)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != DEFAULT_PORTS[parts.scheme] else "")


def _host_port(netloc: str) -> tuple[str, int | None]:
    try:
        parts = urlsplit(f"//{netloc.strip()}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", None


def same_origin(origin: str, host_header: str | None) -> bool:
    """Whether ``origin`` names the host the request was sent to (the ``Host`` header).

    The scheme is not compared: behind a TLS proxy the page is https while this server speaks
    http. A missing port means the scheme's default on either side."""
    norm = normal_origin(origin)
    if norm is None or not host_header:
        return False
    parts = urlsplit(norm)
    host, port = _host_port(host_header)
    want_port = parts.port or DEFAULT_PORTS[parts.scheme]
    return host == (parts.hostname or "") and (port or DEFAULT_PORTS[parts.scheme]) == want_port


def check_origins(origins: Iterable[str]) -> frozenset[str]:
    """The operator's ``--allowed-origin`` values, normalised; ValueError for one that is not an
    http(s) origin (a path, a wildcard, ``null``)."""
    out = set()
    for o in origins:
        norm = normal_origin(o)
        if norm is None or "*" in o:
            raise ValueError(f"--allowed-origin {o!r} is not an origin: give scheme://host[:port], "
                             "e.g. https://labels.example.org")
        out.add(norm)
    return frozenset(out)


# --------------------------------------------------------------------------- login throttling


@dataclass(frozen=True)
class ThrottlePolicy:
    free: int  # failures answered without delay
    limit: int  # from this many failures on, attempts are refused with 429 without a check
    base_delay_s: float  # the first delay; each further failure doubles it
    max_delay_s: float
    window_s: float  # failures are forgotten this long after the last one

    def delay(self, failures: int) -> float:
        if failures < self.free:
            return 0.0
        return min(self.base_delay_s * 2 ** (failures - self.free), self.max_delay_s)


# A name gets a few free tries, then waits, then is locked for the window; an address may try
# many names (a team behind one NAT or proxy), so it gets more room before it waits.
USER_POLICY = ThrottlePolicy(free=3, limit=10, base_delay_s=0.25, max_delay_s=4.0, window_s=900.0)
ADDRESS_POLICY = ThrottlePolicy(free=30, limit=200, base_delay_s=0.25, max_delay_s=4.0, window_s=900.0)
MAX_TRACKED = 50_000  # keys kept before the oldest are forgotten (random names cannot fill memory)


class TooManyAttempts(Exception):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Count:
    failures: int = 0
    last: float = 0.0


class LoginThrottle:
    """Failed sign-ins per user name and per client address.

    An attempt is counted when it is admitted (so parallel guesses cannot slip past the limit)
    and taken back when it succeeds; a success also clears the name's count. Thread-safe."""

    def __init__(self, *, user: ThrottlePolicy = USER_POLICY, address: ThrottlePolicy = ADDRESS_POLICY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policies = {"user": user, "address": address}
        self.clock = clock
        self._counts: dict[tuple[str, str], _Count] = {}
        self._lock = threading.Lock()

    def _get(self, key: tuple[str, str], now: float) -> _Count:
        c = self._counts.get(key)
        if c is not None and now - c.last > self.policies[key[0]].window_s:
            c = None
        if c is None:
            if len(self._counts) >= MAX_TRACKED:
                self._forget_oldest()
            c = self._counts[key] = _Count(last=now)
        return c

    def _forget_oldest(self) -> None:
        for key in sorted(self._counts, key=lambda k: self._counts[k].last)[: MAX_TRACKED // 10]:
            del self._counts[key]

    def admit(self, name: str, address: str) -> float:
        """Count an attempt; returns the seconds to wait before checking the password, or raises
        `TooManyAttempts` (nothing counted) when either key is over its limit."""
        now = self.clock()
        with self._lock:
            counts = [(self.policies[kind], self._get((kind, key), now))
                      for kind, key in (("user", name), ("address", address))]
            locked = [p.window_s - (now - c.last) for p, c in counts if c.failures >= p.limit]
            if locked:
                raise TooManyAttempts(max(locked))
            wait = max(p.delay(c.failures) for p, c in counts)
            for _p, c in counts:
                c.failures += 1
                c.last = now
            return wait

    def failures(self, name: str, address: str) -> tuple[int, int]:
        with self._lock:
            now = self.clock()
            return self._get(("user", name), now).failures, self._get(("address", address), now).failures

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            now = self.clock()
            self._get(("user", name), now).failures = 0
            c = self._get(("address", address), now)
            c.failures = max(0, c.failures - 1)  # only this attempt: one good account clears no guesses


# --------------------------------------------------------------------------- sessions


@dataclass
class Grant:
    name: str
    generation: int
    issued: float


class Sessions:
    """Gradio's sign-in tokens (``App.tokens``: token -> name), each tied to the generation of the
    user row that granted it. ``generations`` loads name -> generation of every enabled user."""

    def __init__(self, generations: Callable[[], dict[str, int]], *, check_every_s: float = SESSION_CHECK_S,
                 max_age_s: float = SESSION_MAX_AGE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._load = generations
        self.check_every_s = check_every_s
        self.max_age_s = max_age_s
        self.clock = clock
        self.tokens: Callable[[], dict[str, str]] = dict  # set by the server once Gradio's app exists
        self._grants: dict[str, Grant] = {}
        self._generations: dict[str, int] = {}
        self._loaded = float("-inf")
        self._lock = threading.Lock()

    def grant(self, token: str, name: str, generation: int) -> None:
        with self._lock:
            self._grants[token] = Grant(name, generation, self.clock())

    def _refresh(self) -> None:
        with self._lock:
            if self.clock() - self._loaded < self.check_every_s:
                return
        gens = self._load()
        live = self.tokens()
        with self._lock:
            self._generations = gens
            self._loaded = self.clock()
            for token in [t for t in self._grants if t not in live]:  # signed out
                del self._grants[token]

    async def refresh(self) -> None:
        """Reload the users when the view is older than ``check_every_s`` (off the event loop)."""
        if self.clock() - self._loaded >= self.check_every_s:
            await asyncio.to_thread(self._refresh)

    def honoured(self, token: str) -> bool:
        """Whether a token Gradio knows may still be used; a token it may not is withdrawn from
        Gradio, so every route refuses it from now on."""
        live = self.tokens()
        name = live.get(token)
        if name is None:
            return True  # not a session: Gradio refuses it by itself
        with self._lock:
            g = self._grants.get(token)
            why = ("not granted by this server" if g is None or g.name != name
                   else "expired" if self.clock() - g.issued > self.max_age_s
                   else "user disabled or removed" if name not in self._generations
                   else "password changed" if self._generations[name] != g.generation
                   else None)
            if why is None:
                return True
            self._grants.pop(token, None)
        live.pop(token, None)
        log.info("session of %r ended: %s", name, why)
        return False


# --------------------------------------------------------------------------- sign-in


@dataclass
class LoginAttempt:
    """One POST /login as the middleware sees it; the auth check fills ``granted``."""

    address: str
    granted: tuple[str, int] | None = None


_attempt: contextvars.ContextVar[LoginAttempt | None] = contextvars.ContextVar("login_attempt", default=None)


def make_auth(verify: Callable[[str, str], int | None],
              throttle: LoginThrottle) -> Callable[[str, str], Awaitable[bool]]:
    """Gradio's ``auth`` callable. ``verify(name, password)`` -> the user's generation when the
    password is right and the user enabled, else None; it runs in a worker thread (scrypt takes
    tens of ms and would stall every other request on the event loop)."""

    async def check(name: str, password: str) -> bool:
        attempt = _attempt.get()
        if attempt is None:  # only reachable through Guard; refuse rather than skip the throttle
            return False
        try:
            wait = throttle.admit(name, attempt.address)
        except TooManyAttempts as exc:
            log.warning("sign-in refused for %r from %s: %s", name, attempt.address, exc)
            raise HTTPException(status_code=429, detail=str(exc),
                                headers={"Retry-After": str(int(exc.retry_after_s) + 1)}) from None
        if wait:
            await asyncio.sleep(wait)
        generation = await asyncio.to_thread(verify, name, password)
        if generation is None:
            by_name, by_address = throttle.failures(name, attempt.address)
            log.warning("failed sign-in for %r from %s (%d recent failures for the name, %d from the address)",
                        name, attempt.address, by_name, by_address)
            return False
        throttle.succeeded(name, attempt.address)
        attempt.granted = (name, generation)
        log.info("%r signed in from %s", name, attempt.address)
        return True

    return check


_FIELD_NAMES = {"username": "user name", "password": "password"}


def missing_fields_message(body: bytes) -> str:
    """The JSON answer to a sign-in with empty fields, from FastAPI's 422 body (its ``loc`` lists)."""
    try:
        detail = json.loads(body).get("detail", [])
        missing = [_FIELD_NAMES.get(str(d["loc"][-1]), str(d["loc"][-1])) for d in detail]
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        missing = []
    what = " and ".join(missing) or "user name and password"
    return json.dumps({"detail": f"Enter your {what} to sign in ({what} missing)."})


# Shown on the sign-in page, whose own error line can only say "incorrect credentials": an empty
# field is named before the form is sent.
_SIGN_IN_HINT = b"""<script>
document.addEventListener("click", (ev) => {
  const btn = ev.target.closest && ev.target.closest("button");
  const pw = document.querySelector("input[type=password]");
  if (!btn || !pw || !/log ?in|sign ?in/i.test(btn.textContent || "")) return;
  const form = btn.closest(".form") || document;
  const name = [...form.querySelectorAll("input[type=text], textarea")].find((e) => e !== pw);
  const missing = [];
  if (name && !name.value.trim()) missing.push("user name");
  if (!pw.value) missing.push("password");
  let note = document.getElementById("active-sign-in-missing");
  if (!missing.length) { if (note) note.remove(); return; }
  ev.preventDefault(); ev.stopImmediatePropagation();
  if (!note) {
    note = document.createElement("p"); note.id = "active-sign-in-missing"; note.setAttribute("role", "alert");
    note.style.color = "#b91c1c"; btn.parentElement.insertBefore(note, btn);
  }
  note.textContent = "Enter your " + missing.join(" and ") + " to sign in.";
}, true);
</script>"""


# --------------------------------------------------------------------------- the middleware

_SAMESITE_NONE = re.compile(rb";\s*samesite=none", re.I)
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)
_NO_API_INFO = b"window.gradio_api_info = null;</script>"


@dataclass
class GuardConfig:
    sessions: Sessions | None  # None: a no-sign-in demo
    allowed_origins: frozenset[str] = frozenset()
    max_body_bytes: int = MAX_BODY_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES

    def limit(self, path: str) -> int:
        """The largest body accepted on ``path``: an upload may be a photo, anything else is an event."""
        return self.max_upload_bytes if path.rstrip("/").endswith(UPLOAD_PATH_SUFFIX) else self.max_body_bytes


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body over {limit:,} bytes")


class Guard:
    """ASGI middleware: see the module docstring. Outermost, so nothing Gradio does comes first."""

    def __init__(self, app: ASGIApp, config: GuardConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.config.sessions is None and not is_loopback(_host_port(host)[0]):
            # Without sign-in only loopback may talk to us; a page on a rebound DNS name may not.
            await self._refuse(scope, receive, send, 403, "this demo server (no sign-in) answers on loopback only")
            return
        origin = headers.get("origin")
        if origin is not None and not (same_origin(origin, host)
                                       or normal_origin(origin) in self.config.allowed_origins):
            log.warning("refused %s %s from foreign origin %r", scope.get("method", "WS"), scope["path"], origin[:200])
            await self._refuse(scope, receive, send, 403, "cross-origin request refused")
            return
        if scope["type"] == "http":
            limit = self.config.limit(scope["path"])
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                await self._refuse(scope, receive, send, 413, f"request body over {limit:,} bytes")
                return
            receive = self._limited(receive, limit)
        signed_in = False
        if self.config.sessions is not None:
            signed_in = await self._check_sessions(headers)
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login"):
            await self._login(scope, receive, send)
            return
        if (scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] in ("", "/")
                and self.config.sessions is not None and not signed_in):
            await self._sign_in_page(scope, receive, send)
            return
        await self.app(scope, receive, self._cookies(send))

    async def _check_sessions(self, headers: Headers) -> bool:
        """True when the request carries a session still honoured; withdraws one that is not."""
        sessions = self.config.sessions
        assert sessions is not None  # noqa: S101 (checked by the caller)
        tokens = [v for k, v in cookie_parser(headers.get("cookie", "")).items() if k.startswith(TOKEN_COOKIE_PREFIX)]
        if not tokens:
            return False
        await sessions.refresh()
        live = sessions.tokens()
        ok = False
        for t in tokens:
            if t in live and sessions.honoured(t):
                ok = True
        return ok

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # a chunked body without Content-Length: stop reading it
                    raise BodyTooLarge(limit)
            return message

        return wrapped

    def _cookies(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, _SAMESITE_NONE.sub(b"; SameSite=lax", v) if k.lower() == b"set-cookie" else v)
                                      for k, v in message.get("headers", [])]
            await send(message)

        return wrapped

    async def _login(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        attempt = LoginAttempt(address=client[0] if client else "unknown")
        sessions = self.config.sessions
        cookies_send = self._cookies(send)

        held: Message | None = None  # a 422 start, held until its body says which field is missing

        async def wrapped(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message.get("status") == 422:
                held = message
                return
            if held is not None and message["type"] == "http.response.body":
                # FastAPI's 422 ("Field required") for an empty form: say what is missing instead.
                body = missing_fields_message(message.get("body", b"")).encode()
                hdrs = MutableHeaders(raw=list(held.get("headers", [])))
                hdrs["content-length"] = str(len(body))
                hdrs["content-type"] = "application/json"
                await cookies_send({**held, "status": 400, "headers": hdrs.raw})
                await cookies_send({"type": "http.response.body", "body": body, "more_body": False})
                held = None
                return
            if message["type"] == "http.response.start" and message.get("status") == 200 and attempt.granted:
                for k, v in message.get("headers", []):
                    if k.lower() == b"set-cookie" and v.startswith(TOKEN_COOKIE_PREFIX.encode()):
                        token = v.split(b";", 1)[0].split(b"=", 1)[1].decode("latin-1").strip('"')
                        if sessions is not None:
                            sessions.grant(token, *attempt.granted)
            await cookies_send(message)

        reset = _attempt.set(attempt)
        try:
            await self.app(scope, receive, wrapped)
        finally:
            _attempt.reset(reset)

    async def _sign_in_page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gradio's page before sign-in, without the API description it embeds (every endpoint
        with its parameters, class names among them). Signed in, the page fetches it itself."""
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]  # plain body
        start: Message | None = None
        body = bytearray()

        async def wrapped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            page = _API_INFO.sub(lambda _m: _NO_API_INFO, bytes(body), count=1).replace(
                b"</body>", _SIGN_IN_HINT + b"</body>", 1)
            hdrs = MutableHeaders(raw=list(start.get("headers", [])))
            if "content-length" in hdrs:
                hdrs["content-length"] = str(len(page))
            await self._cookies(send)({**start, "headers": hdrs.raw})
            await send({"type": "http.response.body", "body": page, "more_body": False})

        await self.app(scope, receive, wrapped)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, why: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": why})
            return
        body = why.encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
