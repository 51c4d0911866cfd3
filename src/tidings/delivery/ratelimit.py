"""Per-sender rate limits: every send to the provider waits for a slot of its sender's pace.

The limiter is a GCRA ("generic cell rate algorithm", a leaky bucket with no burst): a sender at ``rate``
messages a second gets one slot every ``(1 + safety) / rate`` seconds, and a reservation of ``n`` slots
moves the sender's "theoretical arrival time" (TAT) forward by ``n`` intervals. Slots are evenly spaced,
so no one-second window ever holds more than ``rate`` sends, however the window is placed, as long as
each send leaves within ``safety`` seconds of its slot. The achieved rate is ``rate / (1 + safety)``
(98.8 % with the default 0.012 s).

"Leaves" means the moment the request's bytes are written to the socket, and a slot is checked twice:
when ``Pacer.turn`` wakes up for it, and once more right before the write — the transport
(``tidings.delivery.http``) calls ``check_before_write`` from aiohttp's hook as the request is about to
be written, with no await in between, so what happens after the slot was taken (a stalled event loop, a
wait for a pooled connection) is covered; a refused write is made again once it may go (one event-loop
hop, to the task in which aiohttp writes the buffered headers with the body, is not covered). A slot
found late is given up and a new one taken, rather than send late and bunch up with the next sends —
this worker's or another's. (A pacer alone on its sender could keep late slots and hold every window by
its last writes instead — ``EXACT_WHEN_ALONE`` — but that is off: measured, the kept-late writes still
bunched at the provider.)

Slots reserved in Redis are placed on this process's clock from Redis' own (``RedisLimiter``: the
offset between the clocks is estimated from the quickest recent answers, NTP-style), not from the moment
an answer arrives: an answer that comes back late (a stalled event loop, a slow network) does not push
its slots later than they are — they are late, and given up. Lateness is judged from the earliest a slot
can be, and a reservation in doubt by more than the tolerance is given up at once.

In one process the TAT lives in memory (``MemoryLimiter``). With ``TIDINGS_REDIS_URL`` it lives in Redis
(``RedisLimiter``): one Lua script reserves slots atomically on Redis' own clock and answers "your first
slot is in d µs", so processes on any number of machines share the pace without sharing a clock.
"""

from __future__ import annotations

import abc
import asyncio
import math
import time
from collections import deque
from contextvars import ContextVar
from typing import NamedTuple

REDIS_PREFIX = "tidings:pace:"
EXACT_WHEN_ALONE = False  # see ``Pacer.exact``
# Slots reserved in Redis start at least a round trip and this much after the reservation: time for the
# answer to be read (by a busy process too) before its first slot.
REDIS_LEAD = 0.005

