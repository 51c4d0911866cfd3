"""The worker: scheduler ticks, reconciliation and the dispatcher, on one event loop. Runs inside
``tidings serve`` (and the demo) or alone as ``tidings worker``; any number of them can run against one
database (and one Redis, which shares each sender's rate limit)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from datetime import timedelta

from sqlalchemy import select

from tidings.accounts.models import Integration
from tidings.campaigns.service import scheduler_tick
from tidings.config import Settings
from tidings.conversations import chores
from tidings.db import Database, utcnow
from tidings.delivery import reconciliation
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.http import provider_client
from tidings.metrics import LOOP_LAG, RECONCILED, WAITING_FOR_PROOF
from tidings.providers import registry
from tidings.providers.pool import ProviderPool
from tidings.secrets import SecretBox
from tidings.templates.sync import sync_templates

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
# The scheduler tick's own fallback reconciliation (with the same TIDINGS_UNKNOWN_OUTCOME and
# TIDINGS_MAX_ATTEMPTS) waits this much longer than the worker's, so the worker's always decides first.
FALLBACK_SLACK = timedelta(seconds=60)


async def watch_loop(every: float = 0.01) -> None:
    """How late the event loop wakes up: sends are paced to the millisecond, so a stall shows here."""
    while True:
        began = time.monotonic()
        await asyncio.sleep(every)
        lag = time.monotonic() - began - every
        LOOP_LAG.observe(lag)
        if lag > 0.03:
            log.warning("event loop stalled for %.0f ms", lag * 1000, extra={"lag_ms": round(lag * 1000)})


class Worker:
    def __init__(self, db: Database, settings: Settings, box: SecretBox) -> None:
        self.db = db
        self.settings = settings
        self.box = box
        self.pool = ProviderPool(db, settings, box)
        self.pool.http = provider_client()  # before any provider is built: they all share it
        self.dispatcher = Dispatcher(db, settings, self.pool)
        self.window = timedelta(seconds=settings.reconcile_seconds)
        self._waiting = 0  # sent rows waiting for proof at the last tick (logged when it changes)

    @property
    def sandbox_pending(self) -> int:
        """Sandbox messages whose delivery, read and reply webhooks are still to come."""
        return sum(p.pending for p in self.pool.providers())

    async def sync_listed_templates(self) -> None:
        """Keep the template statuses of every account whose provider lists its templates current (its
        webhooks tell us too; this catches up)."""
        listing = [p.kind for p in registry.plugins() if p.capabilities.list_templates]

        def accounts() -> list[str]:
            with self.db.session() as session:
                return list(
                    session.scalars(select(Integration.account_id).where(Integration.kind.in_(listing)))
                )

        for account_id in await asyncio.to_thread(accounts):
            try:
                await sync_templates(self.db, self.box, self.settings, account_id)
            except Exception:
                log.exception("worker: template sync failed for %s", account_id)

    def tick(self) -> None:
        """Recover lost claims, then start what is due and complete what is done."""
        with self.db.session() as session:
            counts = reconciliation.reconcile(
                session,
                utcnow(),
                self.window,
                unknown_outcome=self.settings.unknown_outcome,
                max_attempts=self.settings.max_attempts,
            )
            waiting = reconciliation.waiting_for_proof(session, utcnow(), self.window)
        WAITING_FOR_PROOF.set(waiting)
        for action, n in counts.items():
            if n:
                RECONCILED.labels(action).inc(n)
                log.info("reconciled %s rows: %s", n, action, extra={"action": action, "rows": n})
        if waiting and waiting != self._waiting:
            log.warning(
                "%s sent messages have no status after %g s and are not sent again: no later message of "
                "their sender got a status either (is the status webhook reachable?)",
                waiting,
                self.window.total_seconds(),
                extra={"waiting_for_proof": waiting},
            )
        self._waiting = waiting
        scheduler_tick(
            self.db,
            self.window + FALLBACK_SLACK,
            unknown_outcome=self.settings.unknown_outcome,
            max_attempts=self.settings.max_attempts,
        )

    async def conversation_chores(self) -> None:
        """Fetch the files users sent and send the read marks of what agents opened (chores.py)."""
        await chores.fetch_media(self.db, self.pool)
        await chores.send_read_marks(self.db, self.pool)

    def nudge(self) -> None:
        """Rows were just queued in this process (a live trigger): the dispatcher claims them at once."""
        self.dispatcher.nudge()

    async def run(self, stop: asyncio.Event) -> None:
        # The event loop paces sends to the millisecond: database threads must give the GIL back fast, and
        # the garbage collector must not stop the world for tens of milliseconds while rows flow through:
        # the objects of start-up (modules, the ORM's mappers, …) are frozen out of its sight, which takes
        # its full collections from ~80 ms to a few (bench/ratelimit.py: 95 % → 98.4 % of 1,000/s).
        sys.setswitchinterval(0.001)
        gc.collect()
        gc.freeze()
        dispatching = asyncio.create_task(self.dispatcher.run(stop), name="dispatcher")
        watching = asyncio.create_task(watch_loop(), name="loop-lag")
        last_sync = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
                await self.conversation_chores()
                if time.monotonic() - last_sync >= self.settings.template_sync_seconds:
                    last_sync = time.monotonic()
                    await self.sync_listed_templates()
            except Exception:
                log.exception("worker: error in the scheduler loop; carrying on")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=TICK_SECONDS)
            if dispatching.done():
                break
        await asyncio.gather(dispatching, return_exceptions=True)
        watching.cancel()
        await self.pool.aclose()
