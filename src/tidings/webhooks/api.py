"""Webhook endpoints. Each verifies the provider's signature before anything is read or written, then
hands the events to the process's ``WebhookBatcher``, which applies many requests' events in one
transaction and answers each request once its events are committed.

``receive`` is the whole of a webhook POST. ``WebhookLane`` (webhooks/lane.py) calls it for every POST
under ``/webhooks/`` ahead of FastAPI's routing; the routes below document the same endpoints in the
OpenAPI document and call the same function when the app is served without the lane.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from tidings.db import Database
from tidings.errors import ApiError
from tidings.providers import meta, vonage
from tidings.providers.base import WebhookError, WebhookEvent
from tidings.secrets import SecretBox
from tidings.webhooks.batch import WebhookBatcher
from tidings.webhooks.service import integration_for

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "the webhook body is not JSON") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_payload", "the webhook body must be a JSON object")
    return payload


def _on_its_route(kind: str | None, payload: Mapping[str, Any]) -> None:
    """A Vonage status callback only on the status URL and an inbound message only on the inbound URL: a
    status read as an inbound message would record a reply nobody wrote. (Vonage's status callbacks carry
    ``status``; its inbound messages never do, and carry ``message_type`` instead.)"""
    is_status = "status" in payload
    if kind == "inbound" and is_status:
        raise ApiError(
            400,
            "wrong_webhook_route",
            "a status callback was posted to the inbound URL: give Vonage the status URL for statuses",
        )
    if kind == "status" and not is_status and "message_type" in payload:
        raise ApiError(
            400,
            "wrong_webhook_route",
            "an inbound message was posted to the status URL: give Vonage the inbound URL for messages",
        )


async def receive(
    batcher: WebhookBatcher,
    provider: str,
    account_id: str,
    kind: str | None,
    headers: Mapping[str, str],
    body: bytes,
) -> dict[str, Any]:
    """Verify, parse and apply one webhook POST (``kind`` is ``status`` or ``inbound`` for Vonage and the
    sandbox, ``None`` for Meta); the answer's body, or ``ApiError``. ``headers`` have lower-case names."""
    secrets = (await batcher.integration(account_id, provider))["secrets"]
    events: list[WebhookEvent]
    try:
        if provider == "meta":
            meta.verify_signature(headers, body, secrets.get("app_secret", ""))
            events = meta.parse_webhook(_json(body))
        else:
            vonage.verify_webhook(headers, body, secrets.get("signature_secret", ""))
            payload = _json(body)
            _on_its_route(kind, payload)
            events = [vonage.parse_status(payload) if kind == "status" else vonage.parse_inbound(payload)]
    except WebhookError as exc:
        code = "bad_signature" if exc.status == 401 else "invalid_payload"
        raise ApiError(exc.status, code, exc.message) from exc
    result = await batcher.apply(account_id, provider, events)
    return {"status": "ok", **result}


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
    return await receive(request.app.state.webhooks, provider, account_id, kind, request.headers, body)


def _meta_handshake(db: Database, box: SecretBox, account_id: str, params: Any) -> str:
    with db.session() as session:
        settings = integration_for(session, box, account_id, "meta")["settings"]
    try:
        return meta.verify_handshake(params, settings.get("verify_token", ""))
    except WebhookError as exc:
        raise ApiError(exc.status, "bad_verify_token", exc.message) from exc


@router.get("/meta/{account_id}", response_class=PlainTextResponse, summary="Meta webhook verification")
async def meta_handshake(account_id: str, request: Request) -> str:
    """Meta's GET handshake: answers ``hub.challenge`` when ``hub.verify_token`` is the account's."""
    return await run_in_threadpool(
        _meta_handshake, request.app.state.db, request.app.state.box, account_id, request.query_params
    )


@router.post("/meta/{account_id}", summary="Meta WhatsApp Cloud API webhooks")
async def meta_webhook(account_id: str, request: Request) -> dict[str, Any]:
    """Statuses, inbound messages and template status updates, verified with ``X-Hub-Signature-256``
    (HMAC-SHA256 of the raw body with the app secret)."""
    body = await request.body()
    return await receive(request.app.state.webhooks, "meta", account_id, None, request.headers, body)
