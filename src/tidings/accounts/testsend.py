"""One test message through an account's provider, outside any campaign (``tidings send-test``)."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.concurrency import run_in_threadpool

from tidings.accounts.service import get_integration
from tidings.config import Settings
from tidings.db import Database
from tidings.delivery.statuses import TEST_REF_PREFIX
from tidings.errors import Conflict, Invalid
from tidings.profiles.service import normalize_phone
from tidings.providers.base import OutboundMessage
from tidings.providers.pool import FIX_SECRET_KEY, build_provider
from tidings.secrets import SecretBox


async def send_test_message(
    db: Database,
    box: SecretBox,
    settings: Settings,
    account_id: str,
    *,
    to: str,
    text: str | None = None,
    template: str | None = None,
    language: str = "en",
    params: list[str] | None = None,
) -> dict[str, Any]:
    phone = normalize_phone(to)
    if phone is None:
        raise Invalid(f"{to!r} is not a phone number in E.164 form (+ and the country code)")
    if template is None and not text:
        text = "Tidings test message: your WhatsApp provider is connected."

    def load() -> tuple[str, dict[str, Any], str]:
        with db.session() as session:
            integration = get_integration(session, account_id)
            return integration.kind, dict(integration.settings), integration.secrets

    kind, config, sealed = await run_in_threadpool(load)
    try:
        secrets = box.open(sealed)
    except ValueError as exc:
        raise Conflict(f"{exc}: {FIX_SECRET_KEY}", code="credentials_unreadable") from exc
    try:
        provider = build_provider(kind, config, secrets, account_id=account_id, app=settings)
    except (ValueError, LookupError) as exc:
        raise Conflict(f"the {kind} integration cannot send: {exc}", code="integration_invalid") from exc
    try:
        result = await provider.send(
            OutboundMessage(
                client_ref=f"{TEST_REF_PREFIX}{uuid.uuid4().hex[:12]}",
                to=phone,
                template_name=template,
                language=language,
                params=list(params or []),
                text=None if template else text,
            )
        )
        await provider.drain(timeout=10)  # the sandbox: let its webhooks reach us before closing it
    finally:
        await provider.aclose()
    return {
        "outcome": result.outcome.value,
        "provider": kind,
        "provider_message_id": result.provider_message_id,
        "error_code": result.error_code,
        "error_detail": result.error_detail,
    }
