"""Stop means stop, on SQLite and PostgreSQL: once ``POST /api/v1/campaigns/{id}/stop`` has answered, no
further message of the campaign reaches the provider — the dispatcher looks at the campaign's state right
before each provider call and gives back what it has not sent (queued again, the attempt not counted),
and the stop waits until the workers hold nothing of the campaign. And a lane's stock (rows marked
dispatched ahead of their calls) follows its sender's rate when the rate changes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from tests.cluster import StandIn, read_log, start_standin
from tests.conftest import basic
from tests.helpers import phone, running_campaign
from tidings.accounts import integrations
from tidings.accounts.models import Integration
from tidings.accounts.service import NewAccount
from tidings.campaigns.lifecycle import pause_campaign
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.delivery import dispatcher as dispatching
from tidings.delivery.claims import in_hand
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.http import provider_client
from tidings.delivery.models import Message
from tidings.providers.pool import ProviderPool
from tidings.secrets import SecretBox


def _campaign(db: Database, account: NewAccount, n: int) -> int:
    """A running one-time campaign with ``n`` recipients queued."""
    return running_campaign(db, account.account_id, [phone(i) for i in range(n)])


def _on_standin(db: Database, box: SecretBox, account: NewAccount, url: str, rate: float | None) -> None:
    with db.session() as session:
        integration = integrations.configure(
            session,
            box,
            account.account_id,
            kind="meta",
            settings={"phone_number_id": "1555000", "waba_id": "42", "base_url": url},
            secrets={"access_token": "t", "app_secret": "s"},
        )
        integration.rate_limit = rate


@contextmanager
def _dispatching(db: Database, settings: Settings, box: SecretBox) -> Iterator[Dispatcher]:
    """A dispatcher running on its own event loop in a thread, as a worker runs it, over the worker's
    HTTP client."""
    pool = ProviderPool(db, settings, box)
    pool.http = provider_client()
    dispatcher = Dispatcher(db, settings, pool)
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        ready.set()
        try:
            await dispatcher.run(stop)
        finally:
            await pool.aclose()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield dispatcher
    finally:
        loop, stop = holder["loop"], holder["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive()


def _wait_for(condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "it did not get there"
        time.sleep(0.02)


def _states(db: Database, campaign_id: int) -> dict[str, int]:
    with db.session() as session:
        rows = session.execute(
            select(Message.state, func.count())
            .where(Message.campaign_id == campaign_id)
            .group_by(Message.state)
        )
        return {state: n for state, n in rows}


@pytest.mark.parametrize("rate", [400.0, None], ids=["paced", "unlimited"])
def test_nothing_of_a_campaign_reaches_the_provider_after_its_stop_returns(
    db: Database,
    box: SecretBox,
    account: NewAccount,
    settings: Settings,
    tmp_path: Path,
    client: TestClient,
    rate: float | None,
) -> None:
    """A campaign sending at full speed is stopped: what the provider received when the stop answered
    is all it ever receives, the ledger says exactly that (every message the provider took is sent, every
    other one is queued again, never dispatched, its attempt not counted), and nothing is in a worker's
    hands."""
    n = 4000
    campaign_id = _campaign(db, account, n)
    standin: StandIn = start_standin(tmp_path / "standin.log", "--slow", "0.2", "--delay", "0.05")
    try:
        _on_standin(db, box, account, standin.url, rate)
        with _dispatching(db, settings, box):
            _wait_for(lambda: standin.stats()["requests"] >= 300)
            stopped = client.post(f"/api/v1/campaigns/{campaign_id}/stop", headers=basic(account))
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["state"] == "stopped"
            at_stop = standin.stats()["requests"]
            # The worker goes on running (it has other work to look for); the campaign's sends do not.
            time.sleep(1.0)
            assert standin.stats()["requests"] == at_stop
    finally:
        standin.stop()
    received = read_log(tmp_path / "standin.log")
    assert len(received) == at_stop < n
    states = _states(db, campaign_id)
    assert states == {"sent": at_stop, "queued": n - at_stop}
    with db.session() as session:
        queued = session.execute(
            select(func.count(), func.max(Message.attempts), func.count(Message.dispatched_at)).where(
                Message.campaign_id == campaign_id, Message.state == "queued"
            )
        ).one()
    assert tuple(queued) == (n - at_stop, 0, 0)  # given back as if never claimed


def test_a_paused_campaign_stops_at_the_last_look_too(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, tmp_path: Path, client: TestClient
) -> None:
    """Pausing (the error brake, or by hand in the database) halts the sends the workers hold in a few
    milliseconds as well; resuming sends the rest, each once."""
    n = 1500
    campaign_id = _campaign(db, account, n)
    standin = start_standin(tmp_path / "standin.log")
    try:
        _on_standin(db, box, account, standin.url, 300.0)
        with _dispatching(db, settings, box) as dispatcher:
            _wait_for(lambda: standin.stats()["requests"] >= 100)
            with db.session() as session:
                assert pause_campaign(session, campaign_id, "paused by a test")

            def let_go() -> bool:
                with db.session() as session:
                    return in_hand(session, campaign_id, utcnow()) == 0

            _wait_for(let_go, timeout=10)
            at_pause = standin.stats()["requests"]
            time.sleep(0.5)
            assert standin.stats()["requests"] == at_pause
            assert dispatcher.in_hand == 0
            resumed = client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=basic(account))
            assert resumed.status_code == 200, resumed.text
            _wait_for(lambda: _states(db, campaign_id) == {"sent": n})
    finally:
        standin.stop()
    received = read_log(tmp_path / "standin.log")
    assert len(received) == n and len({r.ref for r in received}) == n


def test_a_lanes_stock_follows_its_senders_rate(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings
) -> None:
    """The rows a lane marks dispatched ahead of their calls are half a second of its sender's rate: when
    the integration's rate changes, the lane's stock, chunk and capacity follow at the next refresh."""
    _on_standin(db, box, account, "http://127.0.0.1:9", 1000.0)
    dispatcher = Dispatcher(db, settings, ProviderPool(db, settings, box))

    async def go() -> list[tuple[int, int, int, float | None]]:
        shapes = []
        for rate in (1000.0, 10.0, 200.0):
            with db.session() as session:
                integration = session.get(Integration, account.account_id)
                assert integration is not None
                integration.rate_limit = rate
            for lane in dispatcher._lanes.values():
                lane.checked -= dispatching.SENDER_REFRESH + 1  # due for a refresh
            await dispatcher._lanes_for({account.account_id})
            lane = dispatcher._lanes[account.account_id]
            assert lane.pacer is not None
            shapes.append((lane.room.size, lane.chunk, lane.capacity, lane.pacer.rate))
        for lane in dispatcher._lanes.values():
            assert lane.task is not None
            lane.task.cancel()
        return shapes

    shapes = asyncio.run(go())
    assert shapes == [(500, 100, 2000, 1000.0), (5, 1, 20, 10.0), (100, 20, 400, 200.0)]
