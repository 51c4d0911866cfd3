"""Where a provider's credentials may go, and the shape of its ids.

A base URL names a provider's own host over https (its plug-in's ``ProviderType.hosts``), or one of the
operator's ``TIDINGS_EXTRA_PROVIDER_HOSTS`` (``host`` or ``host:port``; http allowed for those: a regional
endpoint or a test stand-in on loopback). It is checked when the integration is saved and again where a
request is made, so a token is never sent to a host that is not the provider's. Ids must have the shape the
provider gives them, so that nothing but an id can be spliced into a request path (``plugin.shaped``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit


class UntrustedUrl(ValueError):
    """A base URL that is not the provider's (nor an allowed extra host)."""


def check_base_url(
    kind: str,
    url: Any,
    extra_hosts: Iterable[str] = (),
    *,
    hosts: frozenset[str],
    paths: tuple[str, ...],
) -> str:
    """``url`` without a trailing ``/`` when credentials may be sent there; ``UntrustedUrl`` otherwise.
    ``hosts`` and ``paths`` are the provider's own hosts and the paths a base URL may have (its plug-in's
    ``hosts`` and ``base_paths``: ``ProviderType.usable`` passes them)."""
    own = hosts
    if not isinstance(url, str) or not url.strip():
        raise UntrustedUrl(f"{kind}: settings.base_url must be a URL such as https://{min(own, default='')}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UntrustedUrl(f"{kind}: settings.base_url is not a URL: {exc}") from None
    host = (parts.hostname or "").lower()
    netloc_host = f"[{host}]" if ":" in host else host
    extra = {h.strip().lower() for h in extra_hosts if h.strip()}
    extra_match = netloc_host in extra or (port is not None and f"{netloc_host}:{port}" in extra)
    if (
        parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or not host
        or parts.scheme not in ("https", "http")
    ):
        raise UntrustedUrl(f"{kind}: settings.base_url must be a plain https://host URL")
    if parts.path not in paths:
        raise UntrustedUrl(f"{kind}: settings.base_url must have no path (the API path is added by Tidings)")
    if extra_match:
        return url.strip().rstrip("/")
    if host in own and parts.scheme == "https" and port in (None, 443):
        return url.strip().rstrip("/")
    allowed = ", ".join(sorted(own))
    raise UntrustedUrl(
        f"{kind}: settings.base_url must be https on the provider's own host ({allowed}); "
        f"{netloc_host or url!r} is not one of them (an operator can add hosts with "
        "TIDINGS_EXTRA_PROVIDER_HOSTS)"
    )


def summary(code: Any, text: Any, limit: int = 200) -> str:
    """A provider's error as one short line: its code and the start of its title or message."""
    line = " ".join(str(text or "").split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return f"{code}: {line}" if code and line else str(code or line)
