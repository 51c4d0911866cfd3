"""The recipe for adding a provider, proved: a third provider written in this module alone, registered, and
used by the real app with nothing else changed. It is shaped like 360dialog's WhatsApp API, which follows
Meta's Cloud API: Meta's message bodies posted to ``{base_url}/messages`` with a ``D360-API-KEY`` header,
Meta's webhook envelope, and webhooks that carry a shared token instead of a signature. A loopback
stand-in plays the provider; the app saves the integration, documents it, sends a campaign through it and
applies its status webhooks."""

from __future__ import annotations

import hmac
import itertools
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import basic, with_public_url
from tests.helpers import insert_profiles, phone, refused
from tests.standins.meta import envelope, status_change
from tidings.accounts.service import NewAccount
from tidings.config import Settings
from tidings.db import Database
from tidings.providers import meta, registry
from tidings.providers.base import (
    OutboundMessage,
    Provider,
    SendResult,
    WebhookError,
    WebhookEvent,
    json_object,
    transport_failure,
)
from tidings.providers.plugin import (
    Capabilities,
    Deployment,
    ProviderSecrets,
    ProviderType,
    SenderSettings,
    shaped,
)
from tidings.server import bind, serving

# --- the provider: everything Tidings needs to know about it -------------------------------------------


class DialogSettings(SenderSettings):
    channel_id: str = shaped(r"\d{1,20}", "the channel's id (digits)", description="The WhatsApp channel.")
    base_url: str = Field("https://waba-v2.360dialog.io", description="The API host.")


class DialogSecrets(ProviderSecrets):
    api_key: str = Field("", description="The channel's API key (D360-API-KEY).")
    webhook_token: str = Field("", description="The token its webhooks carry (X-Webhook-Token).")


class DialogProvider(Provider):
    kind = "360dialog"

    def __init__(self, base_url: str, api_key: str, http: httpx.AsyncClient | None) -> None:
        self.url = f"{base_url}/messages"
        self.api_key = api_key
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=15)

    async def send(self, message: OutboundMessage) -> SendResult:
        body = meta.build_message_body(message)  # Meta's shapes: 360dialog passes them on
        try:
            response = await self._http.post(self.url, json=body, headers={"D360-API-KEY": self.api_key})
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        if response.is_success:
            return SendResult.accepted(response.json()["messages"][0]["id"])
        return meta.classify_response(response)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()


class Dialog(ProviderType[DialogSettings, DialogSecrets]):
    kind = "360dialog"
    title = "360dialog"
    settings_model = DialogSettings
    secrets_model = DialogSecrets
    default_rate = 50.0
    capabilities = Capabilities(read_receipts=True)
    hosts = frozenset({"waba-v2.360dialog.io"})
    sender_field = "channel_id"

    def check(self, settings: DialogSettings, secrets: DialogSecrets) -> None:
        for name in ("api_key", "webhook_token"):
            if not getattr(secrets, name):
                raise ValueError(f"360dialog: secrets.{name} is required")

    def build(self, settings: DialogSettings, secrets: DialogSecrets, deployment: Deployment) -> Provider:
        return DialogProvider(settings.base_url, secrets.api_key, deployment.http)

    def read_webhook(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        settings: DialogSettings,
        secrets: DialogSecrets,
    ) -> list[WebhookEvent]:
        token = headers.get("x-webhook-token", "")
        if not hmac.compare_digest(token.encode(), secrets.webhook_token.encode()):
            raise WebhookError(401, "the webhook does not carry the channel's token")
        return meta.parse_webhook(json_object(body))


# --- a loopback stand-in for its API -------------------------------------------------------------------


class DialogStandIn:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (wamid, body)
        self.refused = 0
        self._ids = itertools.count(1)

    def app(self) -> Starlette:
        async def messages(request: Request) -> JSONResponse:
            if request.headers.get("d360-api-key") != self.api_key:
                self.refused += 1
                return JSONResponse({"error": {"code": 190, "message": "bad key"}}, status_code=401)
            wamid = f"wamid.d360-{next(self._ids)}"
            self.sent.append((wamid, await request.json()))
            return JSONResponse({"messages": [{"id": wamid}]})

        return Starlette(routes=[Route("/messages", messages, methods=["POST"])])


@pytest.fixture
def live_with_dialog(settings: Settings, db: Database) -> Iterator[tuple[str, FastAPI]]:
    """The real server (with its worker) made while the third provider is registered."""
    from tidings.app import asgi_app, create_app

    with registry.registered(Dialog()):
        sock = bind()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(with_public_url(settings, url), db, run_worker=True)
        with serving(asgi_app(app), sock):
            yield url, app


