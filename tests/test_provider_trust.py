"""Trust at the provider boundary (issue 9, items 4, 5, 11, 12 and 13), on SQLite and PostgreSQL, against
the provider stand-ins on loopback: credentials go only to the provider's own hosts, ids have its shape,
a key that cannot work is refused when saved, credentials that stop working fail the send with a reason
and pause the campaign, transport errors are classified by whether the request left, a 2xx without an id
is settled by its status webhook, Vonage webhook tokens have an age limit and a route, Meta template
status updates match names exactly, and template sync answers provider errors in JSON."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.conftest import basic
from tests.helpers import phone, refused, running_campaign
from tests.standins.meta import MetaStandIn, Scripted, envelope, meta_template, signed, status_change
from tests.standins.vonage import VonageStandIn, accepted, rsa_key_pair
from tidings.accounts import integrations
from tidings.accounts.service import NewAccount, get_integration
from tidings.accounts.testsend import send_test_message
from tidings.campaigns.models import Campaign
from tidings.config import Settings, parse_provider_hosts
from tidings.conversations.models import InboundMessage
from tidings.db import Database
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.models import Message
from tidings.delivery.outcomes import UNCERTAIN_CODES
from tidings.errors import ApiError
from tidings.providers import registry
from tidings.providers.base import OutboundMessage, Outcome, SendResult, WebhookError, transport_failure
from tidings.providers.meta import classify_response as meta_classify
from tidings.providers.pool import ProviderPool, UnusableProvider
from tidings.providers.trust import UntrustedUrl, check_base_url
from tidings.providers.vonage import WEBHOOK_MAX_AGE, VonageProvider, sign_webhook, verify_webhook
from tidings.providers.vonage import classify_response as vonage_classify
from tidings.secrets import SecretBox
from tidings.server import bind
from tidings.templates.models import Template
from tidings.templates.service import create_template

URL = "/api/v1/integrations/whatsapp"
APP_ID = "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"
SENDER = "447700900000"
SIGNATURE_SECRET = "signature-secret-0123456789abcdef"
API_KEY, API_SECRET = "abcd1234", "api-secret-5678"
APP_SECRET = "meta-app-secret"


def _dead_port() -> int:
    sock = bind()
    port = int(sock.getsockname()[1])
    sock.close()  # nothing listens there now: connection refused
    return port


def _vonage(base_url: str, **settings: Any) -> dict[str, Any]:
    return {
        "kind": "vonage",
        "settings": {"sender": SENDER, "base_url": base_url, **settings},
        "secrets": {"api_key": API_KEY, "api_secret": API_SECRET, "signature_secret": SIGNATURE_SECRET},
    }


def _meta(base_url: str, **settings: Any) -> dict[str, Any]:
    return {
        "kind": "meta",
        "settings": {"phone_number_id": "106540352242922", "waba_id": "419561257915477", "base_url": base_url}
        | settings,
        "secrets": {"access_token": "meta-test-token", "app_secret": APP_SECRET},
    }


def _save(db: Database, box: SecretBox, account: NewAccount, body: dict[str, Any]) -> None:
    with db.session() as session:
        integrations.configure(
            session,
            box,
            account.account_id,
            kind=body["kind"],
            settings=body["settings"],
            secrets=body["secrets"],
            rate_limit=None,
            extra_hosts=("127.0.0.1",),
        )


def _campaign(db: Database, account: NewAccount, n: int) -> int:
    return running_campaign(db, account.account_id, [phone(i) for i in range(n)])


def _rows(db: Database, campaign_id: int) -> list[Message]:
    with db.session() as session:
        rows = list(session.scalars(select(Message).where(Message.campaign_id == campaign_id)))
        session.expunge_all()
        return rows


def _campaign_row(db: Database, campaign_id: int) -> Campaign:
    with db.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        session.expunge(campaign)
        return campaign


def _paused_and_settled(db: Database, campaign_id: int) -> bool:
    """The campaign paused itself and none of its rows is in a worker's hands: each failed or waits."""
    states = {r.state for r in _rows(db, campaign_id)}
    return _campaign_row(db, campaign_id).state == "paused" and states <= {"failed", "queued"}


def _dispatch_until(
    db: Database, settings: Settings, box: SecretBox, done: Callable[[], bool], timeout: float = 30
) -> None:
    async def run() -> None:
        dispatcher = Dispatcher(db, settings, ProviderPool(db, settings, box))
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        deadline = time.monotonic() + timeout
        try:
            while not await asyncio.to_thread(done):
                assert time.monotonic() < deadline, "the dispatcher never got there"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            await dispatcher.pool.aclose()

    asyncio.run(run())


