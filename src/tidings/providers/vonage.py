"""Vonage Messages API v1 (WhatsApp): webhooks (signed HS256 JWT + payload hash) and sending.

Wire formats: ../shared/reference/whatsapp-providers-and-clevertap.md §1 and the official
specification ``vonage-messages-openapi.yml``. The sandbox speaks this webhook format too.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jwt

from tidings.providers.base import InboundReply, Status, StatusUpdate, WebhookError

_STATUSES = {
    "submitted": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.READ,
    "rejected": Status.FAILED,
    "undeliverable": Status.FAILED,
}


# --- webhooks ---------------------------------------------------------------------------------------


def sign_webhook(body: bytes, signature_secret: str, api_key: str) -> str:
    """The ``Authorization`` header value Vonage puts on a webhook carrying ``body``."""
    claims = {
        "iat": int(time.time()),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": api_key,
    }
    return "Bearer " + jwt.encode(claims, signature_secret, algorithm="HS256")


def verify_webhook(headers: Mapping[str, str], body: bytes, signature_secret: str) -> None:
    """Check the HS256 JWT in ``Authorization`` and the body's SHA-256 against ``payload_hash``."""
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        raise WebhookError(401, "missing signed Authorization header")
    try:
        claims = jwt.decode(auth[7:].strip(), signature_secret, algorithms=["HS256"])
    except jwt.PyJWTError as exc:
        raise WebhookError(401, f"bad webhook signature: {exc}") from exc
    expected = claims.get("payload_hash")
    if not isinstance(expected, str) or not hmac.compare_digest(
        expected.lower(), hashlib.sha256(body).hexdigest()
    ):
        raise WebhookError(401, "payload_hash does not match the body")


def _timestamp(raw: Any) -> datetime:
    if isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw)
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


def _e164(number: Any) -> str:
    digits = str(number or "")
    return digits if digits.startswith("+") or not digits.isdigit() else "+" + digits


def parse_status(payload: Mapping[str, Any]) -> StatusUpdate:
    """A status webhook (v1 or v0.1 error shape) as a ``StatusUpdate``."""
    status = _STATUSES.get(str(payload.get("status", "")))
    if status is None or not payload.get("message_uuid"):
        raise WebhookError(400, f"not a Vonage status webhook (status={payload.get('status')!r})")
    code = detail = None
    error = payload.get("error")
    if isinstance(error, Mapping):
        if "title" in error:  # v1: {"type", "title": "<code>", "detail", "instance"}
            code, detail = str(error.get("title")), error.get("detail")
        else:  # v0.1: {"code", "reason"}
            code, detail = str(error.get("code")), error.get("reason")
    if status is Status.FAILED and code is None:
        code, detail = str(payload.get("status")), f"message {payload.get('status')}"
    client_ref = payload.get("client_ref")
    return StatusUpdate(
        status=status,
        timestamp=_timestamp(payload.get("timestamp")),
        provider_message_id=str(payload["message_uuid"]),
        client_ref=str(client_ref) if client_ref is not None else None,
        error_code=code,
        error_detail=str(detail) if detail is not None else None,
    )


def _inbound_text(payload: Mapping[str, Any]) -> str:
    kind = payload.get("message_type", "text")
    if kind == "text":
        return str(payload.get("text", ""))
    if kind == "button" and isinstance(payload.get("button"), Mapping):
        button = payload["button"]
        return str(button.get("text") or button.get("payload") or "")
    if kind == "reply" and isinstance(payload.get("reply"), Mapping):
        return str(payload["reply"].get("title") or payload["reply"].get("id") or "")
    return f"[{kind}]"


def parse_inbound(payload: Mapping[str, Any]) -> InboundReply:
    """An inbound WhatsApp message as an ``InboundReply``."""
    if not payload.get("message_uuid") or not payload.get("from"):
        raise WebhookError(400, "not a Vonage inbound webhook (message_uuid and from are required)")
    context = payload.get("context") if isinstance(payload.get("context"), Mapping) else {}
    profile = payload.get("profile") if isinstance(payload.get("profile"), Mapping) else {}
    return InboundReply(
        provider_message_id=str(payload["message_uuid"]),
        from_phone=_e164(payload["from"]),
        timestamp=_timestamp(payload.get("timestamp")),
        text=_inbound_text(payload),
        kind=str(payload.get("message_type", "text")),
        context_message_id=context.get("message_uuid"),
        profile_name=profile.get("name"),
    )
