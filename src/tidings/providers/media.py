"""Downloading a file a user sent, for every provider: streamed, bounded, and only from where the
provider's credentials may go.

A media URL comes from a webhook (Vonage) or from the provider's API (Meta): ``trusted_media_url`` lets the
provider's token go only to the provider's own media hosts or to the integration's checked base URL's origin
(an operator's extra host, a test stand-in), so a webhook cannot make Tidings send its token, or a request,
anywhere else. ``download`` streams the body and stops at ``MAX_MEDIA_BYTES`` (WhatsApp's own limit is
100 MB for a document), so one huge file cannot exhaust the worker's memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from tidings.providers.base import ProviderApiError
from tidings.providers.trust import summary

MAX_MEDIA_BYTES = 100 * 1024 * 1024
MEDIA_TIMEOUT = httpx.Timeout(60.0, connect=10.0)  # per read: a large file may take minutes in all
_ERROR_BODY_LIMIT = 64 * 1024


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def trusted_media_url(url: str, base_url: str, host_suffixes: Iterable[str]) -> bool:
    """Whether ``url`` may be fetched with the provider's credentials: https on one of the provider's media
    hosts (a host equal to, or under, one of ``host_suffixes``), or the same origin as ``base_url`` (the
    integration's base URL, already checked against the provider's and the operator's hosts)."""
    try:
        scheme, host, port = _origin(url)
        parts = urlsplit(url)
    except ValueError:
        return False
    if not host or parts.username is not None or parts.password is not None:
        return False
    if (scheme, host, port) == _origin(base_url):
        return True
    own = any(host == s or host.endswith("." + s) for s in host_suffixes)
    return own and scheme == "https" and port == 443


def _error(response: httpx.Response, body: bytes) -> ProviderApiError:
    """A provider's error answer as ``ProviderApiError``: a Graph API error's code and message, an RFC 7807
    problem's title and detail, or the HTTP status alone (never the body itself)."""
    code: int | None = None
    message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    try:
        payload: Any = json.loads(body) if body else None
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping):  # Meta
            raw = error.get("code")
            code = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
            message = summary("", error.get("message") or message, 300)
        elif payload.get("title") or payload.get("detail"):  # Vonage (RFC 7807)
            parts = [str(payload[k]) for k in ("title", "detail") if payload.get(k)]
            message = summary("", ": ".join(parts), 300)
    return ProviderApiError(response.status_code, code, message)


async def download(
    http: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    *,
    limit: int = MAX_MEDIA_BYTES,
) -> tuple[bytes, str | None]:
    """The bytes at ``url`` and the answer's ``Content-Type``; ``ProviderApiError`` for an error answer, a
    network error, or a body larger than ``limit`` bytes (refused from its ``Content-Length`` before it is
    read, or as soon as the stream passes the limit)."""
    try:
        async with http.stream("GET", url, headers=dict(headers), timeout=MEDIA_TIMEOUT) as response:
            if not response.is_success:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
                raise _error(response, body[:_ERROR_BODY_LIMIT])
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ProviderApiError(
                    response.status_code, None, f"the file is {declared} bytes, more than {limit}"
                )
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ProviderApiError(response.status_code, None, f"the file is more than {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type")
    except httpx.HTTPError as exc:
        raise ProviderApiError(None, None, summary(type(exc).__name__, str(exc))) from exc


def mime_of(content_type: str | None, fallback: str | None) -> str:
    """The MIME type of a download: the one the provider stated in the message or its media object when
    there is one, else the answer's ``Content-Type`` without parameters, else ``application/octet-stream``."""
    if fallback:
        return fallback
    if content_type:
        return content_type.split(";", 1)[0].strip() or "application/octet-stream"
    return "application/octet-stream"
