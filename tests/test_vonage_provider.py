"""VonageProvider against the stand-in Messages API, which validates every body against the official spec."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import jwt
import pytest

from tests.standins.openapi import SpecViolation, vonage_send_validator
from tests.standins.vonage import (
    Answer,
    VonageStandIn,
    low_balance,
    problem,
    rate_limited,
    rsa_key_pair,
    server_error,
    unauthorized,
)
from tidings.providers.base import (
    MediaRef,
    OutboundMedia,
    OutboundMessage,
    Outcome,
    ProviderApiError,
    SendResult,
)
from tidings.providers.media import download
from tidings.providers.vonage import (
    JWT_LIFETIME,
    JWT_RENEW_MARGIN,
    VonageProvider,
    classify_response,
    vonage_template_name,
)
from tidings.server import bind

pytestmark = pytest.mark.anyio

APP_ID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
API_KEY, API_SECRET = "abcd1234", "s3cr3tS3cr3t"
SENDER = "+447700900000"
MEDIA_LINK = "https://tidings.example.com/media/ab12/ticket.png"
BASIC = base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return rsa_key_pair()


@pytest.fixture(scope="module")
def served(keys: tuple[str, str]) -> Iterator[tuple[VonageStandIn, str]]:
    standin = VonageStandIn(application_id=APP_ID, public_key=keys[1], api_key=API_KEY, api_secret=API_SECRET)
    with standin.serve() as url:
        yield standin, url


@pytest.fixture
def standin(served: tuple[VonageStandIn, str]) -> Iterator[VonageStandIn]:
    standin = served[0]
    standin.reset()
    yield standin
    standin.reset()


@pytest.fixture
def base_url(served: tuple[VonageStandIn, str]) -> str:
    return served[1]


@pytest.fixture
async def jwt_provider(keys: tuple[str, str], base_url: str) -> AsyncIterator[VonageProvider]:
    provider = VonageProvider(sender=SENDER, base_url=base_url, application_id=APP_ID, private_key=keys[0])
    yield provider
    await provider.aclose()


@pytest.fixture
async def basic_provider(base_url: str) -> AsyncIterator[VonageProvider]:
    provider = VonageProvider(sender=SENDER, base_url=base_url, api_key=API_KEY, api_secret=API_SECRET)
    yield provider
    await provider.aclose()


def template(to: str = "+447700900123", **kwargs: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "client_ref": "msg-1",
        "to": to,
        "template_name": "9b6b4fcb_da19_4a26_8fe8_78074a91b584:order_update",
        "language": "en_GB",
        "params": ["Joe Bloggs", "AB123456", "3"],
    }
    fields.update(kwargs)
    return OutboundMessage(**fields)


# --- bodies, validated by the stand-in against the spec --------------------------------------------------


async def test_template_body_is_valid_per_spec_with_parameters_in_order(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    result = await jwt_provider.send(template())

    assert result.outcome is Outcome.ACCEPTED
    [record] = standin.requests
    assert record.path == "/v1/messages" and record.status == 202 and record.errors == []
    assert result.provider_message_id == record.message_uuid
    assert vonage_send_validator().errors(record.body) == []
    assert record.body == {
        "channel": "whatsapp",
        "message_type": "template",
        "to": "447700900123",
        "from": "447700900000",
        "client_ref": "msg-1",
        "whatsapp": {"policy": "deterministic", "locale": "en_GB"},
        "template": {"name": "order_update", "parameters": ["Joe Bloggs", "AB123456", "3"]},
    }
    assert record.headers["content-type"] == "application/json"


async def test_template_without_parameters_omits_them(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    result = await jwt_provider.send(template(params=[], template_name="welcome"))

    assert result.outcome is Outcome.ACCEPTED
    [record] = standin.accepted
    assert record.body["template"] == {"name": "welcome"}


async def test_legacy_template_names_send_namespace_and_name(
    standin: VonageStandIn, keys: tuple[str, str], base_url: str
) -> None:
    provider = VonageProvider(
        sender=SENDER,
        base_url=base_url,
        application_id=APP_ID,
        private_key=keys[0],
        legacy_template_names=True,
    )
    try:
        assert (await provider.send(template())).outcome is Outcome.ACCEPTED
    finally:
        await provider.aclose()
    [record] = standin.accepted
    assert record.body["template"]["name"] == "9b6b4fcb_da19_4a26_8fe8_78074a91b584:order_update"


def test_template_name_choice() -> None:
    assert vonage_template_name("ns:verify") == "verify"
    assert vonage_template_name("verify") == "verify"
    assert vonage_template_name("ns:verify", legacy=True) == "ns:verify"


async def test_text_body_is_valid_per_spec(standin: VonageStandIn, jwt_provider: VonageProvider) -> None:
    message = OutboundMessage(client_ref="r" * 100, to="+14155550100", text="Your order has shipped")
    result = await jwt_provider.send(message)

    assert result.outcome is Outcome.ACCEPTED
    [record] = standin.accepted
    assert vonage_send_validator().errors(record.body) == []
    assert record.body == {
        "channel": "whatsapp",
        "message_type": "text",
        "to": "14155550100",
        "from": "447700900000",
        "client_ref": "r" * 100,
        "text": "Your order has shipped",
    }


async def test_template_with_header_and_buttons_goes_as_custom(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    message = template(
        language="en-GB",
        header_params=[{"type": "image", "image": {"link": "https://example.com/a.jpg"}}],
        button_params=[{"sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "ab12"}]}],
    )
    assert (await jwt_provider.send(message)).outcome is Outcome.ACCEPTED
    [record] = standin.accepted
    assert record.body["message_type"] == "custom"
    assert record.body["custom"] == {
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"policy": "deterministic", "code": "en_GB"},
            "components": [
                {
                    "type": "header",
                    "parameters": [{"type": "image", "image": {"link": "https://example.com/a.jpg"}}],
                },
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Joe Bloggs"},
                        {"type": "text", "text": "AB123456"},
                        {"type": "text", "text": "3"},
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "0",
                    "parameters": [{"type": "text", "text": "ab12"}],
                },
            ],
        },
    }


async def test_validation_bites_a_template_without_whatsapp_is_refused(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    body = jwt_provider.request_body(template())
    assert vonage_send_validator().errors(body) == []

    missing = {k: v for k, v in body.items() if k != "whatsapp"}
    errors = vonage_send_validator().errors(missing)
    assert errors == ["(body): 'whatsapp' is a required property"]
    with pytest.raises(SpecViolation):
        vonage_send_validator().check(missing)
    # Other ways to get it wrong are caught too.
    assert vonage_send_validator().errors({**body, "template": {"name": "x", "parameters": [1]}}) == [
        "template.parameters.0: 1 is not of type 'string'"
    ]
    assert vonage_send_validator().errors({**body, "whatsapp": {"policy": "fallback", "locale": "en"}}) == [
        "whatsapp.policy: 'fallback' is not one of ['deterministic']"
    ]
    assert vonage_send_validator().errors({**body, "whatsapp": {"policy": "deterministic"}})

    # And the stand-in answers such a body 422, records why, and the provider's reading is "failed".
    async with httpx.AsyncClient() as client:
        response = await client.post(
            jwt_provider.url, json=missing, headers={"Authorization": jwt_provider.authorization()}
        )
    assert response.status_code == 422
    assert "whatsapp" in response.json()["detail"]
    [record] = standin.invalid
    assert record.errors == errors and record.message_uuid is None
    result = classify_response(response)
    assert (result.outcome, result.error_code) == (Outcome.FAILED, "1150")


async def test_documented_rules_beyond_the_spec(standin: VonageStandIn, jwt_provider: VonageProvider) -> None:
    body = jwt_provider.request_body(template())
    async with httpx.AsyncClient() as client:
        for bad in ({"to": "+447700900123"}, {"from": "+447700900000"}, {"client_ref": "x" * 101}):
            response = await client.post(
                jwt_provider.url,
                json={**body, **bad},
                headers={"Authorization": jwt_provider.authorization()},
            )
            assert response.status_code == 422, bad
    assert len(standin.invalid) == 3 and not standin.accepted


async def test_messages_that_cannot_be_sent_fail_without_a_request(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    cases = [
        OutboundMessage(client_ref="a", to="+447700900123"),  # neither template nor text
        OutboundMessage(client_ref="a", to="447-700", text="hi"),  # not a number
        OutboundMessage(client_ref="x" * 101, to="+447700900123", text="hi"),  # client_ref > 100
        OutboundMessage(client_ref="a", to="+447700900123", text=""),
    ]
    for message in cases:
        result = await jwt_provider.send(message)
        assert (result.outcome, result.error_code) == (Outcome.FAILED, "invalid_message"), message
    assert standin.requests == []


async def test_bsuid_recipient_is_sent_as_is(standin: VonageStandIn, jwt_provider: VonageProvider) -> None:
    result = await jwt_provider.send(template(to="US.13491208655302741918"))
    assert result.outcome is Outcome.ACCEPTED
    assert standin.accepted[0].body["to"] == "US.13491208655302741918"


# --- authentication -----------------------------------------------------------------------------------


async def test_jwt_is_accepted_with_the_sdk_claims_and_is_cached_then_renewed(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    assert jwt_provider.auth_scheme == "jwt"
    now = float(int(time.time()) - 60)
    jwt_provider._clock = lambda: now
    assert (await jwt_provider.send(template())).outcome is Outcome.ACCEPTED
    assert (await jwt_provider.send(template())).outcome is Outcome.ACCEPTED

    first, second = standin.requests
    assert first.auth == second.auth == "jwt"
    token = first.headers["authorization"].removeprefix("Bearer ")
    assert second.headers["authorization"] == first.headers["authorization"]  # cached
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"application_id", "iat", "jti", "exp"}
    assert claims["application_id"] == APP_ID
    assert claims["iat"] == int(now) and claims["exp"] == int(now) + JWT_LIFETIME == int(now) + 15 * 60
    assert uuid.UUID(claims["jti"]).version == 4

    # Still valid a little before the renewal point; renewed (new jti, new iat) after it.
    now += JWT_LIFETIME - JWT_RENEW_MARGIN - 1
    assert jwt_provider.authorization() == "Bearer " + token
    now += 1
    renewed = jwt.decode(
        jwt_provider.authorization().removeprefix("Bearer "), options={"verify_signature": False}
    )
    assert renewed["jti"] != claims["jti"] and renewed["iat"] == int(now)


async def test_real_clock_token_is_verified_by_the_standin(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    assert (await jwt_provider.send(template())).outcome is Outcome.ACCEPTED
    [record] = standin.requests
    assert record.claims is not None and record.claims["application_id"] == APP_ID


async def test_basic_auth_is_accepted(standin: VonageStandIn, basic_provider: VonageProvider) -> None:
    assert basic_provider.auth_scheme == "basic"
    assert (await basic_provider.send(template())).outcome is Outcome.ACCEPTED
    [record] = standin.requests
    assert record.auth == "basic"
    assert record.headers["authorization"] == "Basic " + base64.b64encode(b"abcd1234:s3cr3tS3cr3t").decode()


async def test_wrong_credentials_are_refused_and_fail(standin: VonageStandIn, base_url: str) -> None:
    other_key, _ = rsa_key_pair()
    providers = [
        VonageProvider(sender=SENDER, base_url=base_url, application_id=APP_ID, private_key=other_key),
        VonageProvider(sender=SENDER, base_url=base_url, application_id="another-app", private_key=other_key),
        VonageProvider(sender=SENDER, base_url=base_url, api_key=API_KEY, api_secret="wrong"),
    ]
    for provider in providers:
        try:
            result = await provider.send(template())
        finally:
            await provider.aclose()
        assert (result.outcome, result.error_code) == (Outcome.FAILED, "unauthorized")
        assert result.error_detail == "Unauthorized: You did not provide correct credentials."
        assert result.fix and "PUT /api/v1/integrations/whatsapp" in result.fix  # the campaign pauses
    assert standin.counts() == {401: 3}
    assert all(r.auth is None for r in standin.requests)


def test_constructor_needs_credentials(keys: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match="credentials"):
        VonageProvider(sender=SENDER)
    with pytest.raises(ValueError, match="private_key"):
        VonageProvider(sender=SENDER, application_id=APP_ID)
    with pytest.raises(ValueError, match="application_id"):
        VonageProvider(sender=SENDER, private_key=keys[0])
    with pytest.raises(ValueError, match="PEM"):
        VonageProvider(sender=SENDER, application_id=APP_ID, private_key="not a key")
    with pytest.raises(ValueError, match="api_secret"):
        VonageProvider(sender=SENDER, api_key=API_KEY)
    with pytest.raises(ValueError, match="sender"):
        VonageProvider(sender="Acme", api_key=API_KEY, api_secret=API_SECRET)


async def test_pem_pasted_on_one_line_is_accepted(keys: tuple[str, str]) -> None:
    one_line = keys[0].replace("\n", "\\n")
    provider = VonageProvider(sender=SENDER, application_id=APP_ID, private_key=one_line)
    try:
        assert provider.authorization().startswith("Bearer ")
    finally:
        await provider.aclose()


# --- answers ------------------------------------------------------------------------------------------


RETRY, FAILED = Outcome.RETRY, Outcome.FAILED
NOT_FOUND = {
    "type": "https://developer.vonage.com/api-errors#not-found",
    "title": "Not Found",
    "instance": "x",
}


@pytest.mark.parametrize(
    ("answer", "outcome", "code", "retry_after"),
    [
        pytest.param(rate_limited(7), RETRY, "http_429", 7.0, id="429-retry-after"),
        pytest.param(server_error(), RETRY, "http_500", None, id="500"),
        pytest.param(server_error(503), RETRY, "http_503", None, id="503"),
        pytest.param(problem(1000, 429), RETRY, "1000", None, id="1000-throttled"),
        pytest.param(problem(1331), RETRY, "1331", None, id="1331-provider-error"),
        pytest.param(problem(1022), FAILED, "1022", None, id="1022-invalid-template"),
        pytest.param(problem(1300), FAILED, "1300", None, id="1300-not-on-whatsapp"),
        pytest.param(problem(1340), FAILED, "1340", None, id="1340-outside-window"),
        pytest.param(problem(1120), FAILED, "1120", None, id="1120-invalid-sender"),
        pytest.param(problem(1150), FAILED, "1150", None, id="1150-invalid-params"),
        pytest.param(unauthorized(), FAILED, "unauthorized", None, id="401"),
        pytest.param(low_balance(), FAILED, "http_402", None, id="402"),
        pytest.param(Answer(404, NOT_FOUND), FAILED, "http_404", None, id="404"),
    ],
)
async def test_answers_are_classified(
    standin: VonageStandIn,
    jwt_provider: VonageProvider,
    answer: Answer,
    outcome: Outcome,
    code: str,
    retry_after: float | None,
) -> None:
    standin.answer_next(answer)
    result = await jwt_provider.send(template())

    assert answer.body is not None
    detail = ": ".join(answer.body[k] for k in ("title", "detail") if k in answer.body)
    assert replace(result, fix=None) == SendResult(
        outcome, error_code=code, error_detail=detail, retry_after=retry_after
    )
    assert (result.fix is not None) == (answer.status == 401)  # refused credentials pause the campaign
    assert standin.requests[0].status == answer.status


async def test_accepted_without_message_uuid_is_sent_without_an_id(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    """Vonage took it: Sent, never resent; its status webhook (client_ref) settles it."""
    standin.answer_next(Answer(202, {}))
    result = await jwt_provider.send(template())
    assert result == SendResult.accepted(None)


async def test_accepted_carries_the_message_uuid(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    result = await jwt_provider.send(template())
    assert result == SendResult.accepted(standin.accepted[0].message_uuid or "")
    assert uuid.UUID(result.provider_message_id or "")


async def test_connection_refused_is_retry(keys: tuple[str, str]) -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    provider = VonageProvider(
        sender=SENDER, base_url=f"http://127.0.0.1:{port}", application_id=APP_ID, private_key=keys[0]
    )
    try:
        result = await provider.send(template())
    finally:
        await provider.aclose()
    assert (result.outcome, result.error_code) == (Outcome.RETRY, "connect_error")
    assert result.error_detail and result.error_detail.startswith("ConnectError")


async def test_timeout_is_retry(standin: VonageStandIn, keys: tuple[str, str], base_url: str) -> None:
    standin.answer_next(Answer(202, delay=1.0))
    provider = VonageProvider(
        sender=SENDER, base_url=base_url, application_id=APP_ID, private_key=keys[0], timeout=0.2
    )
    try:
        result = await provider.send(template())
    finally:
        await provider.aclose()
    assert (result.outcome, result.error_code) == (Outcome.RETRY, "timeout")


async def test_scripts_per_recipient_and_queue(standin: VonageStandIn, jwt_provider: VonageProvider) -> None:
    standin.answer_always("447700900001", problem(1300))
    standin.answer_next(problem(1340), to="+447700900002")
    standin.answer_next(rate_limited(3))

    results = [await jwt_provider.send(template(to=f"+44770090000{i}")) for i in (1, 2, 2, 3, 1, 3)]
    assert [(r.outcome, r.error_code) for r in results] == [
        (Outcome.FAILED, "1300"),
        (Outcome.FAILED, "1340"),
        (Outcome.RETRY, "http_429"),  # the global queue, taken by whoever comes next
        (Outcome.ACCEPTED, None),
        (Outcome.FAILED, "1300"),
        (Outcome.ACCEPTED, None),
    ]
    assert standin.counts() == {422: 3, 429: 1, 202: 2}


async def test_fifty_concurrent_sends_share_one_kept_alive_client(
    standin: VonageStandIn, jwt_provider: VonageProvider
) -> None:
    messages = [template(to=f"+4477009{i:05d}", client_ref=f"ref-{i}") for i in range(50)]
    first = await asyncio.gather(*(jwt_provider.send(m) for m in messages))
    second = await asyncio.gather(*(jwt_provider.send(m) for m in messages))

    results = first + second
    assert all(r.outcome is Outcome.ACCEPTED for r in results)
    assert len({r.provider_message_id for r in results}) == 100
    records = standin.requests
    assert len(records) == 100 and not standin.invalid
    assert sorted(r.client_ref or "" for r in records) == sorted(
        f"ref-{i}" for i in range(50) for _ in (1, 2)
    )
    by_ref = {r.client_ref: r.body["to"] for r in records}
    assert all(by_ref[f"ref-{i}"] == f"4477009{i:05d}" for i in range(50))
    # The second round reused the first round's connections: at most 50 were ever opened.
    assert len({r.peer for r in records}) <= 50
    assert len({r.headers["authorization"] for r in records}) == 1  # one cached JWT


async def test_aclose_closes_only_its_own_client(keys: tuple[str, str]) -> None:
    own = VonageProvider(sender=SENDER, application_id=APP_ID, private_key=keys[0])
    await own.aclose()
    assert own._http.is_closed

    shared = httpx.AsyncClient()
    borrowed = VonageProvider(sender=SENDER, api_key=API_KEY, api_secret=API_SECRET, http=shared)
    await borrowed.aclose()
    assert not shared.is_closed
    await shared.aclose()


async def test_given_client_is_used(standin: VonageStandIn, base_url: str) -> None:
    async with httpx.AsyncClient() as shared:
        provider = VonageProvider(
            sender=SENDER, base_url=base_url + "/v1/", api_key=API_KEY, api_secret=API_SECRET, http=shared
        )
        assert provider.url == base_url + "/v1/messages"
        assert (await provider.send(template())).outcome is Outcome.ACCEPTED
    assert standin.accepted[0].auth == "basic"


# --- reading answers that the stand-in does not produce ------------------------------------------------


def _response(status: int, content: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=content, headers=headers)


def test_non_json_error_bodies_are_not_echoed() -> None:
    result = classify_response(_response(502, b"<html>Bad gateway</html>"))
    assert result == SendResult.retry("http_502", "HTTP 502 Bad Gateway")
    assert classify_response(_response(504)) == SendResult.retry("http_504", "HTTP 504 Gateway Timeout")


def test_retry_after_as_http_date_and_garbage() -> None:
    future = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"})
    assert (classify_response(future).retry_after or 0) > 1e9
    past = httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert classify_response(past).retry_after == 0.0
    assert classify_response(httpx.Response(429, headers={"Retry-After": "soon"})).retry_after is None
    assert classify_response(httpx.Response(429)).retry_after is None


def test_invalid_parameters_are_in_the_detail() -> None:
    body = (
        b'{"type":"https://developer.vonage.com/api-errors/messages#1150","title":"Invalid params",'
        b'"detail":"The value of one or more parameters is invalid.","instance":"bf0c",'
        b'"invalid_parameters":[{"name":"whatsapp.locale","reason":"is required."}]}'
    )
    assert classify_response(_response(422, body)) == SendResult.failed(
        "1150",
        "Invalid params: The value of one or more parameters is invalid. (whatsapp.locale: is required.)",
    )


# --- media, read receipts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "caption", "filename", "expected"),
    [
        ("image", "Your ticket", None, {"image": {"url": MEDIA_LINK, "caption": "Your ticket"}}),
        ("video", "", None, {"video": {"url": MEDIA_LINK}}),
        ("audio", "not sent", None, {"audio": {"url": MEDIA_LINK}}),
        (
            "document",
            "Invoice",
            "invoice.pdf",
            {"file": {"url": MEDIA_LINK, "caption": "Invoice", "name": "invoice.pdf"}},
        ),
        ("sticker", None, None, {"sticker": {"url": MEDIA_LINK}}),
    ],
)
async def test_media_is_sent_by_link_as_the_spec_says(
    standin: VonageStandIn,
    jwt_provider: VonageProvider,
    kind: str,
    caption: str | None,
    filename: str | None,
    expected: dict[str, Any],
) -> None:
    message = OutboundMessage(
        client_ref="m1", to="+447700900123", text=caption, media=OutboundMedia(kind, MEDIA_LINK, filename)
    )
    result = await jwt_provider.send(message)
    assert result.outcome is Outcome.ACCEPTED, result
    [sent] = standin.requests
    assert sent.errors == [] and sent.status == 202
    [vonage_type] = expected
    assert sent.body["message_type"] == vonage_type
    assert {vonage_type: sent.body[vonage_type]} == expected
    vonage_send_validator().check(sent.body)


async def test_fetch_media_sends_the_application_jwt(
    standin: VonageStandIn, jwt_provider: VonageProvider, base_url: str
) -> None:
    standin.media["1b456509-974c-458b-aafa-45fc48a4d976"] = (b"\x89PNG fake", "image/png")
    url = f"{base_url}/v3/media/1b456509-974c-458b-aafa-45fc48a4d976"
    content, mime = await jwt_provider.fetch_media(MediaRef(ref=url))
    assert (content, mime) == (b"\x89PNG fake", "image/png")
    [request] = standin.requests
    assert (request.method, request.path, request.auth, request.status) == (
        "GET",
        "/v3/media/1b456509-974c-458b-aafa-45fc48a4d976",
        "jwt",
        200,
    )
    assert request.claims is not None and request.claims["application_id"] == APP_ID
    # A MIME type stated with the message wins over the answer's.
    assert (await jwt_provider.fetch_media(MediaRef(ref=url, mime_type="image/webp")))[1] == "image/webp"


async def test_fetch_media_errors(
    standin: VonageStandIn, jwt_provider: VonageProvider, base_url: str
) -> None:
    with pytest.raises(ProviderApiError) as gone:
        await jwt_provider.fetch_media(MediaRef(ref=f"{base_url}/v3/media/expired"))
    assert gone.value.status == 404 and not gone.value.refused_credentials
    for foreign in (
        "https://example.com/v3/media/x",
        "http://api.nexmo.com/v3/media/x",
        "file:///etc/passwd",
    ):
        with pytest.raises(ProviderApiError, match="not on Vonage's hosts"):
            await jwt_provider.fetch_media(MediaRef(ref=foreign))
    assert len(standin.requests) == 1  # the foreign URLs were never asked for
    provider = VonageProvider(sender=SENDER, base_url=base_url, api_key="wrong", api_secret="wrong")
    standin.media["m"] = (b"x", "image/png")
    with pytest.raises(ProviderApiError) as refused:
        await provider.fetch_media(MediaRef(ref=f"{base_url}/v3/media/m"))
    assert refused.value.status == 401 and refused.value.refused_credentials
    await provider.aclose()


async def test_fetch_media_is_bounded(standin: VonageStandIn, base_url: str) -> None:
    standin.media["big"] = (b"x" * 5000, "video/mp4")
    async with httpx.AsyncClient() as http:
        assert await download(http, f"{base_url}/v3/media/big", {"Authorization": "Basic " + BASIC}) == (
            b"x" * 5000,
            "video/mp4",
        )
        with pytest.raises(ProviderApiError, match="more than 4999"):
            await download(http, f"{base_url}/v3/media/big", {"Authorization": "Basic " + BASIC}, limit=4999)


async def test_mark_read_patches_the_message(
    standin: VonageStandIn, jwt_provider: VonageProvider, basic_provider: VonageProvider
) -> None:
    inbound = str(uuid.uuid4())
    assert await jwt_provider.mark_read(inbound) is True
    [request] = standin.requests
    assert (request.method, request.path, request.auth, request.status) == (
        "PATCH",
        f"/v1/messages/{inbound}",
        "jwt",
        202,
    )
    assert request.body == {"status": "read"} and request.errors == []
    standin.update_answers.append(problem(1150))
    assert await jwt_provider.mark_read(inbound) is False  # refused: False, never raised
    assert await basic_provider.mark_read(inbound) is False  # the spec takes a JWT only
    assert await jwt_provider.mark_read("not/a/uuid") is False
    assert len(standin.requests) == 3


async def test_mark_read_without_an_answer_is_false(keys: tuple[str, str]) -> None:
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    provider = VonageProvider(
        sender=SENDER, base_url=f"http://127.0.0.1:{port}", application_id=APP_ID, private_key=keys[0]
    )
    assert await provider.mark_read(str(uuid.uuid4())) is False
    await provider.aclose()
