"""Vonage webhooks: the documented status and inbound payloads (reference §1.5-§1.7), and signatures."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest

from tests.standins.vonage import Recorded, status_webhook
from tidings.providers.base import MediaRef, Status, WebhookError
from tidings.providers.vonage import parse_inbound, parse_status, sign_webhook, verify_webhook

SECRET = "signature-secret-0123456789abcdef"  # Vonage signature secrets are account settings
API_KEY = "abcd1234"
UUID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
ERRORS = "https://developer.vonage.com/api-errors/messages"


def status_payload(status: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_uuid": UUID,
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": "2025-02-03T12:14:25Z",
        "status": status,
        "channel": "whatsapp",
        "client_ref": "ledger-42",
        **extra,
    }


# --- status webhooks ----------------------------------------------------------------------------------


def test_submitted_is_sent() -> None:
    update = parse_status(status_payload("submitted"))
    assert update.status is Status.SENT
    assert update.provider_message_id == UUID and update.client_ref == "ledger-42"
    assert update.timestamp == datetime(2025, 2, 3, 12, 14, 25, tzinfo=UTC)
    assert update.error_code is None and update.error_detail is None


def test_delivered_with_usage_and_whatsapp_metadata() -> None:
    payload = status_payload(
        "delivered",
        usage={"currency": "EUR", "price": "0"},
        profile={"name": "Jane Smith"},
        whatsapp={
            "recipient": {"wa_id": "447700900000"},
            "waba_id": "00000000000",
            "pricing": {"type": "regular", "pricing_model": "PMP", "category": "marketing"},
        },
    )
    update = parse_status(payload)
    assert update.status is Status.DELIVERED and update.error_code is None


def test_read() -> None:
    assert parse_status(status_payload("read")).status is Status.READ


def test_rejected_with_a_v1_error() -> None:
    payload = status_payload(
        "rejected",
        error={
            "type": f"{ERRORS}#1340",
            "title": "1340",
            "detail": "Outside of the allowed window",
            "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
        },
    )
    update = parse_status(payload)
    assert update.status is Status.FAILED
    assert (update.error_code, update.error_detail) == ("1340", "Outside of the allowed window")


def test_rejected_throttled_v1_error() -> None:
    error = {
        "type": f"{ERRORS}#1000",
        "title": "1000",
        "detail": "Throttled - You have exceeded the submission capacity allowed on this account. "
        "Please wait and retry",
        "instance": "bf0ca0bf927b3b52e3cb03217e1a1ddf",
    }
    update = parse_status(status_payload("rejected", error=error))
    assert update.status is Status.FAILED and update.error_code == "1000"
    assert update.error_detail and update.error_detail.startswith("Throttled")


def test_undeliverable_without_error_object() -> None:
    update = parse_status(status_payload("undeliverable"))
    assert update.status is Status.FAILED
    assert (update.error_code, update.error_detail) == ("undeliverable", "message undeliverable")


def test_v0_1_error_shape() -> None:
    payload = status_payload("rejected", error={"code": 1300, "reason": "Not part of the provider network"})
    update = parse_status(payload)
    assert update.status is Status.FAILED
    assert (update.error_code, update.error_detail) == ("1300", "Not part of the provider network")


def test_status_without_client_ref_and_with_an_offset_timestamp() -> None:
    payload = status_payload("delivered", timestamp="2025-02-03T13:14:25+01:00")
    del payload["client_ref"]
    update = parse_status(payload)
    assert update.client_ref is None
    assert update.timestamp == datetime(2025, 2, 3, 12, 14, 25, tzinfo=UTC)


@pytest.mark.parametrize(
    "payload",
    [
        status_payload("deleted"),
        {k: v for k, v in status_payload("delivered").items() if k != "message_uuid"},
        {"channel": "whatsapp", "message_type": "text", "text": "Hello"},
    ],
    ids=["unknown-status", "no-message-uuid", "inbound-shape"],
)
def test_not_a_status_webhook(payload: dict[str, Any]) -> None:
    with pytest.raises(WebhookError) as caught:
        parse_status(payload)
    assert caught.value.status == 400


def test_standin_status_webhooks_parse() -> None:
    record = Recorded(
        seq=1,
        method="POST",
        path="/v1/messages",
        headers={},
        raw=b"",
        body={"to": "447700900123", "from": "447700900000", "client_ref": "ledger-7", "channel": "whatsapp"},
        auth="jwt",
        claims=None,
        errors=[],
        status=202,
        message_uuid=UUID,
        received_at=0.0,
        peer="",
    )
    delivered = parse_status(status_webhook(record, "delivered"))
    assert (delivered.status, delivered.client_ref, delivered.provider_message_id) == (
        Status.DELIVERED,
        "ledger-7",
        UUID,
    )
    rejected = parse_status(status_webhook(record, "rejected", error_code=1300))
    assert (rejected.status, rejected.error_code) == (Status.FAILED, "1300")


# --- inbound webhooks ---------------------------------------------------------------------------------


def inbound_payload(**extra: Any) -> dict[str, Any]:
    return {
        "channel": "whatsapp",
        "message_uuid": UUID,
        "to": "447700900000",
        "from": "447700900001",
        "timestamp": "2025-02-03T12:14:25Z",
        "profile": {"name": "Jane Smith"},
        "context_status": "none",
        **extra,
    }


def test_inbound_text() -> None:
    reply = parse_inbound(inbound_payload(message_type="text", text="Hello"))
    assert reply.provider_message_id == UUID
    assert reply.from_phone == "+447700900001"
    assert reply.timestamp == datetime(2025, 2, 3, 12, 14, 25, tzinfo=UTC)
    assert (reply.kind, reply.text, reply.profile_name, reply.context_message_id) == (
        "text",
        "Hello",
        "Jane Smith",
        None,
    )


def test_inbound_template_button() -> None:
    original = str(uuid.uuid4())
    payload = inbound_payload(
        message_type="button",
        button={"payload": "STOP_PROMOS", "text": "Stop promotions", "subtype": "quick_reply"},
        context_status="available",
        context={"message_uuid": original, "message_from": "447700900000"},
    )
    reply = parse_inbound(payload)
    assert (reply.kind, reply.text, reply.context_message_id) == ("button", "Stop promotions", original)


def test_inbound_button_with_payload_only() -> None:
    reply = parse_inbound(inbound_payload(message_type="button", button={"payload": "YES"}))
    assert reply.text == "YES"


def test_inbound_interactive_reply_with_context() -> None:
    original = str(uuid.uuid4())
    payload = inbound_payload(
        message_type="reply",
        reply={"id": "row-1", "title": "Yes please", "description": "Send me offers"},
        context_status="available",
        context={"message_uuid": original, "message_from": "447700900000"},
    )
    reply = parse_inbound(payload)
    assert (reply.kind, reply.text, reply.context_message_id) == ("reply", "Yes please", original)


def test_inbound_media_and_bsuid_sender() -> None:
    payload = inbound_payload(
        message_type="image",
        image={"url": "https://example.com/image.jpg", "name": "image.jpg"},
        **{"from": "US.13491208655302741918"},
    )
    reply = parse_inbound(payload)
    assert (reply.kind, reply.text, reply.from_phone) == ("image", "", "US.13491208655302741918")
    assert reply.media == MediaRef(ref="https://example.com/image.jpg", filename="image.jpg")


def test_inbound_without_profile_or_with_unavailable_context() -> None:
    payload = inbound_payload(message_type="text", text="hi", context_status="unavailable")
    del payload["profile"]
    reply = parse_inbound(payload)
    assert reply.profile_name is None and reply.context_message_id is None


@pytest.mark.parametrize("missing", ["message_uuid", "from"])
def test_not_an_inbound_webhook(missing: str) -> None:
    payload = inbound_payload(message_type="text", text="Hello")
    del payload[missing]
    with pytest.raises(WebhookError) as caught:
        parse_inbound(payload)
    assert caught.value.status == 400


# --- signatures ---------------------------------------------------------------------------------------


def body_bytes() -> bytes:
    return json.dumps(status_payload("delivered")).encode()


def test_good_signature_is_accepted() -> None:
    body = body_bytes()
    header = sign_webhook(body, SECRET, API_KEY)
    verify_webhook({"authorization": header}, body, SECRET)
    verify_webhook(httpx.Headers({"Authorization": header}), body, SECRET)  # any header case
    claims = jwt.decode(header.removeprefix("Bearer "), SECRET, algorithms=["HS256"])
    assert claims["iss"] == "Vonage" and claims["api_key"] == API_KEY
    assert claims["payload_hash"] == hashlib.sha256(body).hexdigest()


def test_vonage_shaped_token_with_application_id_is_accepted() -> None:
    body = body_bytes()
    claims = {
        "iat": int(time.time()),
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest().upper(),
        "api_key": API_KEY,
        "application_id": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab",
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    verify_webhook({"authorization": f"Bearer {token}"}, body, SECRET)


def _rejected(headers: dict[str, str], body: bytes, secret: str = SECRET) -> WebhookError:
    with pytest.raises(WebhookError) as caught:
        verify_webhook(headers, body, secret)
    assert caught.value.status == 401
    return caught.value


def test_wrong_secret_is_rejected() -> None:
    body = body_bytes()
    header = sign_webhook(body, "another-secret-0123456789abcdefgh", API_KEY)
    assert "signature" in _rejected({"authorization": header}, body).message


def test_tampered_body_is_rejected() -> None:
    body = body_bytes()
    header = sign_webhook(body, SECRET, API_KEY)
    tampered = body.replace(b'"delivered"', b'"read"')
    assert "payload_hash" in _rejected({"authorization": header}, tampered).message


def test_missing_or_non_bearer_header_is_rejected() -> None:
    body = body_bytes()
    _rejected({}, body)
    _rejected({"authorization": ""}, body)
    _rejected({"authorization": "Basic YWJjZDEyMzQ6c2VjcmV0"}, body)


def test_expired_token_is_rejected() -> None:
    body = body_bytes()
    now = int(time.time())
    claims = {
        "iat": now - 3600,
        "exp": now - 60,
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": API_KEY,
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert "expired" in _rejected({"authorization": f"Bearer {token}"}, body).message


def test_token_from_the_future_is_rejected() -> None:
    body = body_bytes()
    claims = {"iat": int(time.time()) + 3600, "payload_hash": hashlib.sha256(body).hexdigest()}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    _rejected({"authorization": f"Bearer {token}"}, body)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "a.b.c",
        "Bearer",
        jwt.encode({"payload_hash": "x"}, "", algorithm="none"),  # unsigned
    ],
    ids=["garbage", "three-parts", "empty", "alg-none"],
)
def test_garbled_token_is_rejected(token: str) -> None:
    _rejected({"authorization": f"Bearer {token}"}, body_bytes())


def test_token_without_payload_hash_is_rejected() -> None:
    body = body_bytes()
    token = jwt.encode(
        {"iat": int(time.time()), "iss": "Vonage", "api_key": API_KEY}, SECRET, algorithm="HS256"
    )
    assert "payload_hash" in _rejected({"authorization": f"Bearer {token}"}, body).message


def test_rs256_token_is_rejected() -> None:
    """An application JWT (RS256) is not a webhook signature: only HS256 with the secret is accepted."""
    from tests.standins.vonage import rsa_key_pair

    private_pem, _ = rsa_key_pair()
    body = body_bytes()
    token = jwt.encode({"payload_hash": hashlib.sha256(body).hexdigest()}, private_pem, algorithm="RS256")
    _rejected({"authorization": f"Bearer {token}"}, body)


def test_pyjwt_is_left_as_it_was_for_everyone_else() -> None:
    """Vonage's webhook tokens go through a JWS of their own: PyJWT's global HS256 is still its own."""
    from jwt.algorithms import HMACAlgorithm

    token = sign_webhook(b"{}", SECRET, API_KEY)
    assert type(jwt.get_algorithm_by_name("HS256")) is HMACAlgorithm
    assert jwt.decode(token[7:], SECRET, algorithms=["HS256"])["api_key"] == API_KEY
