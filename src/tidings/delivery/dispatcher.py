"""The dispatcher: a pipeline that keeps every sender busy at its allowed rate.

Four kinds of tasks share one event loop (database work runs in threads, one transaction per call):

* the **claimer** keeps a stock of claimed and rendered rows in hand (``claim_batch``: one
  ``UPDATE … RETURNING`` for a batch, ``SKIP LOCKED`` on PostgreSQL), so the next batch is ready while
  the current one is in flight, and hands each row to its sender's lane;
* one **lane** per sender (account) takes a chunk of its rows, marks them dispatched in one committed
  UPDATE just before their provider calls (``mark_dispatched``: pair rate and messaging-limit tier are
  decided there), then starts one send per row: each waits for its rate-limit slot (``ratelimit.Pacer``,
  shared through Redis when configured) and calls the provider over the shared kept-alive client, with at
  most ``dispatch_concurrency`` calls in flight;
* the **recorder** writes the answers in set-based batches (``record_attempts``) every few milliseconds,
  and pauses a campaign whose error rate passes the threshold;
* the **heartbeat** keeps the leases of the rows in hand alive; a worker that could not renew them in
  time stops sending them (another worker may take them over);
* the **watch** keeps the last look current: every ``WATCH_EVERY`` seconds while rows are in hand, one
  query finds which of their campaigns are no longer running (stopped, paused), and a send of such a
  campaign is not made — checked right before each provider call — and its row is given back (queued
  again, its attempt not counted: no provider call happened), as are the rows still waiting in a lane.

A worker killed at any moment loses nothing: rows it claimed but never dispatched are requeued, rows it
dispatched are reconciled from the provider's status webhooks (``delivery.reconciliation``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from tidings.accounts.models import Integration
from tidings.campaigns import lifecycle
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.delivery import claims, outcomes, ratelimit, send_rules
from tidings.delivery.claims import Claimed
from tidings.delivery.http import paces_at_write
from tidings.delivery.outcomes import Attempt
from tidings.delivery.ratelimit import Limiter, Pacer, make_limiter
from tidings.metrics import (
    DND_DELAYS,
    IN_FLIGHT,
    IN_HAND,
    PAIR_WAITS,
    PAUSES,
    RATE_LOST_SLOTS,
    RATE_WAIT_SECONDS,
    RETRIES,
    SEND_SECONDS,
    SEND_TIME_REFUSALS,
    SENDS,
    TIER_SKIPS,
)
from tidings.personalization.service import PersonalizationError, Renderer
from tidings.providers import registry
from tidings.providers.base import OutboundMedia, OutboundMessage, Provider, SendResult
from tidings.providers.pool import ProviderPool

log = logging.getLogger(__name__)

RECORD_EVERY = 0.05  # seconds between result flushes (or sooner when many are waiting)
RECORD_AT_ONCE = 500
SENDER_REFRESH = 5.0  # seconds between re-reads of a sender's integration (rate, tier)
WATCH_EVERY = 0.025  # seconds between two looks at the state of the campaigns in hand
ERROR_OUTCOMES = frozenset({"retry", "failed", "uncertain"})
lost_slots: dict[str, int] = {}  # per account, for the log line at shutdown


@dataclass(frozen=True)
class Sender:
    """What the dispatcher needs to know about an account's WhatsApp sender."""

    key: str  # the rate-limit key: one per sender number
    rate: float | None  # messages a second; None: unlimited
    messaging_limit: int | None  # unique users per rolling 24 h; None: unlimited


def sender_of(integration: Integration) -> Sender:
    settings = dict(integration.settings or {})
    plugin = registry.find(integration.kind)
    number = (plugin.sender(settings) if plugin else None) or integration.account_id
    raw = settings.get("messaging_limit")
    limit: int | None
    try:
        limit = int(raw) if raw not in (None, "", "unlimited") else None
    except (TypeError, ValueError):
        limit = None
    return Sender(
        key=f"{integration.kind}:{number}",
        rate=float(integration.rate_limit) if integration.rate_limit else None,
        messaging_limit=limit if limit and limit > 0 else None,
    )


