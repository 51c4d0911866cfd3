"""The per-sender rate limiter: evenly spaced slots, never more than the rate in any one-second window,
in memory and shared between processes through Redis. (How close the achieved rate comes to the
setting is a benchmark, bench/ratelimit.py, not a test.)"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.cluster import TIDINGS, max_in_window, read_log, start_standin, tidings_env
from tidings.delivery import ratelimit
from tidings.delivery.http import provider_client
from tidings.delivery.ratelimit import REDIS_PREFIX, MemoryLimiter, Pacer, RedisLimiter, Slots

REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL")
if os.environ.get("CI") and not REDIS_URL:
    raise pytest.UsageError("CI must set TIDINGS_TEST_REDIS_URL: the shared rate limit is tested on Redis")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="TIDINGS_TEST_REDIS_URL is not set")


async def _run(pacers: list[Pacer], n: int, waiting: int | None = None) -> list[float]:
    """``n`` sends through each pacer, ``waiting`` of them at a time (all at once by default: a pacer then
    reserves slot after slot, as far ahead as it has sends waiting); returns when each send was let go."""
    sent: list[float] = []
    room = {id(p): asyncio.Semaphore(waiting or n) for p in pacers}

    async def one(pacer: Pacer) -> None:
        async with room[id(pacer)]:
            await pacer.turn()
            sent.append(time.monotonic())

    await asyncio.gather(*(one(p) for p in pacers for _ in range(n)))
    return sent


def _frozen_clock(monkeypatch: pytest.MonkeyPatch, now: list[float]) -> None:
    """The limiter reads its clock from ``now[0]``: the test moves it (asyncio keeps the real one)."""
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=lambda: now[0]))


def test_the_memory_limiter_spaces_reservations_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    _frozen_clock(monkeypatch, [100.0])
    limiter = MemoryLimiter()

    async def go() -> tuple[float, float, float]:
        a = await limiter.reserve("a", 0.1, 3)
        b = await limiter.reserve("a", 0.1, 1)
        c = await limiter.reserve("other", 0.1, 1)
        assert a.doubt == b.doubt == c.doubt == 0.0  # one clock: no doubt
        return a.first, b.first, c.first

    a, b, c = asyncio.run(go())
    assert a == 100.0  # now: nothing was reserved before
    assert b == pytest.approx(a + 0.3)  # after the three slots reserved before it
    assert c == 100.0  # another sender is not held back


def test_a_pacer_never_exceeds_its_rate_in_any_window() -> None:
    rate = 200.0
    sent = asyncio.run(_run([Pacer(MemoryLimiter(), "k", rate, 0.012)], 300))
    assert len(sent) == 300
    assert max_in_window(sent) <= rate
    # Evenly paced, no burst: a tenth of a second holds a tenth of the rate (a send may leave up to the
    # tolerance after its slot, which may bring one more in; a busy machine brings two sends closer, but
    # never more of them into a short window).
    pacer = Pacer(MemoryLimiter(), "k", rate, 0.012)
    assert max_in_window(sent, 0.1) <= math.floor((0.1 + pacer.tolerance) / pacer.interval) + 1


def test_a_send_that_wakes_too_late_gives_up_its_slot() -> None:
    pacer = Pacer(MemoryLimiter(), "k", 100.0, 0.01)

    async def go() -> int:
        first = await pacer._next_slot()
        pacer._slots.appendleft(first)  # put it back, then be late for it
        await asyncio.sleep(0.05)
        await pacer.turn()  # the stale slots are skipped: it waits for a fresh one
        return pacer.lost

    assert asyncio.run(go()) >= 1


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

    async def go() -> tuple[Slots, Slots, int]:
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
    # After the ten slots of the first reservation (each first slot is known to within its doubt).
    assert b.first - b.doubt - a.first - 0.001 <= 0.1 <= b.first - (a.first - a.doubt) + 0.001
    assert 0 < ttl <= 61_000  # no key outlives its use by more than a minute


# --- the last look: a slot is checked right before the request's bytes are written ---------------------

STALL_RATE = 200.0
STALL_SAFETY = 0.03  # a wider margin than the default, so that the stand-in's own jitter under load
# (it timestamps what it reads) cannot be taken for a burst: at most 195 slots fit in any second


def _send_through_stalls(log: Path, url: str, n: int, lead: float = 0.0) -> None:
    """``n`` sends paced at ``STALL_RATE`` over the provider client, as the dispatcher makes them (a slot,
    then the request), while the event loop is made to misbehave between the slot and the write: for a
    second every request awaits 300 ms before it goes (a wait for a pooled connection, a slow hook), and
    all along the loop stalls for 20 ms every 500 ms (a blocking call in some task). ``lead``: each send
    starts that long ahead of its slot, as the dispatcher's do over this client."""

    async def go() -> None:
        client = provider_client()
        pacer = Pacer(MemoryLimiter(), "k", STALL_RATE, STALL_SAFETY)
        began = time.monotonic()

        async def slow_before_write(request: httpx.Request) -> None:
            if 0.5 <= time.monotonic() - began < 1.5:
                await asyncio.sleep(0.3)

        client.event_hooks["request"] = [slow_before_write]

        async def stall() -> None:
            while True:
                await asyncio.sleep(0.5)
                time.sleep(0.02)  # the point: the whole event loop stalls

        calls = asyncio.Semaphore(128)

        async def one(i: int) -> None:
            async with calls:
                await (pacer.turn(lead) if lead else pacer.turn())
                body = {"to": f"9198{i:08d}", "biz_opaque_callback_data": str(i), "type": "text"}
                response = await client.post(f"{url}/v20.0/1555000/messages", json=body)
                assert response.status_code == 200

        staller = asyncio.create_task(stall())
        try:
            await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            staller.cancel()
            await client.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("lead", [0.0, 0.003], ids=["on-time", "ahead"])
