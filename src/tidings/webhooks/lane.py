"""The webhook lane: the ASGI app a server runs (``tidings.app.asgi_app``). It answers every ``POST
/webhooks/…`` itself, ahead of FastAPI's middleware, routing, request model and dependencies, which cost
more CPU than verifying and applying a status.
Status callbacks are the busiest traffic a deployment sees (about three per message sent), and each is a
small signed POST. Anything else under ``/webhooks/`` (Meta's GET handshake, a malformed path) goes on
to FastAPI. Every webhook request is counted and timed for ``/metrics`` here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tidings.errors import ApiError
from tidings.guards import SECURITY_HEADERS, WEBHOOK_MAX_BODY
from tidings.metrics import WEBHOOK_SECONDS, WEBHOOKS
from tidings.webhooks.api import receive, route_of
from tidings.webhooks.batch import WebhookBatcher

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

MAX_BODY = WEBHOOK_MAX_BODY  # Meta's payloads are at most 3 MB


def _too_large() -> ApiError:
    return ApiError(413, "payload_too_large", f"webhook bodies are limited to {MAX_BODY} bytes")


async def _body(receive_: Receive) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive_()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class WebhookLane:
    """Wraps the FastAPI app: webhook POSTs are answered here, everything else goes on to ``app``."""

    def __init__(self, app: ASGIApp, batcher: WebhookBatcher) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: Scope, receive_: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/webhooks/"):
            await self.app(scope, receive_, send)
            return
        provider = path.split("/", 3)[2] or "unknown"
        began = time.perf_counter()
        status = 500
        route = route_of(path) if scope["method"] == "POST" else None
        try:
            if route is None:
                status = await self._forward(scope, receive_, send)
                return
            try:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                declared = headers.get("content-length", "")
                if declared.isdigit() and int(declared) > MAX_BODY:  # refused before it is read
                    raise _too_large()
                body = await _body(receive_)
                status, answer = 200, await receive(self.batcher, *route, headers, body)
            except ApiError as exc:
                status, answer = exc.status, exc.body()
            except ConnectionError:
                status = 499
                return
            except Exception:  # the database failed: a 5xx makes the provider send it again
                log.exception("webhook %s could not be applied", path)
                status = 500
                answer = {"code": "internal_error", "message": "the webhook could not be applied; retry it"}
            data = json.dumps(answer).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(data)),
                        *SECURITY_HEADERS,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": data})
        finally:
            WEBHOOKS.labels(provider, str(status)).inc()
            WEBHOOK_SECONDS.labels(provider).observe(time.perf_counter() - began)

    async def _forward(self, scope: Scope, receive_: Receive, send: Send) -> int:
        status = 500

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive_, send_wrapper)
        return status
