"""What every HTTP answer passes through: security headers, the request-body size limit, the JSON
answer to an unexpected error, and the limiter of failed sign-ins.

``Guard`` is the outermost middleware of the FastAPI app (inside Starlette's own error middleware). The
webhook lane (webhooks/lane.py) answers webhook POSTs ahead of FastAPI and adds ``SECURITY_HEADERS`` and
its own body limit itself.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * KIB
API_MAX_BODY = 1 * MIB  # every /api/v1 call (the largest is a segment definition or a campaign)
UPLOAD_MAX_BODY = 8 * MIB  # /1/upload: 1,000 records of about 8 KiB each
WEBHOOK_MAX_BODY = 4 * MIB  # Meta's payloads are at most 3 MB (the lane keeps the same limit)
# An agent's file (conversations.service.MAX_MEDIA, 16 MiB) and its multipart form around it; the route
# refuses a file over 16 MiB itself.
MEDIA_MAX_BODY = 16 * MIB + 64 * KIB

UPLOAD_PATH = "/1/upload"
MEDIA_PATH = "/api/v1/media"

# On every answer. The API answers JSON: nothing in it may be run, framed or sniffed as something else.
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
SECURITY_HEADERS = [*_COMMON, (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]
# An HTML page of our own: only what it loads from this server.
HTML_CSP = (
    b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'"
)
# FastAPI's /docs (Swagger UI) and /redoc load their scripts and styles from a CDN and start with an
# inline script; their CSP allows exactly that (and the Google font /redoc uses).
DOCS_CSP = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    b"font-src https://fonts.gstatic.com; img-src 'self' data: https:; connect-src 'self'; "
    b"worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def body_limit(path: str) -> int:
    if path == UPLOAD_PATH:
        return UPLOAD_MAX_BODY
    if path.startswith("/webhooks/"):
        return WEBHOOK_MAX_BODY
    if path == MEDIA_PATH:
        return MEDIA_MAX_BODY
    return API_MAX_BODY


def error_answer(path: str, status: int, code: str, message: str) -> dict[str, Any]:
    """An error body in the route's shape: CleverTap's for ``/1/upload``, ``{"code", "message"}`` else."""
    if path == UPLOAD_PATH:
        return {"status": "fail", "error": message, "code": status}
    return {"code": code, "message": message}


def _headers_with_security(headers: list[tuple[bytes, bytes]], path: str) -> list[tuple[bytes, bytes]]:
    names = {name.lower() for name, _ in headers}
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    out = [h for h in headers if h[0].lower() != b"server"]
    if content_type.startswith(b"text/html"):
        csp = DOCS_CSP if path in DOCS_PATHS else HTML_CSP
        extra = [*_COMMON, (b"content-security-policy", csp)]
    else:
        extra = SECURITY_HEADERS
    out.extend(h for h in extra if h[0] not in names)
    return out


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: security headers on every answer; a request body over its limit is refused with
    413 before it is read whole, and before authentication (a declared ``Content-Length`` at once, a
    streamed body as soon as it passes the limit); an unexpected exception becomes a JSON 500 (logged with
    its trace) instead of Starlette's plain-text one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = _headers_with_security(list(message.get("headers", [])), path)
            await send(message)

        limit = body_limit(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse_too_large(path, limit, send_secured)
            return
        if declared is None and _has_body(scope):
            # A streamed (chunked) body: read it here, at most ``limit`` bytes, then hand it on.
            try:
                receive = await _bounded(receive, limit)
            except _TooLarge:
                await _refuse_too_large(path, limit, send_secured)
                return
            except ConnectionError:
                return
        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:
            if started:  # part of the answer is out: the server ends the connection
                raise
            if _out_of_range(exc):  # a number the API let through that the database cannot hold
                log.warning("%s %s: a value out of range reached the database", scope.get("method"), path,
                            exc_info=True)
                message = "a number in the request is out of range"
                await _send_json(send_secured, 422, error_answer(path, 422, "out_of_range", message))
                return
            log.exception("%s %s failed", scope.get("method"), path)
            body = error_answer(path, 500, "internal_error", "internal error; it was logged, try again later")
            await _send_json(send_secured, 500, body)


def _out_of_range(exc: BaseException) -> bool:
    """SQLite's "Python int too large", PostgreSQL's numeric or datetime field overflow."""
    if isinstance(exc, OverflowError):
        return True
    from sqlalchemy.exc import DataError

    return isinstance(exc, DataError) and getattr(exc.orig, "sqlstate", None) in ("22003", "22008")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _has_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", ()))


async def _bounded(receive: Receive, limit: int) -> Receive:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

    async def replayed() -> Message:
        return replay.pop() if replay else await receive()

    return replayed


async def _refuse_too_large(path: str, limit: int, send: Send) -> None:
    message = f"the request body is larger than {limit} bytes ({limit // MIB} MiB)"
    await _send_json(send, 413, error_answer(path, 413, "payload_too_large", message), close=True)


async def _send_json(send: Send, status: int, body: dict[str, Any], close: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    if close:  # the unread body is not worth reading to keep the connection
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# ----------------------------------------------------------------------------------- failed sign-ins


class SignInLimiter:
    """Failed sign-ins of this process, per client address and per account id (in memory).

    An address with ``per_address`` failures within ``window`` seconds is refused (429) until the oldest
    of them is ``window`` old; so is an account id with ``per_account`` failures — except from an address
    that signed in to that account successfully within ``trusted_for`` seconds, so that someone guessing
    passcodes from elsewhere cannot lock the account's own integration out. Successes are never limited
    and never counted. Memory is bounded (the least recently failed keys are forgotten first)."""

    def __init__(
        self,
        *,
        per_address: int = 30,
        per_account: int = 10,
        window: float = 300.0,
        trusted_for: float = 30 * 86400.0,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.per_account = per_account
        self.window = window
        self.trusted_for = trusted_for
        self.max_keys = max_keys
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, account_id: str | None, address: str) -> int:
        """Seconds before this address may try this account again; 0: now."""
        now = self.clock()
        with self._lock:
            waits = [self._wait(("address", address), self.per_address, now)]
            if account_id:
                account_id = account_id[:100]
                trusted = self._trusted.get((account_id, address))
                if trusted is None or now - trusted > self.trusted_for:
                    waits.append(self._wait(("account", account_id), self.per_account, now))
        wait = max(waits)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, account_id: str | None, address: str) -> None:
        now = self.clock()
        with self._lock:
            self._add(("address", address), self.per_address, now)
            if account_id:
                self._add(("account", account_id[:100]), self.per_account, now)

    def succeeded(self, account_id: str, address: str) -> None:
        with self._lock:
            key = (account_id, address)
            self._trusted.pop(key, None)
            self._trusted[key] = self.clock()
            while len(self._trusted) > self.max_keys:
                self._trusted.popitem(last=False)

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        times = self._failures.get(key)
        if times is None or len(times) < limit:
            return 0.0
        return times[0] + self.window - now

    def _add(self, key: tuple[str, str], limit: int, now: float) -> None:
        times = self._failures.pop(key, None)
        if times is None:
            times = deque(maxlen=max(limit, 1))
        times.append(now)
        self._failures[key] = times  # most recently failed last
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)
