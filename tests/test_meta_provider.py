"""MetaProvider against the Graph API stand-in: bodies valid per Meta's spec, error classes, template sync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tests.standins.meta import (
    MetaStandIn,
    Scripted,
    graph_error,
    mark_read_errors,
    mark_read_example,
    meta_send_validator_as_published,
    meta_template,
    server_error,
    validate_message,
)
from tidings.delivery.outcomes import UNCERTAIN_CODES
from tidings.providers.base import (
    MediaRef,
    OutboundMedia,
    OutboundMessage,
    Outcome,
    RemoteTemplate,
    SendResult,
)
from tidings.providers.media import trusted_media_url
from tidings.providers.meta import (
    MEDIA_HOSTS,
    PER_USER_MARKETING_RETRY_AFTER,
    MetaApiError,
    MetaProvider,
    build_message_body,
    fetch_templates,
)
from tidings.server import bind

pytestmark = pytest.mark.anyio

TEMPLATES = [
    meta_template("welcome", "Hi {{1}}, welcome to {{2}}!", template_id="1001"),
    meta_template("order_update", "Order {{1}} ships {{2}}", category="UTILITY", template_id="1002"),
    meta_template("promo", "Sale!", header="Fall Sale", status="PENDING", template_id="1003"),
    meta_template("promo", "¡Oferta!", language="es", status="REJECTED", template_id="1004"),
    meta_template("no_body", "", template_id="1005"),
]
TEMPLATES[4]["components"] = [{"type": "HEADER", "format": "TEXT", "text": "Only a header"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served() -> Iterator[MetaStandIn]:
    stand_in = MetaStandIn(templates=TEMPLATES, page_size=2)
    with stand_in.serve():
        yield stand_in


@pytest.fixture
def standin(served: MetaStandIn) -> MetaStandIn:
    """The module's stand-in, with no scripts and no history."""
    served.reset()
    return served


@asynccontextmanager
async def meta(standin: MetaStandIn, **kwargs: Any) -> AsyncIterator[MetaProvider]:
    options: dict[str, Any] = {
        "phone_number_id": standin.phone_number_id,
        "access_token": standin.access_token,
        "base_url": standin.base_url,
    }
    provider = MetaProvider(**(options | kwargs))
    try:
        yield provider
    finally:
        await provider.aclose()


def template_message(to: str = "+15551230001", ref: str = "ledger-1", **kwargs: Any) -> OutboundMessage:
    options: dict[str, Any] = {
        "template_name": "acme:order_update",
        "language": "en_US",
        "params": ["#A-1042", "on Friday", "Ana"],
    }
    return OutboundMessage(client_ref=ref, to=to, **(options | kwargs))


# --- bodies -----------------------------------------------------------------------------------------


async def test_template_body_is_valid_with_parameters_in_order(standin: MetaStandIn) -> None:
    async with meta(standin) as provider:
        result = await provider.send(template_message())

    assert result.outcome is Outcome.ACCEPTED
    [sent] = standin.sent
    assert result.provider_message_id == sent.wamid and sent.wamid.startswith("wamid.")
    [request] = standin.sends
    assert request.path == f"/v23.0/{standin.phone_number_id}/messages"
    assert request.headers["authorization"] == f"Bearer {standin.access_token}"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551230001",
        "type": "template",
        "template": {
            "name": "order_update",  # without our namespace
            "language": {"policy": "deterministic", "code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "#A-1042"},
                        {"type": "text", "text": "on Friday"},
                        {"type": "text", "text": "Ana"},
                    ],
                }
            ],
        },
        "biz_opaque_callback_data": "ledger-1",
    }
    assert validate_message(request.body) == []
    assert standin.invalid == []


