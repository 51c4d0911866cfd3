"""Meta webhooks: X-Hub-Signature-256, the subscription handshake, and parsing the documented payloads.

Payloads are Meta's documented samples (reference §2.2 and the examples in the official spec's
``Statuses``, ``TextMessage_2``, ``ButtonMessage`` and ``InteractiveMessageReply`` schemas).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.standins.meta import SentMessage, envelope, signed, status_webhook, text_reply_change
from tidings.providers.base import (
    InboundReply,
    MediaRef,
    Status,
    StatusUpdate,
    TemplateStatusUpdate,
    WebhookError,
)
from tidings.providers.meta import parse_webhook, sign_webhook, verify_handshake, verify_signature

APP_SECRET = "3f1c0ffee5ecret"
WABA_ID = "102290129340398"
METADATA = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}


def messages_change(**value: Any) -> dict[str, Any]:
    return {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": METADATA, **value}}


def webhook(*changes: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "changes": list(changes)}]}


def at(unix: int) -> datetime:
    return datetime.fromtimestamp(unix, tz=UTC)


# --- statuses ---------------------------------------------------------------------------------------

SENT: dict[str, Any] = {  # the captured sample of reference §2.2
    "id": "wamid.HBgNNTUxNjk5MjMxODIyMhUCABEYEjQ2QkQ3RTQ1OTkzQkYxRUE1NwA=",
    "status": "sent",
    "timestamp": "1750857384",
    "recipient_id": "5516992318222",
    "conversation": {
        "id": "a75d9c3e8f4b2a1c6e0d7f9b3a5c8e2d",
        "expiration_timestamp": "1750943820",
        "origin": {"type": "service"},
    },
    "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"},
}


def test_sent_status() -> None:
    [event] = parse_webhook(webhook(messages_change(statuses=[SENT])))
    assert event == StatusUpdate(
        status=Status.SENT,
        timestamp=at(1750857384),
        provider_message_id=SENT["id"],
        client_ref=None,
    )


def test_delivered_and_read_carry_biz_opaque_callback_data() -> None:
    base = {"id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3", "recipient_id": "16505551234"}
    payload = webhook(
        messages_change(
            statuses=[
                {
                    **base,
                    "status": "delivered",
                    "timestamp": "1750857390",
                    "biz_opaque_callback_data": "ledger-42",
                    "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"},
                },
                {
                    **base,
                    "status": "read",
                    "timestamp": "1750857400",
                    "biz_opaque_callback_data": "ledger-42",
                },
            ]
        )
    )
    delivered, read = parse_webhook(payload)
    assert delivered == StatusUpdate(Status.DELIVERED, at(1750857390), base["id"], "ledger-42")
    assert read == StatusUpdate(Status.READ, at(1750857400), base["id"], "ledger-42")


def test_read_without_delivered() -> None:
    """Meta skips ``delivered`` when a message is delivered and read at once: ``read`` alone arrives."""
    status = {
        "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI4",
        "status": "read",
        "timestamp": "1750857500",
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "ledger-43",
    }
    assert parse_webhook(webhook(messages_change(statuses=[status]))) == [
        StatusUpdate(Status.READ, at(1750857500), status["id"], "ledger-43")
    ]


def test_failed_status_carries_its_error() -> None:
    status = {
        "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5",
        "status": "failed",
        "timestamp": "1750857600",
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "ledger-44",
        "errors": [
            {
                "code": 131026,
                "title": "Message undeliverable",
                "message": "Message undeliverable",
                "error_data": {"details": "Message Undeliverable."},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ],
    }
    [event] = parse_webhook(webhook(messages_change(statuses=[status])))
    assert isinstance(event, StatusUpdate)
    assert (event.status, event.client_ref, event.error_code) == (Status.FAILED, "ledger-44", "131026")
    assert event.error_detail == "Message undeliverable: Message Undeliverable."


def test_failed_marketing_limit_status() -> None:
    status = {
        "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJA",
        "status": "failed",
        "timestamp": "1750857700",
        "recipient_id": "16505551234",
        "errors": [
            {
                "code": 131049,
                "title": "This message was not delivered to maintain healthy ecosystem engagement.",
                "message": "This message was not delivered to maintain healthy ecosystem engagement.",
                "error_data": {
                    "details": "In order to maintain a healthy ecosystem engagement, the message failed."
                },
            }
        ],
    }
    [event] = parse_webhook(webhook(messages_change(statuses=[status])))
    assert isinstance(event, StatusUpdate) and event.error_code == "131049"
    assert event.error_detail == (
        "This message was not delivered to maintain healthy ecosystem engagement.: "
        "In order to maintain a healthy ecosystem engagement, the message failed."
    )


def test_failed_without_errors_still_says_failed() -> None:
    status = {"id": "wamid.X", "status": "failed", "timestamp": "1750857800", "recipient_id": "1"}
    [event] = parse_webhook(webhook(messages_change(statuses=[status])))
    assert isinstance(event, StatusUpdate) and event.status is Status.FAILED and event.error_code == "failed"


def test_unknown_statuses_and_incomplete_items_are_skipped_not_fatal() -> None:
    statuses = [
        {"id": "wamid.voice", "status": "played", "timestamp": "1750857900", "recipient_id": "1"},
        {"status": "delivered", "timestamp": "1750857900", "recipient_id": "1"},  # no id
        {**SENT, "status": "delivered"},
    ]
    events = parse_webhook(webhook(messages_change(statuses=statuses)))
    assert [(e.status, e.provider_message_id) for e in events if isinstance(e, StatusUpdate)] == [
        (Status.DELIVERED, SENT["id"])
    ]


# --- inbound ----------------------------------------------------------------------------------------

CONTACTS = [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}]


def test_inbound_text_with_contact_name() -> None:
    message: dict[str, Any] = {
        "from": "16505551234",
        "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": "Does it come in another color?"},
    }
    [event] = parse_webhook(webhook(messages_change(contacts=CONTACTS, messages=[message])))
    assert event == InboundReply(
        provider_message_id=message["id"],
        from_phone="+16505551234",
        timestamp=at(1749416383),
        text="Does it come in another color?",
        kind="text",
        context_message_id=None,
        profile_name="Sheena Nelson",
    )


def test_inbound_quick_reply_button_with_context() -> None:
    message = {
        "from": "16505551234",
        "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUU0M0MxQzQzMUJCMTMwNUZFOQA=",
        "timestamp": "1750091045",
        "type": "button",
        "context": {
            "from": "15550783881",
            "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJFNjk2OTMwNEZCQjhGMzUyQUYA",
        },
        "button": {"payload": "Unsubscribe", "text": "Unsubscribe"},
    }
    [event] = parse_webhook(webhook(messages_change(contacts=CONTACTS, messages=[message])))
    assert isinstance(event, InboundReply)
    assert (event.kind, event.text, event.from_phone) == ("button", "Unsubscribe", "+16505551234")
    assert event.context_message_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJFNjk2OTMwNEZCQjhGMzUyQUYA"
    assert event.profile_name == "Sheena Nelson"


def test_inbound_interactive_list_and_button_replies_with_context() -> None:
    context = {"from": "15550783881", "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJGMzEyNzhENTZDMzNGODlDRDgA"}
    list_reply = {
        "from": "16505551234",
        "id": "wamid.list",
        "timestamp": "1749854575",
        "type": "interactive",
        "context": context,
        "interactive": {
            "type": "list_reply",
            "list_reply": {
                "id": "priority_express",
                "title": "Priority Mail Express",
                "description": "Next Day to 2 Days",
            },
        },
    }
    button_reply = {
        "from": "16505551234",
        "id": "wamid.button",
        "timestamp": "1749854580",
        "type": "interactive",
        "context": context,
        "interactive": {"type": "button_reply", "button_reply": {"id": "cancel-button", "title": "Cancel"}},
    }
    events = parse_webhook(webhook(messages_change(contacts=CONTACTS, messages=[list_reply, button_reply])))
    replies = [e for e in events if isinstance(e, InboundReply)]
    assert [(e.provider_message_id, e.kind, e.text, e.context_message_id) for e in replies] == [
        ("wamid.list", "interactive", "Priority Mail Express", context["id"]),
        ("wamid.button", "interactive", "Cancel", context["id"]),
    ]
    assert len(replies) == len(events) and all(e.profile_name == "Sheena Nelson" for e in replies)


def test_inbound_other_types_and_names_by_wa_id() -> None:
    contacts = [
        {"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"},
        {"profile": {"name": "Kofi Mensah"}, "wa_id": "233201234567"},
    ]
    messages = [
        {
            "from": "233201234567",
            "id": "wamid.image",
            "timestamp": "1749416400",
            "type": "image",
            "image": {"caption": "this one", "mime_type": "image/jpeg", "sha256": "abc", "id": "1479"},
        },
        {
            "from": "16505551234",
            "id": "wamid.reaction",
            "timestamp": "1749416401",
            "type": "reaction",
            "reaction": {"message_id": "wamid.ours", "emoji": "\U0001f44d"},
        },
        {"from": "16505551234", "id": "wamid.sys", "timestamp": "1749416402", "type": "system"},
        {"id": "wamid.nofrom", "timestamp": "1749416403", "type": "text", "text": {"body": "?"}},
    ]
    image, reaction = parse_webhook(webhook(messages_change(contacts=contacts, messages=messages)))
    assert isinstance(image, InboundReply) and isinstance(reaction, InboundReply)
    assert (image.kind, image.text, image.profile_name) == ("image", "this one", "Kofi Mensah")
    assert image.media == MediaRef(ref="1479", mime_type="image/jpeg", sha256="abc")
    assert (reaction.kind, reaction.text, reaction.profile_name) == (
        "reaction",
        "\U0001f44d",
        "Sheena Nelson",
    )
    assert reaction.context_message_id == "wamid.ours"
    assert reaction.data == {"emoji": "\U0001f44d", "message_id": "wamid.ours"}


# --- templates --------------------------------------------------------------------------------------


def template_change(**value: Any) -> dict[str, Any]:
    return {"field": "message_template_status_update", "value": value}


def test_template_status_updates() -> None:
    payload = webhook(
        template_change(
            event="APPROVED",
            message_template_id=12345678,
            message_template_name="order_update",
            message_template_language="en_US",
            message_template_category="UTILITY",
            reason="NONE",
        ),
        template_change(
            event="REJECTED",
            message_template_id=12345679,
            message_template_name="promo",
            message_template_language="es",
            reason="INCORRECT_CATEGORY",
        ),
        template_change(
            event="PAUSED",
            message_template_id=12345680,
            message_template_name="fall_sale",
            message_template_language="en_US",
            reason=None,
            other_info={"title": "FIRST_PAUSE", "description": "Paused for 3 hours: low quality."},
        ),
        template_change(
            event="disabled",
            message_template_id=12345681,
            message_template_name="old_promo",
            message_template_language="en_US",
            disable_info={"disable_date": "1750857384"},
        ),
    )
    assert parse_webhook(payload) == [
        TemplateStatusUpdate("order_update", "en_US", "APPROVED", None, "12345678"),
        TemplateStatusUpdate("promo", "es", "REJECTED", "INCORRECT_CATEGORY", "12345679"),
        TemplateStatusUpdate(
            "fall_sale", "en_US", "PAUSED", "FIRST_PAUSE: Paused for 3 hours: low quality.", "12345680"
        ),
        TemplateStatusUpdate("old_promo", "en_US", "DISABLED", None, "12345681"),
    ]


# --- envelopes --------------------------------------------------------------------------------------


def test_many_entries_and_changes_in_one_post() -> None:
    reply = {
        "from": "16505551234",
        "id": "wamid.reply",
        "timestamp": "1749416383",
        "type": "text",
        "text": {"body": "Yes please"},
        "context": {"from": "15550783881", "id": SENT["id"]},
    }
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": WABA_ID,
                "changes": [
                    messages_change(
                        statuses=[SENT, {**SENT, "status": "delivered", "timestamp": "1750857385"}]
                    ),
                    messages_change(contacts=CONTACTS, messages=[reply]),
                    {
                        "field": "account_update",
                        "value": {"phone_number": "15550783881", "event": "VERIFIED"},
                    },
                ],
            },
            {
                "id": "other-waba",
                "time": 1750857390,
                "changes": [
                    template_change(event="APPROVED", message_template_id=1, message_template_name="t"),
                    {"field": "phone_number_quality_update", "value": {"event": "FLAGGED"}},
                    messages_change(statuses=[{**SENT, "status": "read", "timestamp": "1750857386"}]),
                ],
            },
        ],
    }
    events = parse_webhook(payload)
    assert [type(e).__name__ for e in events] == [
        "StatusUpdate",
        "StatusUpdate",
        "InboundReply",
        "TemplateStatusUpdate",
        "StatusUpdate",
    ]
    assert [e.status for e in events if isinstance(e, StatusUpdate)] == [
        Status.SENT,
        Status.DELIVERED,
        Status.READ,
    ]
    assert isinstance(events[2], InboundReply) and events[2].context_message_id == SENT["id"]


def test_a_messages_change_with_only_errors_yields_nothing() -> None:
    errors = [{"code": 131000, "title": "Something went wrong", "message": "Something went wrong"}]
    assert parse_webhook(webhook(messages_change(errors=errors))) == []


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "whatsapp_business_account",
        {"object": "page", "entry": []},
        {"entry": []},
        {"object": "whatsapp_business_account"},
        {"object": "whatsapp_business_account", "entry": {"changes": []}},
        {"object": "whatsapp_business_account", "entry": [{"id": "1"}]},
        {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages"}]}]},
    ],
)
def test_a_body_that_is_not_the_envelope_is_400(payload: Any) -> None:
    with pytest.raises(WebhookError) as error:
        parse_webhook(payload)
    assert error.value.status == 400


def test_an_empty_envelope_is_fine() -> None:
    assert parse_webhook({"object": "whatsapp_business_account", "entry": []}) == []


def test_standin_payloads_round_trip() -> None:
    """The stand-in's builders (used by end-to-end runs) make payloads this parser reads back."""
    sent = SentMessage("wamid.abc", "15551230001", "ledger-9", {})
    failed = status_webhook(sent, "failed", timestamp=1750000000, error_code=131047)
    [event] = parse_webhook(json.loads(signed(failed, APP_SECRET)[0]))
    assert isinstance(event, StatusUpdate)
    assert (event.status, event.client_ref, event.error_code) == (Status.FAILED, "ledger-9", "131047")
    [reply] = parse_webhook(envelope(text_reply_change("+15551230001", "STOP", context_id="wamid.abc")))
    assert (
        isinstance(reply, InboundReply) and reply.context_message_id == "wamid.abc" and reply.text == "STOP"
    )


