"""The provider interface: the types every WhatsApp provider speaks (its plug-in, ``plugin.ProviderType``,
says the rest: settings, secrets, webhook routes, capabilities).

A provider knows its own wire format and nothing else: it turns an ``OutboundMessage`` into an API call
and the answer into a ``SendResult``; it verifies and parses its webhooks into ``StatusUpdate``,
``InboundReply`` and ``TemplateStatusUpdate``. What those do to the ledger is decided once, for all
providers, in ``tidings.webhooks.service``.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx


@dataclass(frozen=True)
class OutboundMessage:
    """One message to send. ``client_ref`` (our ledger id) is echoed back by the provider's webhooks."""

    client_ref: str
    to: str  # E.164 with the leading +
    template_name: str | None = None  # "<namespace>:<name>"
    language: str = "en"
    params: list[str] = field(default_factory=list)  # {{1}}, {{2}}, … in order
    text: str | None = None  # free text (only inside the 24-hour window)
    # Template components beyond the body, in Meta's shape, when the template has them.
    header_params: list[dict[str, Any]] = field(default_factory=list)
    button_params: list[dict[str, Any]] = field(default_factory=list)
    # A media message (an agent's reply inside the window): sent by link, ``text`` is its caption.
    media: OutboundMedia | None = None


@dataclass(frozen=True)
class OutboundMedia:
    """A file an agent sends: ``url`` is where the provider fetches it (Tidings serves it)."""

    kind: str  # image, video, audio, document
    url: str
    filename: str | None = None


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # the provider took it: it is Sent
    RETRY = "retry"  # try again later (rate limits, 5xx, timeouts, throttling)
    FAILED = "failed"  # permanent for this send


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    provider_message_id: str | None = None
    error_code: str | None = None  # the provider's own code, e.g. "1300", "131047", "http_500"
    error_detail: str | None = None  # the provider's text
    retry_after: float | None = None  # seconds, when the provider said (Retry-After)
    # Set when every send through this integration will fail the same way until a person changes it (the
    # provider refused the credentials, the saved secrets cannot be opened): what to fix. The dispatcher
    # pauses the campaign at once with this as its note.
    fix: str | None = None

    @classmethod
    def accepted(cls, provider_message_id: str | None) -> SendResult:
        """The provider took it; ``None`` when a 2xx answer carried no id (its status webhook, which carries
        our ``client_ref``, still finds the row)."""
        return cls(Outcome.ACCEPTED, provider_message_id=provider_message_id)

    @classmethod
    def misconfigured(cls, code: str, detail: str, fix: str) -> SendResult:
        """Failed, and every other send of this integration would fail too until ``fix`` is done."""
        return cls(Outcome.FAILED, error_code=code, error_detail=detail, fix=fix)

    @classmethod
    def retry(cls, code: str, detail: str, retry_after: float | None = None) -> SendResult:
        return cls(Outcome.RETRY, error_code=code, error_detail=detail, retry_after=retry_after)

    @classmethod
    def failed(cls, code: str, detail: str) -> SendResult:
        return cls(Outcome.FAILED, error_code=code, error_detail=detail)


FIX_CREDENTIALS = (
    "the provider refused the integration's credentials: save working ones with "
    "PUT /api/v1/integrations/whatsapp, then resume the campaign"
)


