"""Group commit for webhooks: the events of many concurrent webhook requests are applied to the ledger in
one transaction, and each request is answered once the transaction holding its events has committed
(so a failure still answers 5xx and the provider sends it again).

Status callbacks come about three per message sent, one per request (Vonage) or a few per request
(Meta). One transaction per request made every request wait for the database's write lock (SQLite has
one writer at a time); one transaction per few milliseconds of requests takes that wait away.
The integration's secrets, needed to verify signatures before anything is read, are cached for a
couple of seconds, so a request reads nothing from the database before its events are applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from tidings.db import Database
from tidings.providers.base import WebhookEvent
from tidings.secrets import SecretBox
from tidings.webhooks.service import handle_requests, integration_for

log = logging.getLogger(__name__)

SECRETS_TTL = 2.0  # seconds a verified integration's secrets are reused (a new secret applies after this)
MAX_BATCH = 500  # webhook requests in one transaction at most

_Item = tuple[str, str, Sequence[WebhookEvent], "asyncio.Future[dict[str, int]]"]


class WebhookBatcher:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box
        self._integrations: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self._pending: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False

    def _read(self, account_id: str, provider: str) -> dict[str, Any]:
        with self.db.session() as session:
            return integration_for(session, self.box, account_id, provider)

    async def integration(self, account_id: str, provider: str) -> dict[str, Any]:
        """The account's settings and secrets for ``provider`` (an ``ApiError`` 404 when it has another)."""
        key = (account_id, provider)
        cached = self._integrations.get(key)
        if cached is not None and time.monotonic() - cached[0] < SECRETS_TTL:
            return cached[1]
        found = await asyncio.to_thread(self._read, account_id, provider)
        self._integrations[key] = (time.monotonic(), found)
        return found

    async def apply(self, account_id: str, provider: str, events: Sequence[WebhookEvent]) -> dict[str, int]:
        """Apply verified events; returns what happened to them once they are committed."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="webhook-batcher")
        assert self._wake is not None
        future: asyncio.Future[dict[str, int]] = loop.create_future()
        self._pending.append((account_id, provider, events, future))
        self._wake.set()
        return await future

    def _write(self, batch: list[_Item]) -> list[dict[str, int] | BaseException]:
        try:
            with self.db.session() as session:
                return list(handle_requests(session, [(a, p, events) for a, p, events, _ in batch]))
        except Exception:
            if len(batch) == 1:
                raise
        # One bad request must not fail the others: apply each in its own transaction.
        results: list[dict[str, int] | BaseException] = []
        for account_id, provider, events, _ in batch:
            try:
                with self.db.session() as session:
                    results += handle_requests(session, [(account_id, provider, events)])
            except Exception as exc:
                results.append(exc)
        return results

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                self._busy = True
                try:
                    results = await asyncio.to_thread(self._write, batch)
                except Exception as exc:
                    log.exception("webhooks: could not apply a batch of %s", len(batch))
                    results = [exc] * len(batch)
                finally:
                    self._busy = False
                for (_, _, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    async def aclose(self) -> None:
        if self._task is not None:
            while (self._pending or self._busy) and not self._task.done():
                await asyncio.sleep(0.01)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
