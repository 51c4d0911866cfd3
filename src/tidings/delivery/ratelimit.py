"""Per-sender rate limits: every send to the provider waits for a slot of its sender's pace.

The limiter is a GCRA ("generic cell rate algorithm", a leaky bucket with no burst): a sender at ``rate``
messages a second gets one slot every ``(1 + safety) / rate`` seconds, and a reservation of ``n`` slots
moves the sender's "theoretical arrival time" (TAT) forward by ``n`` intervals. Slots are evenly spaced,
so no one-second window ever holds more than ``rate`` sends, however the window is placed, as long as
each send leaves within ``safety`` seconds of its slot: ``Pacer.turn`` gives up a slot it wakes up too
late for (a busy event loop, a descheduled process) and takes a new one rather than send late and bunch
up with the next. The achieved rate is ``rate / (1 + safety)`` (98.8 % with the default 0.012 s).

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

REDIS_PREFIX = "tidings:pace:"

# KEYS[1] the sender's TAT (µs, Redis clock); ARGV[1] the interval (µs), ARGV[2] how many slots.
# Returns the delay (µs) from now to the first reserved slot.
GCRA_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local start = math.max(tat, now)
local after = start + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.floor((after - now) / 1000) + 60000)
return math.floor(start - now)
"""


class Limiter(abc.ABC):
    """Hands out send slots per sender key."""

    @abc.abstractmethod
    async def reserve(self, key: str, interval: float, n: int) -> float:
        """Reserve ``n`` consecutive slots ``interval`` seconds apart for ``key``; returns the
        ``time.monotonic()`` of the first (the others follow every ``interval``)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryLimiter(Limiter):
    """The pace of each sender, for this process only."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}

    async def reserve(self, key: str, interval: float, n: int) -> float:
        now = time.monotonic()
        start = max(self._tat.get(key, 0.0), now)
        self._tat[key] = start + n * interval
        return start


class RedisLimiter(Limiter):
    """The pace of each sender, shared by every process that uses the same Redis."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url)
        self._script = self.redis.register_script(GCRA_SCRIPT)

    async def reserve(self, key: str, interval: float, n: int) -> float:
        delay_us = await self._script(keys=[REDIS_PREFIX + key], args=[math.ceil(interval * 1e6), n])
        return time.monotonic() + int(delay_us) / 1e6

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
        self.chunk = max(1, min(64, int(rate * 0.005)))  # at most ~5 ms of slots per reservation
        self.lost = 0  # slots given up because the send woke up too late
        self.used = 0
        # A new pacer opens its connections as it goes (TCP and TLS handshakes delay the first sends
        # more than the next ones, which can bunch them at the provider): 5 % slower for a second.
        self._warm_until = time.monotonic() + 1.0
        self._slots: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._hungry = 0

    async def _next_slot(self) -> float:
        self._hungry += 1
        try:
            while not self._slots:
                async with self._lock:
                    if self._slots:
                        break
                    n = max(1, min(self._hungry, self.chunk))
                    interval = self.interval * (1.05 if time.monotonic() < self._warm_until else 1.0)
                    start = await self.limiter.reserve(self.key, interval, n)
                    self._slots.extend(start + i * interval for i in range(n))
            return self._slots.popleft()
        finally:
            self._hungry -= 1

    async def turn(self) -> float:
        """Wait for the next slot and return how long it took; call the provider right after."""
        began = time.monotonic()
        while True:
            slot = await self._next_slot()
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - slot <= self.tolerance:
                self.used += 1
                return time.monotonic() - began
            self.lost += 1