def test_a_third_provider_is_one_module(
    live_with_dialog: tuple[str, FastAPI], db: Database, account: NewAccount
) -> None:
    url, _ = live_with_dialog
    auth = basic(account)
    standin = DialogStandIn(api_key="d360-key")
    insert_profiles(db, account.account_id, [{"identity": f"u{i}", "phone": phone(i)} for i in range(6)])
    with serving(standin.app(), bind()) as base_url, httpx.Client(base_url=url, timeout=30) as http:
        # The API documents it: its settings and secrets in the PUT body, its webhook route.
        document = http.get("/openapi.json").json()
        assert {"DialogSettings", "DialogSecrets"} <= set(document["components"]["schemas"])
        assert "/webhooks/360dialog/{account_id}" in document["paths"]

        integration = {
            "kind": "360dialog",
            "settings": {"channel_id": "4711", "base_url": base_url},
            "secrets": {"api_key": "d360-key"},
        }
        missing = http.put("/api/v1/integrations/whatsapp", headers=auth, json=integration)
        assert "webhook_token" in refused(missing, 422, "invalid_integration")
        untrusted = {**integration, "settings": {"channel_id": "4711", "base_url": "https://evil.example"}}
        refused(
            http.put("/api/v1/integrations/whatsapp", headers=auth, json=untrusted), 422, "untrusted_base_url"
        )
        integration["secrets"] = {"api_key": "d360-key", "webhook_token": "hook-token"}
        saved = http.put("/api/v1/integrations/whatsapp", headers=auth, json=integration)
        assert saved.status_code == 200, saved.text
        shown = saved.json()
        assert shown["rate_limit"] == 50 and set(shown["secrets"]) == {"api_key", "webhook_token"}
        assert shown["webhook_urls"] == {"callback": f"{url}/webhooks/360dialog/{account.account_id}"}

        # A campaign goes out through it.
        template = http.post(
            "/api/v1/templates",
            headers=auth,
            json={"name": "shop:hello", "category": "MARKETING", "body": "Hi {{1}}"},
        )
        assert template.status_code == 201, template.text
        created = http.post(
            "/api/v1/campaigns",
            headers=auth,
            json={"name": "hello", "template_id": template.json()["id"], "variables": ["friend"]},
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        deadline = time.monotonic() + 60
        while http.get(f"/api/v1/campaigns/{campaign_id}", headers=auth).json()["state"] != "completed":
            assert time.monotonic() < deadline, "the campaign did not finish"
            time.sleep(0.05)
        assert len(standin.sent) == 6 and standin.refused == 0
        _, body = standin.sent[0]
        assert body["type"] == "template" and body["template"]["name"] == "hello"
        assert body["template"]["components"] == [
            {"type": "body", "parameters": [{"type": "text", "text": "friend"}]}
        ]

        # Its status webhooks are verified and applied.
        hook = f"/webhooks/360dialog/{account.account_id}"
        for wamid, sent in standin.sent:
            for status in ("delivered", "read"):
                payload = json.dumps(envelope(status_change(wamid, status, recipient=sent["to"]))).encode()
                answer = http.post(hook, content=payload, headers={"X-Webhook-Token": "hook-token"})
                assert answer.status_code == 200 and answer.json()["status_applied"] == 1, answer.text
        forged = json.dumps(envelope(status_change(standin.sent[0][0], "failed", recipient="1"))).encode()
        assert http.post(hook, content=forged, headers={"X-Webhook-Token": "guess"}).status_code == 401
        stats = http.get(f"/api/v1/campaigns/{campaign_id}/stats", headers=auth).json()
        assert stats["sent"] == 6 and stats["delivered"] == 6 and stats["read"] == 6 and stats["errors"] == 0


@pytest.mark.parametrize("plugin", registry.plugins(), ids=lambda p: p.kind)
def test_every_capability_a_provider_claims_is_implemented(plugin: ProviderType[Any, Any]) -> None:
    own = type(plugin).__dict__
    assert plugin.capabilities.list_templates == ("list_templates" in own)
    assert plugin.capabilities.submit_templates == ("submit_templates" in own)
    assert plugin.handshake == ("answer_handshake" in own)
    assert bool(plugin.hosts) == ("base_url" in plugin.settings_model.model_fields)
    assert all(not route or route.isidentifier() for route in plugin.webhook_routes)