def transport_failure(exc: httpx.HTTPError) -> SendResult:
    """A ``SendResult`` for a request that got no HTTP answer.

    When the request never left (connection refused, DNS failure, TLS handshake failure, connect or pool
    time-out, a URL httpx cannot use) the provider never saw it: ``connect_error`` or ``connect_timeout``,
    retried with backoff. After the request may have been written (a read or write time-out, a connection
    lost mid-way) the provider may have taken the message: ``timeout`` or ``network_error``, which the
    ledger treats as uncertain (``delivery.outcomes.UNCERTAIN_CODES``) and reconciles from the status
    webhooks instead of sending again blindly.
    """
    text = str(exc).strip()
    detail = (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return SendResult.retry("connect_timeout", detail)
    if isinstance(exc, httpx.ConnectError | httpx.UnsupportedProtocol | httpx.ProxyError):
        return SendResult.retry("connect_error", detail)
    if isinstance(exc, httpx.TimeoutException):
        return SendResult.retry("timeout", detail)
    return SendResult.retry("network_error", detail)


class Status(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@dataclass(frozen=True)
class StatusUpdate:
    """What a status webhook says about one outbound message."""

    status: Status
    timestamp: datetime
    provider_message_id: str | None = None
    client_ref: str | None = None
    error_code: str | None = None
    error_detail: str | None = None


@dataclass(frozen=True)
class MediaRef:
    """A file a user sent, as the provider gives it: Meta's media id, or Vonage's download URL. Tidings
    fetches it once (``Provider.fetch_media``) and keeps it."""

    ref: str  # Meta: the media id; Vonage and the sandbox: the URL
    mime_type: str | None = None
    filename: str | None = None  # documents
    sha256: str | None = None  # Meta gives it


@dataclass(frozen=True)
class InboundReply:
    """A message from a user. ``context_message_id`` is the provider id of the message it answers."""

    provider_message_id: str
    from_phone: str  # E.164 with the leading +
    timestamp: datetime
    text: str = ""
    kind: str = "text"  # text, button, interactive, image, …
    context_message_id: str | None = None
    profile_name: str | None = None
    # What a tapped button carries besides its label: a quick-reply button's ``payload`` (Meta ``button``,
    # Vonage ``button``) or an interactive reply's ``id`` (Meta ``interactive``, Vonage ``reply``).
    payload: str | None = None
    media: MediaRef | None = None  # image, video, audio, document, sticker; ``text`` is the caption
    # What else the kind carries: reaction {"emoji", "message_id"}; location {"latitude", "longitude",
    # "name", "address"}; contacts {"contacts": [...]}, as the provider sent them.
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class TemplateStatusUpdate:
    """The provider changed a template's approval status (Meta ``message_template_status_update``)."""

    name: str
    language: str | None
    status: str  # APPROVED, REJECTED, PAUSED, DISABLED, …
    reason: str | None = None
    provider_template_id: str | None = None


WebhookEvent = StatusUpdate | InboundReply | TemplateStatusUpdate


class WebhookError(Exception):
    """A webhook that cannot be accepted; ``status`` is the HTTP answer (401 for a bad signature) and
    ``code`` the error code of the answer's body (by default ``bad_signature`` for a 401, else
    ``invalid_payload``)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or ("bad_signature" if status == 401 else "invalid_payload")


def json_object(body: bytes) -> dict[str, Any]:
    """A webhook body as a JSON object, or ``WebhookError(400)``."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise WebhookError(400, "the webhook body is not JSON", code="invalid_json") from exc
    if not isinstance(payload, dict):
        raise WebhookError(400, "the webhook body must be a JSON object")
    return payload


@dataclass(frozen=True)
class RemoteTemplate:
    """One message template as the provider lists it (``name`` without our ``<namespace>:``)."""

    id: str
    name: str
    language: str
    status: str
    category: str
    body: str  # the BODY component's text, "" when there is none
    components: list[dict[str, Any]] = field(default_factory=list)  # raw, for headers and buttons


class ProviderApiError(Exception):
    """A call to a provider's API other than a send failed (template listing): ``status`` is the HTTP
    status (None for a network error), ``code`` the provider's error code; ``refused_credentials`` when
    the provider refused the integration's credentials (someone must save working ones)."""

    def __init__(
        self, status: int | None, code: int | None, message: str, *, refused_credentials: bool = False
    ) -> None:
        super().__init__(f"provider API error (HTTP {status}, code {code}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.refused_credentials = refused_credentials or status in (401, 403)


class Provider(abc.ABC):
    """Sends WhatsApp messages for one account."""

    kind: str

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one message. Never raises for provider or network errors: they become a ``SendResult``."""

    @property
    def pending(self) -> int:
        """Messages whose webhooks this provider still plays itself (the sandbox); 0 for a real one."""
        return 0

    async def fetch_media(self, media: MediaRef) -> tuple[bytes, str]:
        """Download a file a user sent: its bytes and MIME type. Raises ``ProviderApiError``."""
        raise ProviderApiError(None, None, f"{self.kind} cannot fetch media")

    async def mark_read(self, provider_message_id: str) -> bool:
        """Tell the provider the business read this inbound message (the user sees blue ticks); False
        where the provider has no such call."""
        return False

    async def drain(self, timeout: float = 30.0) -> None:  # noqa: B027 - optional hook
        """Wait until the webhooks this provider plays itself have been delivered (the sandbox)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and background work."""
