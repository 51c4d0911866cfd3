"""The worker: scheduler ticks and the dispatcher, on one event loop. Runs inside ``tidings serve``
(and the demo) or alone as ``tidings worker``; any number of them can run against one database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from sqlalchemy import select

from tidings.accounts.models import Integration
from tidings.campaigns.service import scheduler_tick
from tidings.config import Settings
from tidings.db import Database
from tidings.delivery.dispatcher import Dispatcher
from tidings.providers.pool import ProviderPool
from tidings.providers.sandbox import SandboxProvider
from tidings.secrets import SecretBox

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5


class Worker:
    def __init__(self, db: Database, settings: Settings, box: SecretBox) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        self.pool = ProviderPool(db, settings, box)
        self.dispatcher = Dispatcher(db, settings, self.pool)
        self.lease_grace = timedelta(seconds=settings.lease_seconds)

    @property
    def sandbox_pending(self) -> int:
        """Sandbox messages whose delivery, read and reply webhooks are still to come."""
        return sum(p.pending for p in self.pool.providers() if isinstance(p, SandboxProvider))

    async def sync_meta_templates(self) -> None:
        """Keep every Meta account's template statuses current (webhooks tell us too; this catches up)."""
        from tidings.templates.sync import sync_templates

        def meta_accounts() -> list[str]:
            with self.db.session() as session:
                return list(session.scalars(select(Integration.account_id).where(Integration.kind == "meta")))

        for account_id in await asyncio.to_thread(meta_accounts):
            try:
                await sync_templates(self.db, self.box, account_id)
            except Exception:
                log.exception("worker: template sync failed for %s", account_id)

    async def run(self, stop: asyncio.Event) -> None:
        last_tick = 0.0
        last_sync = time.monotonic()
        while not stop.is_set():
            try:
                if time.monotonic() - last_tick >= TICK_SECONDS:
                    await asyncio.to_thread(scheduler_tick, self.db, self.lease_grace)
                    last_tick = time.monotonic()
                handled = await self.dispatcher.run_once()
                if time.monotonic() - last_sync >= self.settings.template_sync_seconds:
                    last_sync = time.monotonic()
                    await self.sync_meta_templates()
            except Exception:
                log.exception("worker: error in the loop; carrying on")
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_interval)
        await self.pool.aclose()
