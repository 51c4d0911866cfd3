"""The HTTP client the workers send with: one ``httpx.AsyncClient`` per process, kept-alive connections,
and aiohttp underneath (``httpx-aiohttp``) instead of httpcore, whose connection pool costs several times
more CPU per request (bench/throughput.py measures both; docs/benchmarks.md has the figures).

Providers keep speaking httpx (``tidings.providers``); only the transport changes. Its errors are mapped
so that a provider can tell "the request never left" (``ConnectError``/``ConnectTimeout``: safe to retry)
from "it may have reached the provider" (``ReadError``/``ReadTimeout``: reconcile before resending).
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

_NEVER_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class ProviderTransport(AiohttpTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectTimeout as exc:
            # httpx-aiohttp maps every aiohttp.ClientConnectionError to ConnectTimeout, including a server
            # that hung up after the request was written: only a failed connect is "never sent".
            if isinstance(exc.__cause__, _NEVER_SENT):
                raise
            raise httpx.ReadError(
                str(exc) or type(exc.__cause__).__name__, request=request
            ) from exc.__cause__


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
        return aiohttp.ClientSession(connector=connector)

    return httpx.AsyncClient(timeout=timeout, transport=ProviderTransport(client=session))
