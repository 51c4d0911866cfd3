"""The built-in sandbox: a WhatsApp stand-in for trying Tidings without a provider account.

It accepts a send at once and answers with a message id, then plays what WhatsApp would do —
submitted, delivered, read, some failures, some replies — by calling Tidings' own webhook endpoints
over HTTP, in Vonage's payload shapes and signed as Vonage signs them (HS256 JWT with a payload hash),
so the real webhook path is exercised. Its rates and latency are settings; with a seed, what happens to
a message depends only on the seed, the number and our reference, whatever the order of sending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets as random_tokens
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field

from tidings import config
from tidings.providers.base import OutboundMessage, Provider, SendResult, WebhookEvent
from tidings.providers.plugin import (
    Capabilities,
    Deployment,
    ProviderSecrets,
    ProviderSettings,
    ProviderType,
    TemplateDraft,
)
from tidings.providers.vonage import read_signed_webhook, sign_webhook

log = logging.getLogger(__name__)

SANDBOX_NUMBER = "14157386102"
REPLIES = ("Thanks!", "What time does it start?", "Can I change my seat?", "👍", "See you there")
FAILURES = (("1300", "Not part of the provider network"), ("1330", "Delivery failed"))
WEBHOOK_CONNECTIONS = 16


class SandboxProvider(Provider):
    kind = "sandbox"

    def __init__(
        self,
        *,
        webhook_base: str,
        signature_secret: str,
        settings: config.SandboxSettings,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.webhook_base = webhook_base.rstrip("/")
        self.secret = signature_secret
        self.settings = settings
        # Its own small pool: a few kept-alive connections carry every webhook (httpx slows down a lot
        # when hundreds of requests queue over hundreds of connections).
        self._http = http or httpx.AsyncClient(
            timeout=15, limits=httpx.Limits(max_connections=WEBHOOK_CONNECTIONS)
        )
        self._own_http = http is None
        self._posting = asyncio.Semaphore(WEBHOOK_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()
        self.log: Counter[str] = Counter()  # what it reported: submitted, delivered, read, failed, replied

    @property
    def pending(self) -> int:
        """Messages whose story is still being played."""
        return len(self._tasks)

    def _rng(self, message: OutboundMessage) -> random.Random:
        if self.settings.seed is None:
            return random.Random()
        return random.Random(f"{self.settings.seed}:{message.to}:{message.client_ref}")

    async def send(self, message: OutboundMessage) -> SendResult:
        digits = message.to.removeprefix("+")
        if not (digits.isdigit() and 7 <= len(digits) <= 15):
            return SendResult.failed("1430", f"Invalid recipient {message.to!r}")
        if not message.template_name and not message.text:
            return SendResult.failed("1440", "Invalid message type: neither a template nor text")
        message_uuid = str(uuid.uuid4())
        task = asyncio.create_task(self._play(message_uuid, message, self._rng(message)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return SendResult.accepted(message_uuid)

    async def _pause(self, rng: random.Random) -> None:
        await asyncio.sleep(rng.uniform(self.settings.min_latency, self.settings.max_latency))

    async def _play(self, message_uuid: str, message: OutboundMessage, rng: random.Random) -> None:
        s = self.settings
        digits = message.to.removeprefix("+")

        def status(name: str, **extra: Any) -> dict[str, Any]:
            return {
                "message_uuid": message_uuid,
                "to": digits,
                "from": SANDBOX_NUMBER,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "status": name,
                "channel": "whatsapp",
                "client_ref": message.client_ref,
                **extra,
            }

        try:
            await self._pause(rng)
            await self._post("status", status("submitted"), "submitted")
            if rng.random() < s.failure_rate:
                code, detail = rng.choice(FAILURES)
                await self._pause(rng)
                error = {
                    "type": f"https://developer.vonage.com/api-errors/messages#{code}",
                    "title": code,
                    "detail": detail,
                    "instance": str(uuid.uuid4()),
                }
                await self._post("status", status("rejected", error=error), "failed")
                return
            if rng.random() >= s.delivery_rate:
                return
            await self._pause(rng)
            await self._post(
                "status", status("delivered", usage={"currency": "EUR", "price": "0"}), "delivered"
            )
            if rng.random() >= s.read_rate:
                return
            await self._pause(rng)
            await self._post("status", status("read"), "read")
            if rng.random() >= s.reply_rate:
                return
            await self._pause(rng)
            reply = {
                "channel": "whatsapp",
                "message_uuid": str(uuid.uuid4()),
                "to": SANDBOX_NUMBER,
                "from": digits,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "context_status": "available",
                "context": {"message_uuid": message_uuid, "message_from": SANDBOX_NUMBER},
                "profile": {"name": "Sandbox user"},
                "message_type": "text",
                "text": rng.choice(REPLIES),
            }
            await self._post("inbound", reply, "replied")
        except asyncio.CancelledError:
            raise
        except Exception:  # the sandbox must never take the worker down
            log.exception("sandbox: could not play message %s", message_uuid)

    async def _post(self, kind: str, payload: dict[str, Any], counted_as: str) -> None:
        """Deliver one webhook; like Vonage, retry on 429 and 5xx (and on connection errors)."""
        body = json.dumps(payload).encode()
        url = f"{self.webhook_base}/{kind}"
        for attempt in range(6):
            headers = {
                "Authorization": sign_webhook(body, self.secret, api_key="sandbox"),
                "Content-Type": "application/json",
            }
            try:
                async with self._posting:
                    response = await self._http.post(url, content=body, headers=headers)
                if response.status_code < 300:
                    self.log[counted_as] += 1
                    return
                if response.status_code != 429 and response.status_code < 500:
                    log.warning("sandbox: webhook %s refused with %s", url, response.status_code)
                    return
            except httpx.HTTPError as exc:
                log.debug("sandbox: webhook %s failed: %s", url, exc)
            await asyncio.sleep(0.2 * 2**attempt)
        log.warning("sandbox: gave up delivering a %s webhook to %s", kind, url)

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every message's story has been played."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        if self._own_http:
            await self._http.aclose()


# --- the plug-in ------------------------------------------------------------------------------------


class SandboxSettings(ProviderSettings):
    """The sandbox has no settings of its own: how it behaves is the deployment's (``TIDINGS_SANDBOX_*``)."""


