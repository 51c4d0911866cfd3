"""One provider instance per account, built from its WhatsApp integration and rebuilt when it changes."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from tidings.accounts.service import get_integration
from tidings.config import Settings
from tidings.db import Database
from tidings.providers import registry
from tidings.providers.base import OutboundMessage, Provider, SendResult
from tidings.providers.plugin import Deployment
from tidings.secrets import SecretBox

log = logging.getLogger(__name__)

FIX_INTEGRATION = (
    "save the integration again with PUT /api/v1/integrations/whatsapp (secrets included), then resume the "
    "campaign"
)
FIX_SECRET_KEY = (
    "the saved secrets were sealed with another TIDINGS_SECRET_KEY: restore that key, or save the "
    "integration's secrets again with PUT /api/v1/integrations/whatsapp; then resume the campaign"
)


class UnusableProvider(Provider):
    """Stands for an integration that cannot send (its secrets cannot be opened, its settings cannot work):
    every send fails at once with ``code`` and the fix to make, without any request, so that the rows are
    failed with a reason and the campaign pauses, instead of a worker failing to build it again and again."""

    def __init__(self, kind: str, code: str, detail: str, fix: str) -> None:
        self.kind = kind
        self.result = SendResult.misconfigured(code, detail, fix)

    async def send(self, message: OutboundMessage) -> SendResult:
        return self.result


@dataclass
class _Entry:
    provider: Provider
    version: datetime
    checked: float


def build_provider(
    kind: str,
    settings: dict[str, Any],
    secrets: dict[str, str],
    *,
    account_id: str,
    app: Settings,
    http: httpx.AsyncClient | None = None,
) -> Provider:
    """The provider for one account's integration (``http``: a shared kept-alive client).

    The settings are checked here again, where requests are made (``ProviderType.usable``): a base URL
    naming a host that is not the provider's nor in ``TIDINGS_EXTRA_PROVIDER_HOSTS`` is an ``UntrustedUrl``
    (a ``ValueError``), so that no token is ever sent there, and the ids that go into request paths must
    have the provider's shape. ``LookupError`` when no provider has that kind."""
    plugin = registry.plugin(kind)
    usable = plugin.usable(plugin.settings(settings), app.extra_provider_hosts)
    return plugin.build(
        usable, plugin.secrets(secrets), Deployment(account_id=account_id, app=app, http=http)
    )


class ProviderPool:
    """Caches providers; re-reads an account's integration at most every ``refresh`` seconds."""

    def __init__(self, db: Database, settings: Settings, box: SecretBox, refresh: float = 5.0) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        self.refresh = refresh
        self.http = httpx.AsyncClient(
            timeout=15, limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)
        )
        self._entries: dict[str, _Entry] = {}
        self._retired: list[Provider] = []

    def get(self, account_id: str) -> Provider:
        """Reads the database (to refresh), so call it from a worker thread, not the event loop."""
        entry = self._entries.get(account_id)
        now = time.monotonic()
        if entry is not None and now - entry.checked < self.refresh:
            return entry.provider
        with self.db.session() as session:
            integration = get_integration(session, account_id)
            kind, version = integration.kind, integration.updated_at
            config, sealed = dict(integration.settings), integration.secrets
        if entry is not None and entry.version == version:
            entry.checked = now
            return entry.provider
        provider = self._build(account_id, kind, config, sealed)
        if entry is not None:
            self._retired.append(entry.provider)  # closed at shutdown: its sandbox webhooks may be in flight
        self._entries[account_id] = _Entry(provider, version, now)
        return provider

    def _build(self, account_id: str, kind: str, config: dict[str, Any], sealed: str) -> Provider:
        """The account's provider; an ``UnusableProvider`` when its secrets cannot be opened (the secret
        key changed) or its settings cannot work (a key that does not parse, a host not the provider's)."""
        try:
            secrets = self.box.open(sealed)
        except ValueError as exc:
            log.error("account %s: %s", account_id, exc)
            return UnusableProvider(kind, "credentials_unreadable", str(exc), FIX_SECRET_KEY)
        try:
            return build_provider(
                kind, config, secrets, account_id=account_id, app=self.settings, http=self.http
            )
        except (ValueError, LookupError) as exc:
            detail = str(exc)
            log.error("account %s: the %s integration cannot send: %s", account_id, kind, detail)
            return UnusableProvider(kind, "integration_invalid", detail[:300], FIX_INTEGRATION)

    def providers(self) -> list[Provider]:
        return [e.provider for e in self._entries.values()] + self._retired

    async def aclose(self) -> None:
        for provider in self.providers():
            await provider.aclose()
        self._entries.clear()
        self._retired.clear()
        await self.http.aclose()
