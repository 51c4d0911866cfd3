"""Webhook endpoints. Each verifies the provider's signature before anything is read or written."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from tidings.db import Database
from tidings.errors import ApiError
from tidings.providers import vonage
from tidings.providers.base import WebhookError, WebhookEvent
from tidings.secrets import SecretBox
from tidings.webhooks.service import handle_events, integration_for

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "the webhook body is not JSON") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "the webhook body must be a JSON object")
    return payload


def _vonage_format(
    db: Database, box: SecretBox, provider: str, account_id: str, kind: str, headers: Any, body: bytes
) -> dict[str, int]:
    with db.session() as session:
        secrets = integration_for(session, box, account_id, provider)["secrets"]
        try:
            vonage.verify_webhook(headers, body, secrets.get("signature_secret", ""))
            payload = _json(body)
            event: WebhookEvent = (
                vonage.parse_status(payload) if kind == "status" else vonage.parse_inbound(payload)
            )
        except WebhookError as exc:
            raise ApiError(
                exc.status, "bad_signature" if exc.status == 401 else "invalid_payload", exc.message
            ) from exc
        return handle_events(session, account_id, provider, [event])


@router.post("/{provider}/{account_id}/{kind}", summary="Vonage (and sandbox) status and inbound webhooks")
async def vonage_webhook(
    provider: Literal["vonage", "sandbox"],
    account_id: str,
    kind: Literal["status", "inbound"],
    request: Request,
) -> dict[str, Any]:
    """Vonage Messages API webhooks, signed with an HS256 JWT (the account's signature secret) whose
    ``payload_hash`` is the body's SHA-256. The sandbox calls the same endpoint in the same format."""
    body = await request.body()
    result = await run_in_threadpool(
        _vonage_format,
        request.app.state.db,
        request.app.state.box,
        provider,
        account_id,
        kind,
        request.headers,
        body,
    )
    return {"status": "ok", **result}