class SandboxSecrets(ProviderSecrets):
    signature_secret: str = Field(
        "", description="Made by Tidings: the sandbox signs its webhooks with it. A value given is ignored."
    )


class Sandbox(ProviderType[SandboxSettings, SandboxSecrets]):
    """The built-in stand-in: Vonage's webhook shapes on the same two routes, its own signing secret,
    templates approved at the next sync, no rate limit."""

    kind = "sandbox"
    title = "the sandbox"
    settings_model = SandboxSettings
    secrets_model = SandboxSecrets
    capabilities = Capabilities(submit_templates=True, read_receipts=True)
    webhook_routes = ("status", "inbound")

    def complete(
        self, settings: SandboxSettings, secrets: dict[str, str], saved: Mapping[str, str]
    ) -> tuple[SandboxSettings, dict[str, str]]:
        # The sandbox signs its webhooks with a secret of our own, kept across saves.
        return settings, {
            "signature_secret": saved.get("signature_secret") or random_tokens.token_urlsafe(32)
        }

    def build(self, settings: SandboxSettings, secrets: SandboxSecrets, deployment: Deployment) -> Provider:
        return SandboxProvider(
            webhook_base=f"{deployment.app.public_url}/webhooks/{self.kind}/{deployment.account_id}",
            signature_secret=secrets.signature_secret,
            settings=deployment.app.sandbox,
        )

    def read_webhook(
        self,
        route: str,
        headers: Mapping[str, str],
        body: bytes,
        settings: SandboxSettings,
        secrets: SandboxSecrets,
    ) -> list[WebhookEvent]:
        return read_signed_webhook(route, headers, body, secrets.signature_secret)

    async def submit_templates(
        self,
        settings: SandboxSettings,
        secrets: SandboxSecrets,
        deployment: Deployment,
        drafts: Sequence[TemplateDraft],
    ) -> list[str]:
        """The sandbox plays the provider's review: it approves every template at once."""
        return ["APPROVED" for _ in drafts]
