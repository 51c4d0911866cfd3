"""The provider interface: every WhatsApp provider is a plug-in behind these types.

A provider knows its own wire format and nothing else: it turns an ``OutboundMessage`` into an API call
and the answer into a ``SendResult``; it verifies and parses its webhooks into ``StatusUpdate``,
``InboundReply`` and ``TemplateStatusUpdate``. What those do to the ledger is decided once, for all
providers, in ``tidings.webhooks.service``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


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

    @classmethod
    def accepted(cls, provider_message_id: str) -> SendResult:
        return cls(Outcome.ACCEPTED, provider_message_id=provider_message_id)

    @classmethod
    def retry(cls, code: str, detail: str, retry_after: float | None = None) -> SendResult:
        return cls(Outcome.RETRY, error_code=code, error_detail=detail, retry_after=retry_after)

    @classmethod
    def failed(cls, code: str, detail: str) -> SendResult:
        return cls(Outcome.FAILED, error_code=code, error_detail=detail)


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
class InboundReply:
    """A message from a user. ``context_message_id`` is the provider id of the message it answers."""

    provider_message_id: str
    from_phone: str  # E.164 with the leading +
    timestamp: datetime
    text: str = ""
    kind: str = "text"  # text, button, interactive, image, …
    context_message_id: str | None = None
    profile_name: str | None = None


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
    """A webhook that cannot be accepted; ``status`` is the HTTP answer (401 for a bad signature)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Provider(abc.ABC):
    """Sends WhatsApp messages for one account."""

    kind: str

    @abc.abstractmethod
    async def send(self, message: OutboundMessage) -> SendResult:
        """Send one message. Never raises for provider or network errors: they become a ``SendResult``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and background work."""