# --- signature and handshake ------------------------------------------------------------------------

BODY = json.dumps(webhook(messages_change(statuses=[SENT])), separators=(",", ":")).encode()


def meta_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_good_signature_passes() -> None:
    verify_signature({"X-Hub-Signature-256": meta_signature(BODY, APP_SECRET)}, BODY, APP_SECRET)
    upper_hex = "sha256=" + hmac.new(APP_SECRET.encode(), BODY, hashlib.sha256).hexdigest().upper()
    verify_signature({"x-hub-signature-256": upper_hex}, BODY, APP_SECRET)  # any header or hex case
    assert sign_webhook(BODY, APP_SECRET) == meta_signature(BODY, APP_SECRET)
    body, headers = signed(webhook(messages_change(statuses=[SENT])), APP_SECRET)
    verify_signature(headers, body, APP_SECRET)


@pytest.mark.parametrize(
    ("headers", "body", "secret"),
    [
        pytest.param(
            {"X-Hub-Signature-256": meta_signature(BODY, "other-secret")}, BODY, APP_SECRET, id="wrong"
        ),
        pytest.param(
            {"X-Hub-Signature-256": meta_signature(BODY, APP_SECRET)},
            BODY.replace(b'"sent"', b'"read"'),
            APP_SECRET,
            id="tampered",
        ),
        pytest.param({}, BODY, APP_SECRET, id="missing"),
        pytest.param({"X-Hub-Signature-256": ""}, BODY, APP_SECRET, id="empty"),
        pytest.param(
            {"X-Hub-Signature": "sha1=" + hmac.new(APP_SECRET.encode(), BODY, hashlib.sha1).hexdigest()},
            BODY,
            APP_SECRET,
            id="sha1-only",
        ),
        pytest.param(
            {"X-Hub-Signature-256": meta_signature(BODY, APP_SECRET).replace("sha256=", "md5=")},
            BODY,
            APP_SECRET,
            id="wrong-algorithm",
        ),
        pytest.param({"X-Hub-Signature-256": meta_signature(BODY, "")}, BODY, "", id="no-secret-configured"),
    ],
)
def test_a_bad_signature_is_401(headers: dict[str, str], body: bytes, secret: str) -> None:
    with pytest.raises(WebhookError) as error:
        verify_signature(headers, body, secret)
    assert error.value.status == 401


def test_handshake_returns_the_challenge() -> None:
    params = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "my-verify-token"}
    assert verify_handshake(params, "my-verify-token") == "1158201444"


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": "guess"},
        {"hub.mode": "unsubscribe", "hub.challenge": "1158201444", "hub.verify_token": "my-verify-token"},
        {"hub.challenge": "1158201444", "hub.verify_token": "my-verify-token"},
        {"hub.mode": "subscribe", "hub.challenge": "1158201444"},
    ],
)
def test_a_wrong_handshake_is_403(params: dict[str, str]) -> None:
    with pytest.raises(WebhookError) as error:
        verify_handshake(params, "my-verify-token")
    assert error.value.status == 403


def test_a_handshake_without_a_configured_token_is_403() -> None:
    with pytest.raises(WebhookError) as error:
        verify_handshake({"hub.mode": "subscribe", "hub.challenge": "1", "hub.verify_token": ""}, "")
    assert error.value.status == 403