async def test_template_with_header_and_buttons_is_valid(standin: MetaStandIn) -> None:
    message = template_message(
        header_params=[{"type": "image", "image": {"link": "https://example.com/fall.jpg"}}],
        button_params=[
            {"type": "payload", "payload": "STOP_PROMOS"},  # a bare quick-reply parameter
            {"sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "order/A-1042"}]},
        ],
    )
    async with meta(standin) as provider:
        result = await provider.send(message)

    assert result.outcome is Outcome.ACCEPTED
    components = standin.sends[0].body["template"]["components"]
    assert [c["type"] for c in components] == ["header", "body", "button", "button"]
    assert components[0]["parameters"] == [
        {"type": "image", "image": {"link": "https://example.com/fall.jpg"}}
    ]
    assert components[2] == {
        "type": "button",
        "sub_type": "quick_reply",
        "index": "0",
        "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}],
    }
    assert components[3]["sub_type"] == "url" and components[3]["index"] == "1"
    assert standin.invalid == []


async def test_template_without_parameters_has_no_components(standin: MetaStandIn) -> None:
    async with meta(standin) as provider:
        result = await provider.send(template_message(template_name="hello_world", params=[], language="en"))

    assert result.outcome is Outcome.ACCEPTED
    template = standin.sends[0].body["template"]
    assert template == {"name": "hello_world", "language": {"policy": "deterministic", "code": "en"}}
    assert standin.invalid == []


async def test_text_body_is_valid(standin: MetaStandIn) -> None:
    async with meta(standin) as provider:
        result = await provider.send(
            OutboundMessage(client_ref="ledger-7", to="+447700900123", text="Yes, in blue")
        )

    assert result.outcome is Outcome.ACCEPTED
    body = standin.sends[0].body
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "447700900123",
        "type": "text",
        "text": {"body": "Yes, in blue", "preview_url": False},
        "biz_opaque_callback_data": "ledger-7",
    }
    assert validate_message(body) == []
    assert standin.invalid == []


def test_body_shapes_of_optional_components() -> None:
    header_component = {"type": "header", "parameters": [{"type": "text", "text": "Fall Sale"}]}
    body = build_message_body(template_message(header_params=[header_component]))
    assert body["template"]["components"][0] == header_component
    url_button = {
        "type": "button",
        "sub_type": "url",
        "index": "0",
        "parameters": [{"type": "text", "text": "x"}],
    }
    body = build_message_body(template_message(button_params=[url_button, {"type": "text", "text": "y"}]))
    assert body["template"]["components"][1:] == [
        url_button,
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "y"}]},
    ]
    assert validate_message(body) == []
    both = build_message_body(template_message(text="free text"))  # a template can go outside the window
    assert both["type"] == "template" and "text" not in both
    plain = build_message_body(template_message(template_name="welcome"))
    assert plain["template"]["name"] == "welcome"


def test_the_validator_rejects_wrong_bodies() -> None:
    good = build_message_body(template_message())
    assert validate_message(good) == []

    no_language = build_message_body(template_message())
    del no_language["template"]["language"]
    assert any("'language' is a required property" in e for e in validate_message(no_language))

    no_policy = build_message_body(template_message())
    no_policy["template"]["language"] = {"code": "en_US"}
    assert any("'policy' is a required property" in e for e in validate_message(no_policy))

    param_without_text = build_message_body(template_message())
    param_without_text["template"]["components"][0]["parameters"][1] = {"type": "text"}
    assert any("'text' is a required property" in e for e in validate_message(param_without_text))

    no_recipient = build_message_body(OutboundMessage(client_ref="r", to="+15551230001", text="hi"))
    del no_recipient["to"]
    assert any("'to' is a required property" in e for e in validate_message(no_recipient))

    unknown_text_field = build_message_body(OutboundMessage(client_ref="r", to="+15551230001", text="hi"))
    unknown_text_field["text"]["bold"] = True
    assert validate_message(unknown_text_field) != []

    wrong_type = dict(good, type="telegram")
    assert validate_message(wrong_type) != []


def test_the_published_spec_needs_the_documented_fix() -> None:
    """Without dropping ``additionalProperties: false`` from allOf branches, a correct text message fails."""
    text = build_message_body(OutboundMessage(client_ref="r", to="+15551230001", text="hi"))
    assert validate_message(text) == []
    problems = meta_send_validator_as_published().errors(text)
    assert any("Additional properties are not allowed" in p for p in problems)


