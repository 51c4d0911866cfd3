"""The HTTP client the workers send with: one ``httpx.AsyncClient`` per process, kept-alive connections,
and aiohttp underneath (``httpx-aiohttp``) instead of httpcore, whose connection pool costs several times
more CPU per request (bench/throughput.py measures both; docs/benchmarks.md has the figures).

The session carries one aiohttp trace hook, the rate limiter's last look: aiohttp calls
``on_request_headers_sent`` when the request is about to be written (the headers are buffered and go out
with the body, in the task aiohttp starts right after), and there ``ratelimit.check_before_write`` — with
no await — refuses a request whose slot is still to come, turned late since it was taken, or would put
more than the rate in a window; the transport then waits, outside aiohttp, and makes the request again.

Providers keep speaking httpx (``tidings.providers``); only the transport changes. Its errors are mapped
so that a provider can tell "the request never left" (``ConnectError``/``ConnectTimeout``: safe to retry)
from "it may have reached the provider" (``ReadError``/``ReadTimeout``: reconcile before resending).
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from tidings.delivery import ratelimit

_NEVER_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class ProviderTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        while True:
            try:
                return await super().handle_async_request(request)
            except ratelimit.SlotMissed:
                # The last look refused the write (nothing was written): wait for the send's moment, here
                # and not inside aiohttp, then make the request again.
                await ratelimit.wait_for_write()
            except httpx.ConnectTimeout as exc:
                # httpx-aiohttp maps every aiohttp.ClientConnectionError to ConnectTimeout, including a
                # server that hung up after the request was written: only a failed connect is "never sent".
                if isinstance(exc.__cause__, _NEVER_SENT):
                    raise
                raise httpx.ReadError(
                    str(exc) or type(exc.__cause__).__name__, request=request
                ) from exc.__cause__


async def _headers_ready(*_: object) -> None:
    # aiohttp buffers the headers and writes them with the body, in a task it starts right after this
    # hook; nothing here awaits (waiting inside aiohttp's write path left requests unanswered).
    ratelimit.check_before_write()


def pacing_trace() -> aiohttp.TraceConfig:
    """The hook that holds a request to its rate-limit slot up to the moment it is written."""
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_headers_ready)
    return trace


def paces_at_write(client: httpx.AsyncClient) -> bool:
    """True for a client made by ``provider_client``: it holds each request to its rate-limit slot right
    before writing it (so a send over it may start ahead of its slot: ``Pacer.turn``'s lead)."""
    return isinstance(getattr(client, "_transport", None), ProviderTransport)


def provider_client(timeout: float = 15.0, connections: int = 256) -> httpx.AsyncClient:
    """A kept-alive client for provider calls (create it anywhere; its aiohttp session opens lazily, on
    the event loop of the first request)."""

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=connections,
            keepalive_timeout=30,
            ssl=httpx.create_ssl_context(),
            enable_cleanup_closed=True,
        )
        return aiohttp.ClientSession(connector=connector, trace_configs=[pacing_trace()])

    return httpx.AsyncClient(timeout=timeout, transport=ProviderTransport(client=session))