@dataclass
class Item:
    """A claimed row in this worker's hands."""

    claimed: Claimed
    claimed_at: float  # time.monotonic() of the claim
    message: OutboundMessage | None = None
    params: list[str] = field(default_factory=list)
    refusal: PersonalizationError | None = None


class Room:
    """A lane's stock: rows marked dispatched whose provider call has not started yet. Unlike a semaphore
    its size can change: it follows the sender's rate (``resize``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.taken = 0
        self._freed = asyncio.Event()

    async def acquire(self) -> None:
        while self.taken >= self.size:
            self._freed.clear()
            await self._freed.wait()
        self.taken += 1

    def release(self) -> None:
        self.taken -= 1
        self._freed.set()

    def resize(self, size: int) -> None:
        self.size = size
        self._freed.set()


@dataclass
class Lane:
    account_id: str
    sender: Sender
    provider: Provider
    pacer: Pacer | None
    chunk: int
    capacity: int  # rows waiting in this lane before the claimer skips the account
    queue: deque[Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    room: Room = field(default_factory=lambda: Room(1))  # the stock, sized by ``Dispatcher._stock``
    task: asyncio.Task[None] | None = None
    checked: float = 0.0


@functools.lru_cache(maxsize=256)
def _renderer(variables: tuple[str, ...]) -> Renderer:
    return Renderer(variables)


def render(claimed: Claimed) -> Item:
    item = Item(claimed, time.monotonic())
    if claimed.fixed_params is not None:
        item.params = claimed.fixed_params
    elif claimed.text is None:
        try:
            item.params = _renderer(claimed.variables).render(claimed.profile, claimed.event)
        except PersonalizationError as refusal:
            item.refusal = refusal
            return item
    item.message = OutboundMessage(
        client_ref=str(claimed.id),
        to=claimed.to,
        template_name=claimed.template_name,
        language=claimed.language,
        params=item.params,
        text=claimed.text,
        media=(
            OutboundMedia(media["kind"], media["url"], media.get("filename"))
            if (media := claimed.media)
            else None
        ),
    )
    return item


class Dispatcher:
    def __init__(
        self, db: Database, settings: Settings, pool: ProviderPool, limiter: Limiter | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.pool = pool
        self.limiter = limiter or make_limiter(settings.redis_url)
        self.worker_id = uuid.uuid4().hex[:12]
        self.lease = timedelta(seconds=settings.lease_seconds)
        # A worker stops sending rows whose lease it may have lost: renewed this long ago at most.
        self.fence = settings.lease_seconds - min(5.0, settings.lease_seconds / 4)
        self._seq = itertools.count(1)
        self._in_hand: dict[int, Item] = {}
        self._tokens: dict[str, int] = {}
        self._campaigns: dict[int, int] = {}  # campaign → its rows in hand (what the watch looks at)
        self._lanes: dict[str, Lane] = {}
        self._results: list[Attempt] = []
        self._results_ready = asyncio.Event()
        self._room_freed = asyncio.Event()
        self._work_arrived = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls = asyncio.Semaphore(settings.dispatch_concurrency)
        self._sends: set[asyncio.Task[None]] = set()
        self._renewed_at = time.monotonic()
        self._errors: dict[int, deque[tuple[float, bool]]] = {}
        self._stopping = False
        self._halted: set[int] = set()  # campaigns in hand found not running at the last look
        self._back: list[Item] = []  # rows never called whose campaign halted: to give back
        self.sent = 0  # provider calls made by this dispatcher (for tests and benchmarks)

    # --- bookkeeping ------------------------------------------------------------------------------------

    @property
    def in_hand(self) -> int:
        return len(self._in_hand)

    def _hold(self, items: Iterable[Item]) -> None:
        for item in items:
            self._in_hand[item.claimed.id] = item
            self._tokens[item.claimed.token] = self._tokens.get(item.claimed.token, 0) + 1
            campaign_id = item.claimed.campaign_id
            if campaign_id is not None:
                self._campaigns[campaign_id] = self._campaigns.get(campaign_id, 0) + 1
        IN_HAND.set(len(self._in_hand))

    def _drop(self, ids: Iterable[int]) -> None:
        for message_id in ids:
            item = self._in_hand.pop(message_id, None)
            if item is None:
                continue
            token = item.claimed.token
            left = self._tokens.get(token, 0) - 1
            if left > 0:
                self._tokens[token] = left
            else:
                self._tokens.pop(token, None)
            campaign_id = item.claimed.campaign_id
            if campaign_id is not None:
                if self._campaigns[campaign_id] > 1:
                    self._campaigns[campaign_id] -= 1
                else:
                    del self._campaigns[campaign_id]
        IN_HAND.set(len(self._in_hand))
        self._room_freed.set()

    def _fenced(self, item: Item) -> bool:
        """True when this worker may have lost the row's lease: it must not call the provider."""
        return time.monotonic() - max(item.claimed_at, self._renewed_at) > self.fence

    # --- the claimer ------------------------------------------------------------------------------------

    def _claim(self, limit: int, skip: list[str]) -> list[Item]:
        token = f"{self.worker_id}-{next(self._seq)}"
        with self.db.session() as session:
            claimed = claims.claim_batch(
                session, limit, self.lease, utcnow(), token=token, skip_accounts=skip
            )
        return [render(c) for c in claimed]

    def _senders(self, accounts: list[str]) -> dict[str, tuple[Sender, Provider]]:
        found = {}
        for account_id in accounts:
            provider = self.pool.get(account_id)
            with self.db.session() as session:
                integration = session.get(Integration, account_id)
                assert integration is not None
                found[account_id] = (sender_of(integration), provider)
        return found

    def _lane_shape(self, sender: Sender) -> tuple[int, int]:
        batch = self.settings.dispatch_batch
        if sender.rate is None:
            return batch, 2 * batch
        # About two seconds of sending in stock, so that a slow claim never leaves the sender idle.
        chunk = max(1, min(batch // 2, math.ceil(sender.rate * 0.1)))
        return chunk, max(2 * chunk, math.ceil(sender.rate * 2))

    def _stock(self, sender: Sender, chunk: int) -> int:
        """Rows a lane marks dispatched ahead of their provider calls: half a second of sending, so that a
        slow mark (a busy database) never leaves the sender without work; for an unlimited sender, enough
        to keep every call slot busy. Rows in flight are not stock (their call has started)."""
        if sender.rate is None:
            return max(2 * chunk, 2 * self.settings.dispatch_concurrency)
        return max(2 * chunk, math.ceil(sender.rate * 0.5))

    async def _lanes_for(self, accounts: set[str]) -> None:
        now = time.monotonic()
        stale = [a for a in accounts if a not in self._lanes or now - self._lanes[a].checked > SENDER_REFRESH]
        if not stale:
            return
        found = await asyncio.to_thread(self._senders, stale)
        for account_id, (sender, provider) in found.items():
            lane = self._lanes.get(account_id)
            chunk, capacity = self._lane_shape(sender)
            stock = self._stock(sender, chunk)
            if lane is None:
                lane = Lane(account_id, sender, provider, None, chunk, capacity, room=Room(stock))
                self._lanes[account_id] = lane
                lane.task = asyncio.create_task(self._run_lane(lane), name=f"lane-{account_id}")
            lane.room.resize(stock)  # the stock follows the sender's rate when it changes
            if lane.pacer is None or lane.sender != sender:
                lane.pacer = (
                    Pacer(self.limiter, sender.key, sender.rate, self.settings.rate_safety)
                    if sender.rate
                    else None
                )
            lane.sender, lane.provider, lane.chunk, lane.capacity = sender, provider, chunk, capacity
            lane.checked = now

    async def _run_claimer(self) -> None:
        batch = self.settings.dispatch_batch
        base = 2 * batch
        while not self._stopping:
            high_water = max(base, min(20 * batch, sum(lane.capacity for lane in self._lanes.values())))
            room = high_water - len(self._in_hand)
            if room < max(1, batch // 2):
                self._room_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room_freed.wait(), timeout=self.settings.poll_interval)
                continue
            skip = [a for a, lane in self._lanes.items() if len(lane.queue) >= lane.capacity]
            try:
                items = await asyncio.to_thread(self._claim, min(batch, room), skip)
                if items:
                    await self._lanes_for({i.claimed.account_id for i in items})
            except Exception:
                log.exception("dispatcher: claim failed; retrying")
                await asyncio.sleep(self.settings.poll_interval)
                continue
            if not items:
                self._work_arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work_arrived.wait(), timeout=self.settings.poll_interval)
                continue
            self._hold(items)
            for item in items:
                lane = self._lanes[item.claimed.account_id]
                lane.queue.append(item)
                lane.wake.set()

    # --- the lanes --------------------------------------------------------------------------------------

    def _mark(self, lane: Lane, chunk: list[Item]) -> send_rules.Dispatch:
        """Whether each row may leave now, decided in one transaction: consent, DND and frequency caps
        (the account's rules are read there, fresh for every chunk: one primary-key lookup), the pair
        rate, the tier and the campaign still running (``send_rules.mark_dispatched``)."""
        with self.db.session() as session:
            return send_rules.mark_dispatched(
                session,
                lane.account_id,
                [(i.claimed.id, i.claimed.token, i.claimed.to) for i in chunk],
                utcnow(),
                lease=self.lease,
                pair_interval=self.settings.pair_interval,
                messaging_limit=lane.sender.messaging_limit,
            )

    async def _run_lane(self, lane: Lane) -> None:
        while True:
            if not lane.queue:
                if self._stopping:
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            chunk: list[Item] = []
            while lane.queue and len(chunk) < lane.chunk:
                item = lane.queue.popleft()
                if self._fenced(item):  # lease may be lost: leave the row to the reconciler
                    self._drop([item.claimed.id])
                elif item.refusal is not None:  # personalization said no: recorded, never sent
                    self._record(Attempt(item.claimed, lane.provider.kind, refusal=item.refusal))
                else:
                    chunk.append(item)
            if not chunk:
                continue
            try:
                decided = await asyncio.to_thread(self._mark, lane, chunk)
            except Exception:
                log.exception("dispatcher: could not mark a chunk dispatched; retrying")
                lane.queue.extendleft(reversed(chunk))
                await asyncio.sleep(self.settings.poll_interval)
                continue
            PAIR_WAITS.inc(len(decided.waiting))
            TIER_SKIPS.inc(len(decided.skipped))
            DND_DELAYS.inc(len(decided.delayed))
            for reason in decided.refused.values():
                SEND_TIME_REFUSALS.labels(reason).inc()
            self._drop(
                [
                    *decided.waiting,
                    *decided.skipped,
                    *decided.lost,
                    *decided.released,
                    *decided.refused,
                    *decided.delayed,
                ]
            )
            go = set(decided.go)
            for item in chunk:
                if item.claimed.id not in go:
                    continue
                await lane.room.acquire()
                task = asyncio.create_task(self._send(lane, item))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    async def _send(self, lane: Lane, item: Item) -> None:
        assert item.message is not None
        provider = lane.provider
        room = lane.room
        stocked = True  # the row holds a place in the lane's stock until its call starts
        try:
            async with self._calls:
                if item.claimed.campaign_id in self._halted:
                    self._back.append(item)  # stopped or paused: never called, given back by the watch
                    return
                if lane.pacer is not None:
                    # Over the provider client the slot is checked once more right before the write.
                    waited = await lane.pacer.turn(at_write=paces_at_write(self.pool.http))
                    RATE_WAIT_SECONDS.observe(waited)
                    RATE_LOST_SLOTS.inc(lane.pacer.lost)
                    lost_slots[lane.account_id] = lost_slots.get(lane.account_id, 0) + lane.pacer.lost
                    lane.pacer.lost = 0
                if self._fenced(item):
                    ratelimit.sent()
                    self._drop([item.claimed.id])  # dispatched but never called: the reconciler requeues it
                    return
                if item.claimed.campaign_id in self._halted:  # the last look, right before the call
                    ratelimit.sent()
                    self._back.append(item)
                    return
                stocked = False
                room.release()
                IN_FLIGHT.inc()
                began = time.perf_counter()
                try:
                    result = await provider.send(item.message)
                except Exception as exc:  # a provider bug must not lose the row: reconciled later
                    log.exception("provider %s raised on message %s", provider.kind, item.claimed.id)
                    result = SendResult.retry("exception", f"{type(exc).__name__}: {exc}")
                finally:
                    ratelimit.sent()
                    IN_FLIGHT.dec()
                    SEND_SECONDS.labels(provider.kind).observe(time.perf_counter() - began)
                self.sent += 1
            self._record(Attempt(item.claimed, provider.kind, result=result, params=item.params or None))
        finally:
            if stocked:
                room.release()

    # --- the watch: the last look before each provider call ---------------------------------------------

    def _look(self, campaigns: set[int], back: list[Item]) -> set[int]:
        """Give back ``back`` (rows whose provider call never started), and find which of ``campaigns``
        are no longer running."""
        if back:
            with self.db.session() as session:
                claims.give_back(session, [(i.claimed.id, i.claimed.token) for i in back])
                return lifecycle.halted_campaigns(session, campaigns)
        with self.db.read() as session:
            return lifecycle.halted_campaigns(session, campaigns)

    async def _run_watch(self) -> None:
        """Keeps ``_halted`` (the campaigns in hand that are no longer running) at most ``WATCH_EVERY``
        seconds old while rows are in hand, gives back the rows of those campaigns still waiting in a lane
        or stopped at the last look, and so lets ``POST …/stop`` return once nothing of the campaign is
        in hand (``campaigns.api.stop`` waits for that)."""
        while not (self._stopping and not self._back and not self._sends and not self._lanes_busy()):
            await asyncio.sleep(WATCH_EVERY)
            campaigns = set(self._campaigns)
            back, self._back = self._back, []
            if not campaigns and not back:
                self._halted = set()
                continue
            try:
                halted = await asyncio.to_thread(self._look, campaigns, back)
            except Exception:
                log.exception("dispatcher: could not look at the campaigns in hand; retrying")
                self._back[:0] = back
                await asyncio.sleep(self.settings.poll_interval)
                continue
            self._halted = halted
            self._drop(i.claimed.id for i in back)
            if halted:
                for lane in self._lanes.values():
                    if any(i.claimed.campaign_id in halted for i in lane.queue):
                        keep = [i for i in lane.queue if i.claimed.campaign_id not in halted]
                        self._back.extend(i for i in lane.queue if i.claimed.campaign_id in halted)
                        lane.queue = deque(keep)

    # --- the recorder -----------------------------------------------------------------------------------

    def _record(self, attempt: Attempt) -> None:
        self._results.append(attempt)
        if len(self._results) >= RECORD_AT_ONCE:
            self._results_ready.set()

    def _write(self, attempts: list[Attempt]) -> None:
        with self.db.session() as session:
            outcomes.record_attempts(
                session,
                attempts,
                utcnow(),
                max_attempts=self.settings.max_attempts,
                retry_base=self.settings.retry_base,
                retry_cap=self.settings.retry_cap,
            )

    async def _flush(self) -> None:
        if not self._results:
            return
        attempts, self._results = self._results, []
        try:
            await asyncio.to_thread(self._write, attempts)
        except Exception:
            log.exception("dispatcher: could not record %s results; retrying", len(attempts))
            self._results[:0] = attempts
            await asyncio.sleep(self.settings.poll_interval)
            return
        self._drop(a.claimed.id for a in attempts)
        await self._observe(attempts)

    async def _run_recorder(self) -> None:
        while not (self._stopping and not self._sends and not self._results and not self._lanes_busy()):
            self._results_ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._results_ready.wait(), timeout=RECORD_EVERY)
            await self._flush()

    def _lanes_busy(self) -> bool:
        return any(lane.task is not None and not lane.task.done() for lane in self._lanes.values())

    async def _observe(self, attempts: list[Attempt]) -> None:
        """Metrics, and two brakes: a campaign whose send failed because the integration cannot work (the
        provider refused the credentials, the secrets cannot be opened: ``SendResult.fix``) is paused at
        once with a note saying what to fix; a campaign with too many errors lately is paused."""
        now = time.monotonic()
        touched: set[int] = set()
        broken: dict[int, Attempt] = {}
        for att in attempts:
            kind = att.kind
            SENDS.labels(att.provider, kind).inc()
            if kind in ("retry", "uncertain") and att.result is not None:
                RETRIES.labels(att.provider, att.result.error_code or "unknown").inc()
            campaign_id = att.claimed.campaign_id
            if campaign_id is not None and att.result is not None and att.result.fix:
                broken.setdefault(campaign_id, att)
            if campaign_id is None or kind == "skipped" or self.settings.pause_error_rate <= 0:
                continue
            self._errors.setdefault(campaign_id, deque()).append((now, kind in ERROR_OUTCOMES))
            touched.add(campaign_id)
        for campaign_id, att in broken.items():
            assert att.result is not None
            reason = f"{att.provider}:{att.result.error_code or 'error'}"
            note = f"paused: {reason} ({att.result.error_detail or 'refused'})"[:100] + f"; {att.result.fix}"
            self._errors.pop(campaign_id, None)
            touched.discard(campaign_id)
            if await asyncio.to_thread(self._pause, campaign_id, note):
                PAUSES.inc()
                log.warning("campaign %s %s", campaign_id, note, extra={"campaign_id": campaign_id})
        horizon = now - self.settings.pause_window
        for campaign_id in touched:
            window = self._errors[campaign_id]
            while window and window[0][0] < horizon:
                window.popleft()
            errors = sum(1 for _, bad in window if bad)
            if len(window) < self.settings.pause_min_attempts:
                continue
            if errors / len(window) < self.settings.pause_error_rate:
                continue
            share = round(100 * errors / len(window))
            note = (
                f"paused: {share} % of the last {len(window)} attempts failed or were refused within "
                f"{self.settings.pause_window:g} s; resume: POST /api/v1/campaigns/{campaign_id}/resume"
            )
            window.clear()
            if await asyncio.to_thread(self._pause, campaign_id, note):
                PAUSES.inc()
                log.warning("campaign %s %s", campaign_id, note, extra={"campaign_id": campaign_id})

    def _pause(self, campaign_id: int, note: str) -> bool:
        with self.db.session() as session:
            return lifecycle.pause_campaign(session, campaign_id, note)

    # --- the heartbeat ----------------------------------------------------------------------------------

    def _renew(self, tokens: list[str]) -> None:
        with self.db.session() as session:
            claims.renew_leases(session, tokens, utcnow(), self.lease)

    async def _run_heartbeat(self) -> None:
        every = max(0.05, self.settings.lease_seconds / 4)
        while not self._stopping:
            await asyncio.sleep(every)
            tokens = list(self._tokens)
            began = time.monotonic()
            try:
                await asyncio.to_thread(self._renew, tokens)
            except Exception:
                log.exception("dispatcher: could not renew leases")
                continue
            self._renewed_at = began

    # --- running ----------------------------------------------------------------------------------------

    def _release(self, items: list[Item]) -> None:
        with self.db.session() as session:
            claims.release(session, [(i.claimed.id, i.claimed.token) for i in items], utcnow())

    def nudge(self) -> None:
        """New rows are queued (a live trigger in this process): claim now instead of at the next poll.
        Safe to call from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._work_arrived.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set; then give back what was not dispatched and record the rest."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        tasks = [
            asyncio.create_task(self._run_claimer(), name="claimer"),
            asyncio.create_task(self._run_heartbeat(), name="heartbeat"),
        ]
        recorder = asyncio.create_task(self._run_recorder(), name="recorder")
        watch = asyncio.create_task(self._run_watch(), name="watch")
        try:
            await stop.wait()
        finally:
            self._stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            waiting = [i for lane in self._lanes.values() for i in lane.queue]
            for lane in self._lanes.values():
                lane.queue.clear()
                lane.wake.set()
            if waiting:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._release, waiting)
                self._drop(i.claimed.id for i in waiting)
            pending = [lane.task for lane in self._lanes.values() if lane.task is not None]
            pending.extend(self._sends)
            if pending:
                await asyncio.wait(pending, timeout=30)
            await asyncio.wait_for(recorder, timeout=30)
            with contextlib.suppress(TimeoutError):  # rows not given back are requeued by reconcile
                await asyncio.wait_for(watch, timeout=30)
            for lane in self._lanes.values():
                if lane.pacer is not None:
                    log.info(
                        "sender %s: %s sends paced at %g/s, %s slots given up (woke too late)",
                        lane.sender.key,
                        lane.pacer.used,
                        lane.pacer.rate,
                        lost_slots.get(lane.account_id, 0) + lane.pacer.lost,
                    )
            await self.limiter.aclose()