@pytest.fixture
def fast(settings: Settings) -> Settings:
    """Retries far in the future (a requeued row stays queued), and the error-rate brake out of reach."""
    return settings.model_copy(update={"retry_base": 600.0, "retry_cap": 600.0, "pause_min_attempts": 10_000})


@pytest.fixture
def meta_standin() -> Iterator[MetaStandIn]:
    standin = MetaStandIn(templates=[meta_template("launch", "Hi {{1}}")])
    with standin.serve():
        yield standin


# --- item 11: credentials only to the provider's hosts, ids in the provider's shape ---------------------


@pytest.mark.parametrize(
    "body",
    [
        _vonage("https://evil.example.com"),
        _vonage("http://api.nexmo.com"),  # not https
        _vonage("https://api.nexmo.com@evil.example.com"),
        _vonage("https://api.nexmo.com.evil.example.com"),
        _vonage("https://api.nexmo.com:8443"),
        _vonage("https://api.nexmo.com/v1/../../admin"),
        _vonage("ftp://api.nexmo.com"),
        _meta("https://graph.facebook.com.evil.example.com"),
        _meta("https://evil.example.com"),
        _meta("http://169.254.169.254"),
        _meta("https://graph.facebook.com/latest/evil?x=1"),
    ],
    ids=lambda body: f"{body['kind']}:{body['settings']['base_url']}",
)
def test_a_base_url_off_the_providers_hosts_is_refused(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    message = refused(client.put(URL, headers=auth, json=body), 422, "untrusted_base_url")
    assert "TIDINGS_EXTRA_PROVIDER_HOSTS" in message or "path" in message or "https://host" in message
    assert client.get(URL, headers=auth).json()["kind"] == "sandbox"  # nothing saved


@pytest.mark.parametrize(
    "body",
    [
        _vonage("https://api.nexmo.com"),
        _vonage("https://api-eu.vonage.com/"),
        _vonage("https://messages-sandbox.nexmo.com/v1"),
        _meta("https://graph.facebook.com"),
    ],
    ids=lambda body: f"{body['kind']}:{body['settings']['base_url']}",
)
def test_the_providers_own_hosts_are_accepted(
    client: TestClient, auth: dict[str, str], body: dict[str, Any]
) -> None:
    saved = client.put(URL, headers=auth, json=body)
    assert saved.status_code == 200, saved.text
    assert saved.json()["settings"]["base_url"] == body["settings"]["base_url"].rstrip("/")


def test_a_loopback_stand_in_needs_an_extra_host(
    db: Database, settings: Settings, account: NewAccount
) -> None:
    """The tests' loopback stand-ins pass only because the suite lists 127.0.0.1 as an extra host."""
    from tidings.app import asgi_app, create_app

    port = _dead_port()
    for extra, status in (((), 422), (("127.0.0.1:1",), 422), ((f"127.0.0.1:{port}",), 200)):
        app = create_app(settings.model_copy(update={"extra_provider_hosts": extra}), db)
        with TestClient(asgi_app(app)) as client:
            answer = client.put(URL, headers=basic(account), json=_meta(f"http://127.0.0.1:{port}"))
        assert answer.status_code == status, (extra, answer.text)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_vonage("https://api.nexmo.com", sender="44 7700/900000"), "sender"),
        (_vonage("https://api.nexmo.com", application_id="app-1"), "application_id"),
        (_meta("https://graph.facebook.com", phone_number_id="1/../../me"), "phone_number_id"),
        (_meta("https://graph.facebook.com", waba_id="419561257915477?fields=x"), "waba_id"),
        (_meta("https://graph.facebook.com", api_version="v23.0/../x"), "api_version"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["kind"],
)
def test_ids_must_have_the_providers_shape(
    client: TestClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    if field == "application_id":
        body = {**body, "secrets": {**body["secrets"], "private_key": rsa_key_pair()[0]}}
    assert field in refused(client.put(URL, headers=auth, json=body), 422, "invalid_integration")


def test_extra_provider_hosts_parse() -> None:
    assert parse_provider_hosts(" 127.0.0.1:8080, API.Example.com ,,") == (
        "127.0.0.1:8080",
        "api.example.com",
    )
    for bad in ("http://x.example.com", "x.example.com:port", "x:99999", "user@x.example.com", ":80"):
        with pytest.raises(ValueError, match="TIDINGS_EXTRA_PROVIDER_HOSTS"):
            parse_provider_hosts(bad)
    meta = registry.plugin("meta")
    own = {"hosts": meta.hosts, "paths": meta.base_paths}
    assert check_base_url("meta", "http://api.example.com:8080", ("api.example.com",), **own)
    assert check_base_url("meta", "http://api.example.com:8080/", ("api.example.com:8080",), **own)
    with pytest.raises(UntrustedUrl):
        check_base_url("meta", "http://api.example.com:8081", ("api.example.com:8080",), **own)


def test_the_token_is_never_sent_to_a_host_that_is_not_the_providers(
    db: Database, box: SecretBox, account: NewAccount, fast: Settings, meta_standin: MetaStandIn
) -> None:
    """A row saved before the check (or an extra host since removed) is checked again where the request is
    made: the send fails with a reason and nothing reaches that host."""
    campaign_id = _campaign(db, account, 3)
    _save(db, box, account, _meta(meta_standin.base_url or ""))
    strict = fast.model_copy(update={"extra_provider_hosts": ()})
    pool = ProviderPool(db, strict, box)
    assert isinstance(pool.get(account.account_id), UnusableProvider)
    asyncio.run(pool.aclose())
    _dispatch_until(db, strict, box, lambda: _paused_and_settled(db, campaign_id))
    assert meta_standin.requests == []
    rows = [r for r in _rows(db, campaign_id) if r.state == "failed"]
    assert rows and {r.reason for r in rows} == {"meta:integration_invalid"}
    assert "not one of them" in (rows[0].error_detail or "")
    campaign = _campaign_row(db, campaign_id)
    assert campaign.state == "paused" and "PUT /api/v1/integrations/whatsapp" in (campaign.note or "")


def test_a_providers_error_body_is_summarized_not_echoed() -> None:
    body = "<html>" + "x" * 5000 + "</html>"
    for classify in (meta_classify, vonage_classify):
        result = classify(httpx.Response(502, text=body))
        assert result.error_detail == "HTTP 502 Bad Gateway"
        long = {"error": {"code": 100, "message": "m" * 5000}, "title": "t" * 5000, "detail": "d" * 5000}
        detail = classify(httpx.Response(400, json=long)).error_detail or ""
        assert 0 < len(detail) <= 300


# --- item 4: credentials that cannot work --------------------------------------------------------------


def test_a_private_key_that_is_not_a_pem_is_refused_at_put(client: TestClient, auth: dict[str, str]) -> None:
    body = _vonage("https://api.nexmo.com", application_id=APP_ID)
    garbage = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----"
    for key in (garbage, "just some text"):
        answer = client.put(
            URL, headers=auth, json={**body, "secrets": {**body["secrets"], "private_key": key}}
        )
        assert "private_key" in refused(answer, 422, "invalid_credentials")
    assert client.get(URL, headers=auth).json()["kind"] == "sandbox"
    good = {**body, "secrets": {**body["secrets"], "private_key": rsa_key_pair()[0]}}
    assert client.put(URL, headers=auth, json=good).status_code == 200


@pytest.mark.parametrize("kind", ["meta", "vonage"])
def test_refused_credentials_fail_the_send_and_pause_the_campaign_at_once(
    db: Database, box: SecretBox, account: NewAccount, fast: Settings, client: TestClient, kind: str
) -> None:
    campaign_id = _campaign(db, account, 5)
    if kind == "meta":
        standin: Any = MetaStandIn(access_token="the-right-token")
        reason = "meta:190"
    else:
        standin = VonageStandIn(api_key=API_KEY, api_secret="the-right-secret")
        reason = "vonage:unauthorized"
    with standin.serve() as base_url:
        _save(db, box, account, _meta(base_url) if kind == "meta" else _vonage(base_url))

        _dispatch_until(db, fast, box, lambda: _paused_and_settled(db, campaign_id))
    campaign = _campaign_row(db, campaign_id)
    assert reason in (campaign.note or "") and "PUT /api/v1/integrations/whatsapp" in (campaign.note or "")
    failed = [r for r in _rows(db, campaign_id) if r.state == "failed"]
    assert failed and {r.reason for r in failed} == {reason}
    stats = client.get(f"/api/v1/campaigns/{campaign_id}/stats", headers=basic(account))
    assert stats.status_code == 200, stats.text
    assert stats.json()["errors_by_reason"][reason] == len(failed)


def test_secrets_sealed_with_another_key_fail_with_a_reason_not_a_loop(
    db: Database, box: SecretBox, account: NewAccount, fast: Settings, meta_standin: MetaStandIn
) -> None:
    """TIDINGS_SECRET_KEY changed: the saved secrets cannot be opened. Before, building the provider raised
    on every claim, and the rows were claimed, leased and requeued forever without an error."""
    campaign_id = _campaign(db, account, 3)
    _save(db, box, account, _meta(meta_standin.base_url or ""))
    other = SecretBox(Fernet.generate_key())
    _dispatch_until(db, fast, other, lambda: _paused_and_settled(db, campaign_id))
    failed = [r for r in _rows(db, campaign_id) if r.state == "failed"]
    assert failed and {r.reason for r in failed} == {"meta:credentials_unreadable"}
    campaign = _campaign_row(db, campaign_id)
    assert campaign.state == "paused" and "TIDINGS_SECRET_KEY" in (campaign.note or "")
    assert meta_standin.requests == []
    # Reading the integration and a test send say so in JSON, rather than a plain-text 500.
    with db.session() as session:
        shown = integrations.describe(get_integration(session, account.account_id), other, "http://x")
    assert "TIDINGS_SECRET_KEY" in shown["secrets"]["unreadable"]
    with pytest.raises(ApiError) as caught:
        asyncio.run(send_test_message(db, other, fast, account.account_id, to=phone(0)))
    assert (caught.value.status, caught.value.code) == (409, "credentials_unreadable")
    assert meta_standin.requests == []
    # The way out: save the secrets again under the new key.
    with db.session() as session:
        integrations.configure(
            session,
            other,
            account.account_id,
            kind="meta",
            settings=_meta(meta_standin.base_url or "")["settings"],
            secrets=_meta("")["secrets"],
            extra_hosts=("127.0.0.1",),
        )
    assert not isinstance(ProviderPool(db, fast, other).get(account.account_id), UnusableProvider)


# --- item 5: transport errors, and a 2xx without an id ---------------------------------------------------


@pytest.mark.parametrize("kind", ["meta", "vonage"])
def test_a_refused_connection_is_retried_not_reconciled(
    db: Database, box: SecretBox, account: NewAccount, fast: Settings, kind: str
) -> None:
    """Nothing listens on the port: the request never left, so the row is queued again with backoff (not
    left ``sending`` for reconciliation as an unknown outcome)."""
    campaign_id = _campaign(db, account, 3)
    base_url = f"http://127.0.0.1:{_dead_port()}"
    _save(db, box, account, _meta(base_url) if kind == "meta" else _vonage(base_url))

    def requeued() -> bool:
        return all(r.state == "queued" and r.attempts >= 1 for r in _rows(db, campaign_id))

    _dispatch_until(db, fast, box, requeued)
    for row in _rows(db, campaign_id):
        assert row.next_attempt_at is not None and row.dispatched_at is None
        assert "ConnectError" in (row.error_detail or "")
    assert _campaign_row(db, campaign_id).state == "running"


def test_only_an_answer_that_may_hide_an_acceptance_is_uncertain() -> None:
    request = httpx.Request("POST", "https://graph.facebook.com/v23.0/1/messages")
    never_left = [
        httpx.ConnectError("refused", request=request),
        httpx.ConnectTimeout("slow", request=request),
        httpx.PoolTimeout("busy", request=request),
        httpx.ConnectError("[Errno -2] Name or service not known", request=request),
    ]
    may_have_left = [
        httpx.ReadTimeout("slow", request=request),
        httpx.WriteTimeout("slow", request=request),
        httpx.RemoteProtocolError("closed", request=request),
        httpx.ReadError("reset", request=request),
    ]
    for exc in never_left:
        result = transport_failure(exc)
        assert result.outcome is Outcome.RETRY and result.error_code not in UNCERTAIN_CODES, exc
    for exc in may_have_left:
        result = transport_failure(exc)
        assert result.outcome is Outcome.RETRY and result.error_code in UNCERTAIN_CODES, exc


def test_a_read_time_out_stays_uncertain_on_vonage() -> None:
    """The stand-in got the request and answers late: Vonage may have taken it, so it is reconciled."""
    private_pem, public_pem = rsa_key_pair()
    standin = VonageStandIn(application_id=APP_ID, public_key=public_pem)
    standin.answer_next(accepted(delay=1.0))

    async def send(base_url: str) -> SendResult:
        provider = VonageProvider(
            sender=SENDER, base_url=base_url, application_id=APP_ID, private_key=private_pem, timeout=0.2
        )
        try:
            return await provider.send(OutboundMessage(client_ref="1", to="+447700900001", text="hi"))
        finally:
            await provider.aclose()

    with standin.serve() as base_url:
        result = asyncio.run(send(base_url))
    assert len(standin.requests) == 1
    assert result.outcome is Outcome.RETRY and result.error_code in UNCERTAIN_CODES


def test_a_2xx_without_a_message_id_is_sent_and_its_status_webhook_settles_it(
    db: Database, box: SecretBox, account: NewAccount, fast: Settings, client: TestClient
) -> None:
    campaign_id = _campaign(db, account, 1)
    standin = MetaStandIn()
    standin.answer_next(Scripted(200, {"messaging_product": "whatsapp"}))
    with standin.serve() as base_url:
        _save(db, box, account, _meta(base_url))
        _dispatch_until(db, fast, box, lambda: all(r.state == "sent" for r in _rows(db, campaign_id)))
    [row] = _rows(db, campaign_id)
    assert row.provider_message_id is None and row.attempts == 1
    body, headers = signed(
        envelope(status_change("wamid.late", "delivered", recipient=phone(0), client_ref=str(row.id))),
        APP_SECRET,
    )
    answer = client.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    [row] = _rows(db, campaign_id)
    assert row.state == "delivered" and row.provider_message_id == "wamid.late"


# --- item 13: Vonage webhook tokens and routes, Meta template names ------------------------------------


def _vonage_account(client: TestClient, auth: dict[str, str]) -> None:
    saved = client.put(URL, headers=auth, json=_vonage("https://api.nexmo.com"))
    assert saved.status_code == 200, saved.text


def _token(body: bytes, iat: int) -> str:
    claims = {
        "iat": iat,
        "jti": str(uuid.uuid4()),
        "iss": "Vonage",
        "payload_hash": hashlib.sha256(body).hexdigest(),
        "api_key": API_KEY,
    }
    return "Bearer " + jwt.encode(claims, SIGNATURE_SECRET, algorithm="HS256")


def _status(message_uuid: str = "aaaaaaaa-bbbb-4ccc-8ddd-000000000001", **extra: Any) -> dict[str, Any]:
    return {
        "message_uuid": message_uuid,
        "to": "919810000000",
        "from": SENDER,
        "timestamp": "2025-02-03T12:14:25Z",
        "status": "delivered",
        "channel": "whatsapp",
        "client_ref": "1",
        **extra,
    }


def _inbound() -> dict[str, Any]:
    return {
        "channel": "whatsapp",
        "message_uuid": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab",
        "to": SENDER,
        "from": "919810000000",
        "timestamp": "2025-02-03T12:14:25Z",
        "message_type": "text",
        "text": "Hello",
    }


def _inbound_count(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(InboundMessage)) or 0)