async def test_the_standin_answers_an_invalid_body_with_graph_error_100(standin: MetaStandIn) -> None:
    body = build_message_body(template_message())
    del body["template"]["language"]
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{standin.base_url}/v23.0/{standin.phone_number_id}/messages",
            json=body,
            headers={"Authorization": f"Bearer {standin.access_token}"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100 and "language" in error["error_data"]["details"]
    [invalid] = standin.invalid
    assert any("language" in e for e in invalid.errors)
    assert standin.sent == []


async def test_a_message_without_template_or_text_fails_without_a_call(standin: MetaStandIn) -> None:
    async with meta(standin) as provider:
        result = await provider.send(OutboundMessage(client_ref="r", to="+15551230001"))
    assert result.outcome is Outcome.FAILED and result.error_code == "invalid_message"
    assert standin.requests == []


# --- errors -----------------------------------------------------------------------------------------

FAILED = [
    (graph_error(131047), "131047"),  # outside the 24-hour window
    (graph_error(131026), "131026"),  # undeliverable
    (graph_error(132000), "132000"),  # parameter count mismatch
    (graph_error(132001, status=404), "132001"),
    (graph_error(132015), "132015"),
    (graph_error(132016), "132016"),
    (graph_error(131050), "131050"),  # user stopped marketing
    (graph_error(131051), "131051"),
    (graph_error(100), "100"),
    (graph_error(131008), "131008"),
    (graph_error(131009), "131009"),
    (graph_error(190), "190"),
    (graph_error(0), "0"),
    (graph_error(10, status=403), "10"),
    (graph_error(200, status=403), "200"),
    (graph_error(299, status=403), "299"),
    (graph_error(133010), "133010"),
    (graph_error(368), "368"),
    (graph_error(131031), "131031"),
    (graph_error(999999), "999999"),  # an unknown 4xx code
    (Scripted(400, "Bad Request"), "http_400"),  # not a Graph error body
]
RETRY = [
    (graph_error(130429, status=429), "130429"),
    (graph_error(130429), "130429"),  # Meta's table lists it with HTTP 400
    (graph_error(131056), "131056"),  # pair rate limit
    (graph_error(131057), "131057"),
    (graph_error(131000), "131000"),
    (graph_error(80007), "80007"),
    (graph_error(4), "4"),
    (graph_error(1), "1"),
    (graph_error(2), "2"),
    (graph_error(131016, status=500), "131016"),
    (graph_error(555555, is_transient=True), "555555"),  # Meta marks it transient
    (graph_error(555555, status=503), "555555"),  # unknown code, 5xx
    (server_error(500), "http_500"),
    (server_error(502, "Bad Gateway"), "http_502"),
    (Scripted(429, "Too Many Requests"), "http_429"),
]


@pytest.mark.parametrize(("answer", "code"), FAILED, ids=[c for _, c in FAILED])
async def test_permanent_errors_fail(standin: MetaStandIn, answer: Scripted, code: str) -> None:
    standin.answer_next(answer)
    async with meta(standin) as provider:
        result = await provider.send(template_message())
    assert result.outcome is Outcome.FAILED
    assert result.error_code == code
    assert result.error_detail
    assert standin.invalid == []


@pytest.mark.parametrize(("answer", "code"), RETRY, ids=[c for _, c in RETRY])
async def test_transient_errors_retry(standin: MetaStandIn, answer: Scripted, code: str) -> None:
    standin.answer_next(answer)
    async with meta(standin) as provider:
        result = await provider.send(template_message())
        again = await provider.send(template_message())
    assert result.outcome is Outcome.RETRY
    assert result.error_code == code
    assert result.retry_after is None
    assert again.outcome is Outcome.ACCEPTED  # the script was for one send only


async def test_error_detail_keeps_message_and_details(standin: MetaStandIn) -> None:
    standin.answer_next(graph_error(131047))
    async with meta(standin) as provider:
        result = await provider.send(OutboundMessage(client_ref="r", to="+15551230001", text="late"))
    assert result == SendResult.failed(
        "131047",
        "(#131047) Re-engagement message: Message failed to send because more than 24 hours have passed "
        "since the customer last replied to this number.",
    )


async def test_per_user_marketing_limit_retries_an_hour_later(standin: MetaStandIn) -> None:
    standin.answer_next(graph_error(131049))
    async with meta(standin) as provider:
        result = await provider.send(template_message())
    assert result.outcome is Outcome.RETRY and result.error_code == "131049"
    assert result.retry_after == PER_USER_MARKETING_RETRY_AFTER == 3600
    assert "healthy ecosystem engagement" in (result.error_detail or "")


async def test_retry_after_seconds_is_honoured(standin: MetaStandIn) -> None:
    standin.answer_next(graph_error(130429, status=429, retry_after=7), server_error(503))
    standin.answer_next(Scripted(503, "busy", {"Retry-After": "30"}))
    async with meta(standin) as provider:
        first = await provider.send(template_message())
        second = await provider.send(template_message())
        third = await provider.send(template_message())
    assert (first.outcome, first.error_code, first.retry_after) == (Outcome.RETRY, "130429", 7.0)
    assert (second.outcome, second.retry_after) == (Outcome.RETRY, None)
    assert (third.outcome, third.error_code, third.retry_after) == (Outcome.RETRY, "http_503", 30.0)


async def test_retry_after_http_date_is_honoured(standin: MetaStandIn) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    standin.answer_next(Scripted(429, graph_error(131056).body, {"Retry-After": when}))
    async with meta(standin) as provider:
        result = await provider.send(template_message())
    assert result.outcome is Outcome.RETRY and result.error_code == "131056"
    assert result.retry_after is not None and 60 < result.retry_after <= 120


async def test_errors_scripted_per_recipient(standin: MetaStandIn) -> None:
    standin.answer_always("+15550000001", graph_error(131026))
    standin.answer_next(graph_error(130429, status=429), to="15550000002")
    async with meta(standin) as provider:
        results = [
            await provider.send(template_message(to=to, ref=f"r{i}"))
            for i, to in enumerate(
                ["+15550000001", "+15550000002", "+15550000003", "+15550000001", "+15550000002"]
            )
        ]
    assert [r.outcome for r in results] == [
        Outcome.FAILED,
        Outcome.RETRY,
        Outcome.ACCEPTED,
        Outcome.FAILED,
        Outcome.ACCEPTED,
    ]
    assert [s.client_ref for s in standin.sent] == ["r2", "r4"]


async def test_a_wrong_token_fails_with_190(standin: MetaStandIn) -> None:
    async with meta(standin, access_token="stale") as provider:
        result = await provider.send(template_message())
    assert result.outcome is Outcome.FAILED and result.error_code == "190"
    assert standin.sent == []


async def test_a_2xx_without_a_message_id_is_not_resent(standin: MetaStandIn) -> None:
    """Accepted (Sent) without an id, never resent; its status webhook settles it (test_provider_trust)."""
    standin.answer_next(Scripted(200, {"messaging_product": "whatsapp"}))
    async with meta(standin) as provider:
        result = await provider.send(template_message())
    assert result.outcome is Outcome.ACCEPTED and result.provider_message_id is None


async def test_connection_refused_retries() -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    provider = MetaProvider(phone_number_id="1", access_token="t", base_url=f"http://127.0.0.1:{port}")
    try:
        result = await provider.send(template_message())
    finally:
        await provider.aclose()
    # The request never left: retried with backoff, not reconciled as an unknown outcome.
    assert result.outcome is Outcome.RETRY and result.error_code == "connect_error"
    assert result.error_code not in UNCERTAIN_CODES


async def test_a_timeout_retries() -> None:
    slow = MetaStandIn(delay=0.8)  # its own: the slow request ends after the test
    with slow.serve():
        async with meta(slow, timeout=0.1) as provider:
            result = await provider.send(template_message())
    assert result.outcome is Outcome.RETRY and result.error_code == "timeout"


async def test_fifty_concurrent_sends(standin: MetaStandIn) -> None:
    messages = [
        template_message(to=f"+1555000{i:04d}", ref=f"ledger-{i}", params=[str(i)]) for i in range(50)
    ]
    async with meta(standin) as provider:
        results = await asyncio.gather(*(provider.send(m) for m in messages))

    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert len({r.provider_message_id for r in results}) == 50
    by_ref = {s.client_ref: s for s in standin.sent}
    assert len(by_ref) == 50
    for message, result in zip(messages, results, strict=True):
        sent = by_ref[message.client_ref]
        assert sent.wamid == result.provider_message_id
        assert sent.to == message.to.lstrip("+")
        assert sent.body["template"]["components"][0]["parameters"] == [
            {"type": "text", "text": message.params[0]}
        ]
    assert standin.invalid == []


async def test_a_shared_http_client_is_left_open(standin: MetaStandIn) -> None:
    async with httpx.AsyncClient() as client:
        provider = MetaProvider(
            phone_number_id=standin.phone_number_id,
            access_token=standin.access_token,
            base_url=f"{standin.base_url}/",
            http=client,
        )
        assert (await provider.send(template_message())).outcome is Outcome.ACCEPTED
        await provider.aclose()
        assert not client.is_closed
    assert "meta-test-token" not in repr(provider)


# --- template sync ----------------------------------------------------------------------------------


async def test_fetch_templates_follows_three_pages(standin: MetaStandIn) -> None:
    templates = await fetch_templates(
        waba_id=standin.waba_id, access_token=standin.access_token, base_url=standin.base_url or ""
    )

    assert [(t.id, t.name, t.language, t.status, t.category) for t in templates] == [
        ("1001", "welcome", "en_US", "APPROVED", "MARKETING"),
        ("1002", "order_update", "en_US", "APPROVED", "UTILITY"),
        ("1003", "promo", "en_US", "PENDING", "MARKETING"),
        ("1004", "promo", "es", "REJECTED", "MARKETING"),
        ("1005", "no_body", "en_US", "APPROVED", "MARKETING"),
    ]
    assert [t.body for t in templates] == [
        "Hi {{1}}, welcome to {{2}}!",
        "Order {{1}} ships {{2}}",
        "Sale!",
        "¡Oferta!",
        "",
    ]
    assert isinstance(templates[2], RemoteTemplate)
    assert templates[2].components[0] == {"type": "HEADER", "format": "TEXT", "text": "Fall Sale"}
    pages = standin.requests
    assert len(pages) == 3
    assert all(p.path == f"/v23.0/{standin.waba_id}/message_templates" for p in pages)
    assert all(p.headers["authorization"] == f"Bearer {standin.access_token}" for p in pages)
    assert pages[0].query == {"fields": "name,status,language,category,components", "limit": "100"}
    assert "after" in pages[1].query and "after" in pages[2].query


async def test_fetch_templates_with_cursors_only() -> None:
    standin = MetaStandIn(templates=TEMPLATES, page_size=2, include_next=False)
    with standin.serve() as base_url:
        templates = await fetch_templates(
            waba_id=standin.waba_id, access_token=standin.access_token, base_url=base_url
        )
    assert [t.id for t in templates] == ["1001", "1002", "1003", "1004", "1005"]
    assert len(standin.requests) == 4  # three pages, then an empty one ends it


async def test_fetch_templates_errors(standin: MetaStandIn) -> None:
    with pytest.raises(MetaApiError) as wrong_token:
        await fetch_templates(waba_id=standin.waba_id, access_token="stale", base_url=standin.base_url or "")
    assert wrong_token.value.status == 401 and wrong_token.value.code == 190
    assert "Invalid OAuth access token" in str(wrong_token.value)

    with pytest.raises(MetaApiError) as wrong_waba:
        await fetch_templates(
            waba_id="nope", access_token=standin.access_token, base_url=standin.base_url or ""
        )
    assert wrong_waba.value.status == 400 and wrong_waba.value.code == 100

    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(MetaApiError) as refused:
        await fetch_templates(waba_id="1", access_token="t", base_url=f"http://127.0.0.1:{port}")
    assert refused.value.status is None


# --- media, read receipts ---------------------------------------------------------------------------

MEDIA_LINK = "https://tidings.example.com/media/ab12/ticket.png"


@pytest.mark.parametrize(
    ("kind", "caption", "filename", "expected"),
    [
        ("image", "Your ticket", None, {"link": MEDIA_LINK, "caption": "Your ticket"}),
        ("video", None, None, {"link": MEDIA_LINK}),
        ("audio", "no caption on audio", None, {"link": MEDIA_LINK}),
        (
            "document",
            "Invoice",
            "invoice.pdf",
            {"link": MEDIA_LINK, "caption": "Invoice", "filename": "invoice.pdf"},
        ),
        ("sticker", None, None, {"link": MEDIA_LINK}),
    ],
)
async def test_media_is_sent_by_link_as_the_spec_says(
    standin: MetaStandIn, kind: str, caption: str | None, filename: str | None, expected: dict[str, Any]
) -> None:
    message = OutboundMessage(
        client_ref="m1", to="+16505551234", text=caption, media=OutboundMedia(kind, MEDIA_LINK, filename)
    )
    async with meta(standin) as provider:
        result = await provider.send(message)
    assert result.outcome is Outcome.ACCEPTED, result
    assert standin.invalid == []
    [sent] = standin.sent
    assert sent.body["type"] == kind and sent.body[kind] == expected
    assert validate_message(sent.body) == []


def test_a_media_kind_meta_cannot_send_fails_without_a_request() -> None:
    with pytest.raises(ValueError, match="cannot send"):
        build_message_body(OutboundMessage(client_ref="m", to="+1555", media=OutboundMedia("hologram", "x")))


async def test_fetch_media_asks_for_the_url_then_downloads_it_with_the_token(standin: MetaStandIn) -> None:
    standin.media["1003383421387256"] = (b"\xff\xd8jpeg bytes", "image/jpeg")
    async with meta(standin) as provider:
        content, mime = await provider.fetch_media(MediaRef(ref="1003383421387256", mime_type="image/jpeg"))
    assert (content, mime) == (b"\xff\xd8jpeg bytes", "image/jpeg")
    lookup, download = standin.requests
    assert (lookup.method, lookup.path, lookup.status) == ("GET", "/v23.0/1003383421387256", 200)
    assert lookup.query == {"phone_number_id": standin.phone_number_id}
    assert (download.path, download.query, download.status) == (
        "/whatsapp_business/attachments/",
        {"mid": "1003383421387256"},
        200,
    )
    bearer = f"Bearer {standin.access_token}"
    assert lookup.headers["authorization"] == bearer == download.headers["authorization"]


async def test_fetch_media_errors(standin: MetaStandIn) -> None:
    async with meta(standin) as provider:
        with pytest.raises(MetaApiError) as unknown:
            await provider.fetch_media(MediaRef(ref="404404404"))
        assert (unknown.value.status, unknown.value.code) == (400, 100)
        with pytest.raises(MetaApiError, match="not a Meta media id"):
            await provider.fetch_media(MediaRef(ref="../../v23.0/me"))
    assert len(standin.requests) == 1
    standin.media["1"] = (b"x", "image/png")
    async with meta(standin, access_token="expired") as provider:
        with pytest.raises(MetaApiError) as refused:
            await provider.fetch_media(MediaRef(ref="1"))
    assert refused.value.refused_credentials and refused.value.code == 190


def test_the_token_goes_only_to_meta_media_hosts_or_the_base_url() -> None:
    base = "http://127.0.0.1:8123"
    trusted = [
        "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1",
        "https://graph.facebook.com/v23.0/1",
        "http://127.0.0.1:8123/whatsapp_business/attachments/?mid=1",
    ]
    refused = [
        "http://lookaside.fbsbx.com/x",  # not https
        "https://fbsbx.com.example.org/x",
        "https://evil-fbsbx.com/x",
        "https://user:pw@lookaside.fbsbx.com/x",
        "http://127.0.0.1:8124/x",  # another port on the same host
        "file:///etc/passwd",
    ]
    assert [trusted_media_url(u, base, MEDIA_HOSTS) for u in trusted] == [True] * len(trusted)
    assert [trusted_media_url(u, base, MEDIA_HOSTS) for u in refused] == [False] * len(refused)


async def test_mark_read_posts_the_read_receipt_of_the_spec(standin: MetaStandIn) -> None:
    wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUYzMjEzNDM2RTZGQ0MzMDJBRgA="
    async with meta(standin) as provider:
        assert await provider.mark_read(wamid) is True
        standin.read_answers.append(graph_error(100, details="Invalid message_id"))
        assert await provider.mark_read(wamid) is False  # refused: False, never raised
    first, second = standin.requests
    assert (first.method, first.path, first.status) == (
        "POST",
        f"/v23.0/{standin.phone_number_id}/messages",
        200,
    )
    assert first.body == {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    assert mark_read_errors(first.body) == [] and first.errors == ()
    assert set(first.body) <= set(mark_read_example())
    assert second.status == 400
    assert mark_read_errors({"messaging_product": "whatsapp", "status": "seen"}) != []  # the check bites


async def test_mark_read_without_an_answer_is_false() -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    provider = MetaProvider(phone_number_id="1", access_token="t", base_url=f"http://127.0.0.1:{port}")
    assert await provider.mark_read("wamid.x") is False
    await provider.aclose()
