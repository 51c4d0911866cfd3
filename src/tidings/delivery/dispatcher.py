"""The dispatcher: claim a batch, render it, send it with many requests in flight, record the results.

Database work runs in a thread (SQLAlchemy is synchronous); provider calls run concurrently on the
event loop over kept-alive connections. A ledger row is claimed once, so it is sent once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.delivery import service
from tidings.delivery.service import Attempt, Claimed
from tidings.personalization.service import PersonalizationError, Renderer
from tidings.providers.base import OutboundMessage, Provider, SendResult
from tidings.providers.pool import ProviderPool

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, db: Database, settings: Settings, pool: ProviderPool) -> None:
        self.db = db
        self.settings = settings
        self.pool = pool
        self._slots = asyncio.Semaphore(settings.dispatch_concurrency)

    def _claim(self) -> list[Claimed]:
        with self.db.session() as session:
            return service.claim_batch(
                session,
                self.settings.dispatch_batch,
                timedelta(seconds=self.settings.lease_seconds),
                utcnow(),
            )

    def _record(self, attempts: list[Attempt]) -> None:
        with self.db.session() as session:
            service.record_attempts(
                session,
                attempts,
                utcnow(),
                max_attempts=self.settings.max_attempts,
                retry_base=self.settings.retry_base,
                retry_cap=self.settings.retry_cap,
            )

    async def _send(self, claimed: Claimed, provider: Provider) -> Attempt:
        params: list[str] = []
        if claimed.text is None:
            try:
                params = Renderer(claimed.variables).render(claimed.profile)
            except PersonalizationError as refusal:
                return Attempt(claimed, provider.kind, refusal=refusal)
        message = OutboundMessage(
            client_ref=str(claimed.id),
            to=claimed.to,
            template_name=claimed.template_name,
            language=claimed.language,
            params=params,
            text=claimed.text,
        )
        async with self._slots:
            try:
                result = await provider.send(message)
            except Exception as exc:  # a provider bug must not lose the row: retry it later
                log.exception("provider %s raised on message %s", provider.kind, claimed.id)
                result = SendResult.retry("exception", f"{type(exc).__name__}: {exc}")
        return Attempt(claimed, provider.kind, result=result, params=params or None)

    async def run_once(self) -> int:
        """One batch; returns how many rows it handled (0 when there was nothing to do)."""
        claimed = await asyncio.to_thread(self._claim)
        if not claimed:
            return 0
        # Look providers up (which may read the database) in a thread, never on the event loop.
        accounts = {c.account_id for c in claimed}
        providers = await asyncio.to_thread(lambda: {a: self.pool.get(a) for a in accounts})
        attempts = await asyncio.gather(*(self._send(c, providers[c.account_id]) for c in claimed))
        await asyncio.to_thread(self._record, list(attempts))
        return len(claimed)
