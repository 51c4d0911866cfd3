"""The worker: scheduler ticks and the dispatcher, on one event loop. Runs inside ``tidings serve``
(and the demo) or alone as ``tidings worker``; any number of them can run against one database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

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
        self.pool = ProviderPool(db, settings, box)
        self.dispatcher = Dispatcher(db, settings, self.pool)
        self.lease_grace = timedelta(seconds=settings.lease_seconds)

    @property
    def sandbox_pending(self) -> int:
        """Sandbox messages whose delivery, read and reply webhooks are still to come."""
        return sum(p.pending for p in self.pool.providers() if isinstance(p, SandboxProvider))

    async def run(self, stop: asyncio.Event) -> None:
        last_tick = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() - last_tick >= TICK_SECONDS:
                    await asyncio.to_thread(scheduler_tick, self.db, self.lease_grace)
                    last_tick = time.monotonic()
                handled = await self.dispatcher.run_once()
            except Exception:
                log.exception("worker: error in the loop; carrying on")
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.poll_interval)
        await self.pool.aclose()