def test_a_slot_that_turns_late_before_the_request_is_written_is_given_up(
    tmp_path: Path, lead: float
) -> None:
    """Timed where it counts, at the receiving end (the stand-in logs when each request arrives): however
    the sender's event loop stalls or waits between taking a slot and writing the request, no one-second
    window, wherever it starts, holds more than the rate — also when sends start ahead of their slots
    and wait for them right before the write."""
    n = 600
    standin = start_standin(tmp_path / "standin.log")
    try:
        _send_through_stalls(tmp_path / "standin.log", standin.url, n, lead)
    finally:
        standin.stop()
    arrived = [r.at for r in read_log(tmp_path / "standin.log")]
    assert len(arrived) == n
    busiest = max_in_window(arrived)
    assert busiest <= STALL_RATE, f"{busiest} requests within one second at {STALL_RATE:g}/s"


class _LateRedis(RedisLimiter):
    """A Redis whose answers come back ``late`` seconds after it computed them, for the reservations
    ``when`` picks (the answer waits in a busy event loop, or on a slow network); ``away``: every
    request and every answer takes that long on the way (a Redis far away)."""

    def __init__(self, url: str, late: float, when: Callable[[int], bool], away: float = 0.0) -> None:
        super().__init__(url)
        script = self._script
        calls = itertools.count()

        async def slowly(*args: Any, **kwargs: Any) -> Any:
            if away:
                await asyncio.sleep(away)
            answer = await script(*args, **kwargs)
            if away:
                await asyncio.sleep(away)
            if when(next(calls)):
                await asyncio.sleep(late)
            return answer

        self._script = slowly  # type: ignore[assignment]