def test_a_year_old_vonage_token_is_refused(
    client: TestClient, auth: dict[str, str], account: NewAccount, db: Database
) -> None:
    _vonage_account(client, auth)
    body = json.dumps(_inbound()).encode()
    url = f"/webhooks/vonage/{account.account_id}/inbound"
    year_ago = int(time.time()) - 365 * 24 * 3600
    answer = client.post(url, content=body, headers={"Authorization": _token(body, year_ago)})
    assert "36 h" in refused(answer, 401, "bad_signature")
    assert _inbound_count(db) == 0
    # A retry late in Vonage's 24-hour window still carries its first token: accepted.
    day_ago = int(time.time()) - 25 * 3600
    answer = client.post(url, content=body, headers={"Authorization": _token(body, day_ago)})
    assert answer.status_code == 200, answer.text
    assert _inbound_count(db) == 1


def test_the_vonage_token_age_limit() -> None:
    body = json.dumps(_status()).encode()
    now = time.time()
    verify_webhook({"authorization": _token(body, int(now) - WEBHOOK_MAX_AGE + 60)}, body, SIGNATURE_SECRET)
    with pytest.raises(WebhookError) as caught:
        verify_webhook(
            {"authorization": _token(body, int(now) - WEBHOOK_MAX_AGE - 60)}, body, SIGNATURE_SECRET
        )
    assert caught.value.status == 401
    no_iat = "Bearer " + jwt.encode(
        {"payload_hash": hashlib.sha256(body).hexdigest()}, SIGNATURE_SECRET, algorithm="HS256"
    )
    with pytest.raises(WebhookError):
        verify_webhook({"authorization": no_iat}, body, SIGNATURE_SECRET)
    assert 24 * 3600 < WEBHOOK_MAX_AGE <= 36 * 3600  # Vonage retries for 24 h


