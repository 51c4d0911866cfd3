"""One provider instance per account, built from its WhatsApp integration and rebuilt when it changes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import httpx

from tidings.accounts.service import get_integration
from tidings.config import Settings
from tidings.db import Database
from tidings.providers.base import Provider
from tidings.providers.sandbox import SandboxProvider
from tidings.secrets import SecretBox


@dataclass
class _Entry:
    provider: Provider
    version: datetime
    checked: float


def build_provider(
    kind: str,
    settings: dict[str, object],
    secrets: dict[str, str],
    *,
    account_id: str,
    app: Settings,
    http: httpx.AsyncClient,
) -> Provider:
    """The provider for one account's integration."""
    if kind == "sandbox":
        return SandboxProvider(
            webhook_base=f"{app.public_url}/webhooks/sandbox/{account_id}",
            signature_secret=secrets["signature_secret"],
            settings=app.sandbox,
        )
    raise ValueError(f"unknown WhatsApp provider kind {kind!r}")


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

    def get(self, account_id: str) -> Provider:
        """Called from a worker thread or the event loop; reads the database only to refresh."""
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
        provider = build_provider(
            kind, config, self.box.open(sealed), account_id=account_id, app=self.settings, http=self.http
        )
        self._entries[account_id] = _Entry(provider, version, now)
        return provider

    def providers(self) -> list[Provider]:
        return [e.provider for e in self._entries.values()]

    async def aclose(self) -> None:
        for entry in self._entries.values():
            await entry.provider.aclose()
        self._entries.clear()
        await self.http.aclose()
