"""The per-sender rate limiter: evenly spaced slots, never more than the rate in any one-second window,
in memory and shared between processes through Redis. (How close the achieved rate comes to the
setting is a benchmark, bench/ratelimit.py, not a test.)"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from bisect import bisect_left

import pytest

from tidings.delivery.ratelimit import REDIS_PREFIX, MemoryLimiter, Pacer, RedisLimiter

REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL")
if os.environ.get("CI") and not REDIS_URL:
    raise pytest.UsageError("CI must set TIDINGS_TEST_REDIS_URL: the shared rate limit is tested on Redis")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="TIDINGS_TEST_REDIS_URL is not set")


def max_in_window(times: list[float], width: float = 1.0) -> int:
    """The most events in any window [t, t + width), wherever it starts."""
    times = sorted(times)
    return max((bisect_left(times, t + width) - i for i, t in enumerate(times)), default=0)


async def _run(pacers: list[Pacer], n: int) -> list[float]:
    """``n`` sends through each pacer at once; returns when each send was let go."""
    sent: list[float] = []

    async def one(pacer: Pacer) -> None:
        await pacer.turn()
        sent.append(time.monotonic())

    await asyncio.gather(*(one(p) for p in pacers for _ in range(n)))
    return sent


def test_the_memory_limiter_spaces_reservations_per_key() -> None:
    limiter = MemoryLimiter()

    async def go() -> tuple[float, float, float]:
        a = await limiter.reserve("a", 0.1, 3)
        b = await limiter.reserve("a", 0.1, 1)
        c = await limiter.reserve("other", 0.1, 1)
        return a, b, c

    a, b, c = asyncio.run(go())
    assert b == pytest.approx(a + 0.3)  # after the three slots reserved before it
    assert c <= a + 0.01  # another sender is not held back


def test_a_pacer_never_exceeds_its_rate_in_any_window() -> None:
    rate = 200.0
    sent = asyncio.run(_run([Pacer(MemoryLimiter(), "k", rate, 0.012)], 300))
    assert len(sent) == 300
    assert max_in_window(sent) <= rate
    gaps = [b - a for a, b in zip(sorted(sent), sorted(sent)[1:], strict=False)]
    # Evenly paced: no burst (a gap far below the interval would be two sends bunched together).
    assert sum(1 for g in gaps if g < 0.5 / rate) <= len(gaps) * 0.02


def test_a_send_that_wakes_too_late_gives_up_its_slot() -> None:
    pacer = Pacer(MemoryLimiter(), "k", 100.0, 0.01)

    async def go() -> tuple[float, float, int]:
        first = await pacer._next_slot()
        second = first + pacer.interval
        pacer._slots.appendleft(first)  # put it back, then be late for it
        await asyncio.sleep(0.05)
        await pacer.turn()  # the stale slots are skipped: it waits for a fresh one
        return first, second, pacer.lost

    _first, _second, lost = asyncio.run(go())
    assert lost >= 1


def test_pacing_is_rejected_for_a_rate_of_zero() -> None:
    with pytest.raises(ValueError):
        Pacer(MemoryLimiter(), "k", 0, 0.01)


@needs_redis
def test_redis_shares_one_pace_between_processes() -> None:
    """Two limiters on one Redis stand for two worker processes: together they stay at the rate."""
    assert REDIS_URL
    key = f"test-{uuid.uuid4().hex}"
    rate = 150.0

    async def go() -> list[float]:
        first, second = RedisLimiter(REDIS_URL), RedisLimiter(REDIS_URL)
        try:
            pacers = [Pacer(first, key, rate, 0.012), Pacer(second, key, rate, 0.012)]
            return await _run(pacers, 120)
        finally:
            await first.redis.delete(REDIS_PREFIX + key)
            await first.aclose()
            await second.aclose()

    sent = asyncio.run(go())
    assert len(sent) == 240
    assert max_in_window(sent) <= rate
    # One pace for both: 240 sends at 150/s take at least 1.5 s, whoever made them.
    assert max(sent) - min(sent) >= 239 * (1 / rate) * 0.99


@needs_redis
def test_redis_reservations_are_disjoint_and_expire() -> None:
    assert REDIS_URL
    key = f"test-{uuid.uuid4().hex}"

    async def go() -> tuple[float, float, int]:
        limiter = RedisLimiter(REDIS_URL)
        try:
            a = await limiter.reserve(key, 0.01, 10)
            b = await limiter.reserve(key, 0.01, 1)
            ttl = int(await limiter.redis.pttl(REDIS_PREFIX + key))
            await limiter.redis.delete(REDIS_PREFIX + key)
            return a, b, ttl
        finally:
            await limiter.aclose()

    a, b, ttl = asyncio.run(go())
    assert b - a == pytest.approx(0.1, abs=0.005)  # after the ten slots of the first reservation
    assert 0 < ttl <= 61_000  # no key outlives its use by more than a minute