def test_a_status_callback_on_the_inbound_route_is_refused_and_changes_nothing(
    client: TestClient, auth: dict[str, str], account: NewAccount, db: Database
) -> None:
    _vonage_account(client, auth)
    status = json.dumps(_status()).encode()
    answer = client.post(
        f"/webhooks/vonage/{account.account_id}/inbound",
        content=status,
        headers={"Authorization": sign_webhook(status, SIGNATURE_SECRET, API_KEY)},
    )
    assert "status URL" in refused(answer, 400, "wrong_webhook_route")
    assert _inbound_count(db) == 0
    inbound = json.dumps(_inbound()).encode()
    answer = client.post(
        f"/webhooks/vonage/{account.account_id}/status",
        content=inbound,
        headers={"Authorization": sign_webhook(inbound, SIGNATURE_SECRET, API_KEY)},
    )
    assert "inbound URL" in refused(answer, 400, "wrong_webhook_route")
    assert _inbound_count(db) == 0


def test_a_meta_template_status_update_matches_the_name_exactly(
    client: TestClient, auth: dict[str, str], account: NewAccount, db: Database
) -> None:
    saved = client.put(URL, headers=auth, json=_meta("https://graph.facebook.com"))
    assert saved.status_code == 200, saved.text
    names = ["419561257915477:promo_1", "419561257915477:promoX1", "other:promo_12", "x:promo"]
    with db.session() as session:
        for name in names:
            create_template(session, account.account_id, name=name, body="Hi", category="MARKETING")

    def post(name: str) -> None:
        change = {
            "field": "message_template_status_update",
            "value": {"event": "PAUSED", "message_template_name": name, "message_template_language": "en"},
        }
        body, headers = signed(envelope(change), APP_SECRET)
        answer = client.post(f"/webhooks/meta/{account.account_id}", content=body, headers=headers)
        assert answer.status_code == 200, answer.text

    def statuses() -> dict[str, str]:
        with db.session() as session:
            rows = session.execute(
                select(Template.name, Template.status).where(Template.account_id == account.account_id)
            )
            return {name: status for name, status in rows}

    for pattern in ("%", "promo%", "promo_", "%1", "_romo_1"):
        post(pattern)
    assert set(statuses().values()) == {"APPROVED"}  # a wildcard touches nothing
    post("promo_1")
    assert statuses() == {
        "419561257915477:promo_1": "PAUSED",
        "419561257915477:promoX1": "APPROVED",
        "other:promo_12": "APPROVED",
        "x:promo": "APPROVED",
    }