# KEYS[1] the sender's TAT (µs, Redis clock); ARGV[1] the interval (µs), ARGV[2] how many slots, ARGV[3]
# the lead (µs): no slot sooner than that from now, so that the answer is back before its first slot.
# Returns the delay (µs) from now to the first reserved slot, and now (Redis' clock: seconds, µs).
GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local start = math.max(tat, now + tonumber(ARGV[3] or '0'))
local after = start + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.floor((after - now) / 1000) + 60000)
return {math.floor(start - now), clock[1], clock[2]}
"""


class Slots(NamedTuple):
    """A reservation: its first slot is at ``first`` (``time.monotonic()``) at the latest, and may be up to
    ``doubt`` seconds earlier (the round trip of a shared limiter's answer); the others follow every
    ``interval``."""

    first: float
    doubt: float = 0.0


class Limiter(abc.ABC):
    """Hands out send slots per sender key."""

    @abc.abstractmethod
    async def reserve(self, key: str, interval: float, n: int) -> Slots:
        """Reserve ``n`` consecutive slots ``interval`` seconds apart for ``key``."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryLimiter(Limiter):
    """The pace of each sender, for this process only."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def reserve(self, key: str, interval: float, n: int) -> Slots:
        now = time.monotonic()
        start = max(self._tat.get(key, 0.0), now)
        self._tat[key] = start + n * interval
        return Slots(start)


class RedisLimiter(Limiter):
    """The pace of each sender, shared by every process that uses the same Redis.

    Redis answers on its own clock; where a slot falls on ours is estimated from the answers, as NTP
    does: an answer read Redis' clock somewhere between our asking and its arrival, and the answer that
    came back quickest (of the last ones) pins the offset between the clocks best — assuming its two
    ways took about as long, each at least half the shortest round trip seen. Every slot is placed with
    that offset, so an answer that comes back late (its process busy, a slow network) does not move its
    slots later than they are: they are just late, and given up if too late. An answer the estimate
    cannot explain (a clock that was stepped) starts the estimate afresh."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url)
        self._script = self.redis.register_script(GCRA_SCRIPT)
        self._floor = math.inf  # the shortest round trip seen
        self._samples: deque[tuple[float, float]] = deque(maxlen=64)  # (round trip, Redis' clock - ours)
        self._connected = False

    async def reserve(self, key: str, interval: float, n: int) -> Slots:
        lead = self._floor + REDIS_LEAD if self._samples else 0.002 + REDIS_LEAD
        asked = time.monotonic()
        delay_us, now_us = await self._call(key, interval, n, lead)
        answered = time.monotonic()
        trip = answered - asked
        redis_now = now_us / 1e6
        sample = (trip, redis_now - (asked + answered) / 2)
        if not self._connected:  # the first trip also opened the connection: it is no measure of the way
            self._connected = True
            return Slots(answered + delay_us / 1e6, trip)
        self._floor = min(self._floor, trip)
        if self._samples:
            best_trip, offset = min(self._samples)
            read_at = redis_now - offset  # when, on our clock, the estimate says Redis read its clock
            if not asked - best_trip / 2 <= read_at <= answered + best_trip / 2:
                self._samples.clear()  # the clocks moved apart: start again from this answer
        self._samples.append(sample)
        best_trip, offset = min(self._samples)
        # The estimate's own error: the best answer's round trip beyond the two shortest ways.
        doubt = max(0.0, best_trip - self._floor)
        first = redis_now + delay_us / 1e6 - offset
        return Slots(first + doubt / 2, doubt)

    async def _call(self, key: str, interval: float, n: int, lead: float) -> tuple[int, int]:
        """The script's answer: the delay (µs) from Redis' now to the first reserved slot — at least
        ``lead`` (a round trip, the shortest seen, and ``REDIS_LEAD``: the answer is back and read in time
        for it) — and Redis' now (µs)."""
        args = [math.ceil(interval * 1e6), n, math.ceil(lead * 1e6)]
        delay, seconds, micros = await self._script(keys=[REDIS_PREFIX + key], args=args)
        return int(delay), int(seconds) * 1_000_000 + int(micros)

    async def aclose(self) -> None:
        await self.redis.aclose()


def make_limiter(redis_url: str | None) -> Limiter:
    return RedisLimiter(redis_url) if redis_url else MemoryLimiter()


class Pacer:
    """One sender's slots in this process: reserves a few at a time (only as many as there are sends
    waiting, so that a worker never holds slots that other workers could use) and hands them out in order.
    """

    def __init__(self, limiter: Limiter, key: str, rate: float, safety: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.limiter = limiter
        self.key = key
        self.rate = rate
        self.interval = (1.0 + safety) / rate
        self.tolerance = max(0.001, safety / 2)  # how late a send may leave after its slot
        # Alone on its sender (the in-memory limiter: one process), a pacer that sees every write (sends
        # over the provider client, ``turn(lead)``) keeps a late slot: the write waits instead until the
        # last ``_burst`` writes span ``_span`` — exact for any window, and no slot is given up when the
        # event loop is busy (under load, giving up every late slot could leave a sender sending nothing).
        # Off: measured on 2026-11-29, the stand-in still saw 507-511 requests within one second at 500/s in
        # the chaos test (the hop from this check to aiohttp's write lets kept-late writes bunch), so every
        # pacer gives up late slots (docs/benchmarks.md).
        self.exact = EXACT_WHEN_ALONE and isinstance(limiter, MemoryLimiter)
        self._burst = max(1, math.floor(rate))
        # ``_burst`` + 1 writes never within one second (within ``1 / rate`` below one a second), with two
        # safety margins to spare for the way from the check to the provider (the hop to aiohttp's write
        # task; at 1,000/s one margin still let 1,003 arrive within a second at a busy stand-in).
        self._span = max(1.0, 1.0 / rate) + 2 * safety
        self._written: deque[float] = deque(maxlen=self._burst)
        self._last_turn = 0.0
        self.chunk = max(1, min(64, int(rate * 0.005)))  # at most ~5 ms of slots per reservation
        self.lost = 0  # slots given up because the send woke up too late
        self.used = 0
        # A new pacer opens its connections as it goes (TCP and TLS handshakes delay the first sends
        # more than the next ones, which can bunch them at the provider): 5 % slower for a second.
        self._warm_until = time.monotonic() + 1.0
        self._slots: deque[tuple[float, float]] = deque()  # (at, doubt) as in ``Slots``
        self._lock = asyncio.Lock()
        self._hungry = 0

    async def _next_slot(self) -> tuple[float, float]:
        self._hungry += 1
        try:
            while not self._slots:
                async with self._lock:
                    if self._slots:
                        break
                    n = max(1, min(self._hungry, self.chunk))
                    interval = self.interval * (1.05 if time.monotonic() < self._warm_until else 1.0)
                    got = await self.limiter.reserve(self.key, interval, n)
                    self._slots.extend((got.first + i * interval, got.doubt) for i in range(n))
            return self._slots.popleft()
        finally:
            self._hungry -= 1

    def late(self, slot: tuple[float, float], exact: bool = False) -> bool:
        """True when a send leaving now would leave more than ``tolerance`` after ``slot`` (never for an
        ``exact`` send: its write is checked against the writes before it instead)."""
        at, doubt = slot
        return not exact and time.monotonic() - (at - doubt) > self.tolerance

    def room_at(self) -> float:
        """When the next write fits: ``_burst`` writes may not span less than ``_span`` (exact pacers)."""
        if len(self._written) < self._burst:
            return 0.0
        return self._written[0] + self._span

    def wrote(self) -> None:
        self._written.append(time.monotonic())

    async def _take(self, lead: float = 0.0, exact: bool = False) -> tuple[float, float]:
        """Wait for the next slot that this send can still make (until ``lead`` before it); those it
        cannot are given up."""
        while True:
            slot = await self._next_slot()
            at, doubt = slot
            if doubt <= self.tolerance:  # else: no moment is both after the slot and close enough to it
                delay = at - lead - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not self.late(slot, exact):
                    return slot
            self.lost += 1

    async def turn(self, lead: float = 0.0, at_write: bool = False) -> float:
        """Wait for the next slot and return how long it took; call the provider right after.

        The slot stays with the calling task: the first request it then makes over the provider client
        (``tidings.delivery.http``) is checked once more right before its bytes are written
        (``check_before_write``, synchronous, no await between it and the write): a request whose slot
        is still to come, turned late on the way, or (alone on the sender) would make more than the rate
        in a window, is not written; the transport waits (``wait_for_write``) and tries again.
        ``at_write`` (or a ``lead``, for a send that starts that much ahead of its slot): the send goes
        over that client. Call ``sent()`` once the provider call is over."""
        began = time.monotonic()
        exact = self.exact and (at_write or lead > 0)
        slot = await self._take(lead, exact)
        if exact:
            # Late slots are kept: after a stall they catch up at twice the rate at most, never all at
            # once (a burst arrives bunched up at the provider, wherever it is timed).
            while (gap := self._last_turn + self.interval / 2 - time.monotonic()) > 0:
                await asyncio.sleep(gap)
            self._last_turn = time.monotonic()
        self.used += 1
        _GATE.set(Gate(self, slot, exact))
        return time.monotonic() - began


class SlotMissed(Exception):
    """Raised by the transport's last look: this request must not be written now (see ``Gate.check``)."""


class Gate:
    """The slot a send holds between ``Pacer.turn`` and the moment its request is written."""

    __slots__ = ("exact", "open", "pacer", "slot")

    def __init__(self, pacer: Pacer, slot: tuple[float, float], exact: bool = False) -> None:
        self.pacer = pacer
        self.slot = slot
        self.exact = exact  # the write is checked against this pacer's last writes, not the slot's lateness
        self.open = True

    def ready_at(self) -> float:
        """The earliest this send may be written (``time.monotonic()``)."""
        return max(self.slot[0], self.pacer.room_at() if self.exact else 0.0)

    def check(self) -> None:
        """The last look, right before the write: it may go now (the slot is used), or ``SlotMissed``."""
        if time.monotonic() < self.ready_at() or self.pacer.late(self.slot, self.exact):
            raise SlotMissed
        self.open = False
        if self.exact:
            self.pacer.wrote()

    async def wait(self) -> None:
        """After ``SlotMissed``: a slot that turned late is given up for a new one; then wait until the
        send may be written."""
        if self.pacer.late(self.slot, self.exact):
            self.pacer.lost += 1
            self.slot = await self.pacer._take(exact=self.exact)
        delay = self.ready_at() - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


# The slot of the send this task is making (contexts are per task, and the tasks a request starts copy it).
_GATE: ContextVar[Gate | None] = ContextVar("tidings_rate_gate", default=None)


def check_before_write() -> None:
    """The transport's last look before a request's bytes are written, with no await between it and the
    write: raises ``SlotMissed`` when this task's slot does not allow the write now."""
    gate = _GATE.get()
    if gate is not None and gate.open:
        gate.check()


async def wait_for_write() -> None:
    """After ``SlotMissed``: wait until this task's send may be written (a new slot if it turned late)."""
    gate = _GATE.get()
    if gate is not None and gate.open:
        await gate.wait()


def sent() -> None:
    """The send that took this task's slot is over (or never made a request: the sandbox): its slot is
    never checked again, by this task or one it started."""
    gate = _GATE.get()
    if gate is not None:
        gate.open = False
        _GATE.set(None)
