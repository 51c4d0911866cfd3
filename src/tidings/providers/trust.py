"""Where a provider's credentials may go, and the shape of its ids.

A base URL names a provider's own host over https (``PROVIDER_HOSTS``), or one of the operator's
``TIDINGS_EXTRA_PROVIDER_HOSTS`` (``host`` or ``host:port``; http allowed for those: a regional endpoint
or a test stand-in on loopback). It is checked when the integration is saved and again where a request
is made, so a token is never sent to a host that is not the provider's. Ids must have the shape the
provider gives them, so that nothing but an id can be spliced into a request path.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

# The providers' own API hosts (reference §1.1 and §1.9 for Vonage, §2 for Meta).
PROVIDER_HOSTS: dict[str, frozenset[str]] = {
    "vonage": frozenset(
        {
            "api.nexmo.com",
            "api-eu.nexmo.com",
            "api-us.nexmo.com",
            "api-ap.nexmo.com",
            "api.vonage.com",
            "api-eu.vonage.com",
            "api-us.vonage.com",
            "api-ap.vonage.com",
            "messages-sandbox.nexmo.com",
        }
    ),
    "meta": frozenset({"graph.facebook.com"}),
}

_DIGITS = re.compile(r"^\d{1,30}$")
_SENDER = re.compile(r"^\+?\d{6,15}$")
_API_VERSION = re.compile(r"^v\d{1,3}\.\d{1,3}$")


class UntrustedUrl(ValueError):
    """A base URL that is not the provider's (nor an allowed extra host)."""


def check_base_url(kind: str, url: Any, extra_hosts: Iterable[str] = ()) -> str:
    """``url`` without a trailing ``/`` when credentials may be sent there; ``UntrustedUrl`` otherwise."""
    own = PROVIDER_HOSTS.get(kind, frozenset())
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
    if parts.path not in (("", "/", "/v1", "/v1/") if kind == "vonage" else ("", "/")):
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


def check_ids(kind: str, settings: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first id that does not have the provider's shape."""
    if kind == "vonage":
        sender = str(settings.get("sender") or "")
        if not _SENDER.match(sender.strip()):
            raise ValueError(
                "vonage: settings.sender must be the WhatsApp number in E.164 digits, e.g. 447700900000"
            )
        application_id = settings.get("application_id") or ""
        if application_id:
            try:
                uuid.UUID(str(application_id))
            except ValueError:
                raise ValueError(
                    "vonage: settings.application_id must be the Vonage application's id (a UUID)"
                ) from None
    if kind == "meta":
        if not _DIGITS.match(str(settings.get("phone_number_id") or "")):
            raise ValueError("meta: settings.phone_number_id must be the phone number id Meta shows (digits)")
        waba_id = settings.get("waba_id") or ""
        if waba_id and not _DIGITS.match(str(waba_id)):
            raise ValueError("meta: settings.waba_id must be the WhatsApp Business Account id (digits)")
        if not _API_VERSION.match(str(settings.get("api_version") or "")):
            raise ValueError("meta: settings.api_version must look like v23.0")


def summary(code: Any, text: Any, limit: int = 200) -> str:
    """A provider's error as one short line: its code and the start of its title or message."""
    line = " ".join(str(text or "").split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return f"{code}: {line}" if code and line else str(code or line)