# --- item 12: template sync keeps the error contract ----------------------------------------------------


def test_template_sync_answers_provider_errors_in_json(
    db: Database, box: SecretBox, account: NewAccount, client: TestClient, auth: dict[str, str]
) -> None:
    standin = MetaStandIn(access_token="the-right-token")
    with standin.serve() as base_url:
        _save(db, box, account, _meta(base_url))
        answer = client.post("/api/v1/templates/sync", headers=auth)
    message = refused(answer, 409, "provider_unauthorized")
    assert "190" in message and "fbtrace_id" not in message and "PUT /api/v1/integrations/whatsapp" in message

    _save(db, box, account, _meta(f"http://127.0.0.1:{_dead_port()}"))
    answer = client.post("/api/v1/templates/sync", headers=auth)
    assert "ConnectError" in refused(answer, 502, "provider_error")


def test_template_sync_answers_a_meta_server_error_in_json(
    db: Database, box: SecretBox, account: NewAccount, app: FastAPI, auth: dict[str, str]
) -> None:
    """A 500 from Meta: 502 in JSON with Meta's code and a one-line summary, never its whole body."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tidings.app import asgi_app
    from tidings.server import serving

    huge = "trace " * 2000

    async def templates(request: Request) -> JSONResponse:
        error = {"message": "An unknown error occurred", "code": 1, "error_data": {"details": huge}}
        return JSONResponse({"error": error}, status_code=500)

    graph = Starlette(routes=[Route("/v23.0/{waba}/message_templates", templates)])
    sock = bind()
    with serving(graph, sock) as base_url:
        _save(db, box, account, _meta(base_url))
        with TestClient(asgi_app(app)) as client:
            answer = client.post("/api/v1/templates/sync", headers=auth)
    message = refused(answer, 502, "provider_error")
    assert "Meta error 1" in message and len(message) < 400