@needs_redis
def test_a_late_answer_from_redis_leaves_its_slots_where_they_are() -> None:
    """Two workers share a pace; one gets every third answer 30 ms late (more than the tolerance): its
    slots are placed on Redis' clock, not after the answer's arrival, so they are found late and given up
    rather than sent late, and together the workers stay within the rate in every window. Each worker has
    one send waiting at a time, so its slots are reserved a round trip ahead, not queued far ahead (with
    150 waiting, a late answer's slot was often still to come when it arrived, and nothing was late)."""
    assert REDIS_URL
    key = f"test-{uuid.uuid4().hex}"
    rate = 200.0

    async def go() -> tuple[list[float], int]:
        late = _LateRedis(REDIS_URL, 0.03, lambda i: i % 3 == 2)
        fine = RedisLimiter(REDIS_URL)
        try:
            slow = Pacer(late, key, rate, 0.012)
            sent = await _run([slow, Pacer(fine, key, rate, 0.012)], 150, waiting=1)
            return sent, slow.lost
        finally:
            await fine.redis.delete(REDIS_PREFIX + key)
            await late.aclose()
            await fine.aclose()

    sent, lost = asyncio.run(go())
    assert len(sent) == 300
    assert lost > 0  # the late answers' slots were given up
    assert max_in_window(sent) <= rate


@needs_redis
def test_a_redis_that_is_always_slow_still_paces() -> None:
    """A Redis far away (every round trip takes longer than the tolerance) is not "late": the shortest
    round trip seen is the baseline, so its slots are used, not all given up."""
    assert REDIS_URL
    key = f"test-{uuid.uuid4().hex}"

    async def go() -> tuple[list[float], int]:
        far = _LateRedis(REDIS_URL, 0.0, lambda i: False, away=0.005)
        try:
            pacer = Pacer(far, key, 100.0, 0.012)
            return await _run([pacer], 60), pacer.lost
        finally:
            await far.redis.delete(REDIS_PREFIX + key)
            await far.aclose()

    sent, lost = asyncio.run(go())
    assert len(sent) == 60
    assert lost < len(sent)  # some, when an answer takes longer than the others; not every slot


def test_serve_with_several_processes_refuses_to_pace_each_on_its_own(tmp_path: Path) -> None:
    """Without Redis, each of N serving processes' workers would pace every sender by itself — N times
    the sender's rate: ``tidings serve --processes N`` refuses (exit code 2), before touching anything."""
    database = tmp_path / "tidings.db"
    env = tidings_env(f"sqlite:///{database}", tmp_path, Fernet.generate_key().decode())
    refused = subprocess.run(
        [*TIDINGS, "serve", "--processes", "2", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "TIDINGS_REDIS_URL" in refused.stderr and "--no-worker" in refused.stderr
    assert not database.exists()  # nothing was migrated, nothing served


@needs_redis
def test_a_stepped_redis_clock_restarts_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis' clock jumps two seconds ahead (a wall clock stepped): the offset estimated before cannot
    explain the next answer, so it is estimated afresh — slots are not placed two seconds away. Our clock
    is the test's: each answer takes a millisecond of it (two once stepped: slower than the answers
    before, which stay the quickest), and Redis reads its clock, 1,000 s ahead of ours, halfway."""
    assert REDIS_URL
    key = f"test-{uuid.uuid4().hex}"
    now = [500.0]
    _frozen_clock(monkeypatch, now)

    class Stepped(RedisLimiter):
        step = 0.0

        async def _call(self, key: str, interval: float, n: int, lead: float) -> tuple[int, int]:
            delay, _ = await super()._call(key, interval, n, lead)  # the slot, as Redis reserves it
            trip = 0.002 if self.step else 0.001
            now[0] += trip / 2
            redis_now = now[0] + 1000.0 + self.step
            now[0] += trip / 2
            return delay, round(redis_now * 1e6)

    async def go() -> list[float]:
        limiter = Stepped(REDIS_URL)
        try:
            ahead = []
            for i in range(10):
                if i == 5:
                    limiter.step = 2.0
                got = await limiter.reserve(key, 0.001, 1)
                ahead.append(got.first - now[0])
            return ahead
        finally:
            await limiter.redis.delete(REDIS_PREFIX + key)
            await limiter.aclose()

    ahead = asyncio.run(go())
    assert all(-0.05 < a < 0.05 for a in ahead), ahead  # each first slot within a few ms, step or not
