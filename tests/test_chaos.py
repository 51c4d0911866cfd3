"""Chaos: a 20,000-recipient campaign through a stand-in provider on loopback while worker processes are
killed with SIGKILL and restarted, and the provider answers 10 % of calls with 429 or 500 and some late.
Every recipient gets exactly one message at the provider, the stats match the provider's log exactly,
and the sender's rate limit is never exceeded in any one-second window of the provider's clock, wherever
it starts (the busiest sliding window, not calendar seconds).

On PostgreSQL: three ``tidings worker`` processes sharing the rate limit through Redis, and a
``tidings serve --no-worker`` for the webhooks. On SQLite: one worker and the server, the worker killed.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from tests.cluster import (
    free_port,
    max_in_window,
    per_second,
    read_log,
    start_server,
    start_standin,
    start_worker,
    stop,
    tidings_env,
)
from tests.conftest import basic
from tests.helpers import insert_profiles, phone
from tidings.accounts import integrations
from tidings.accounts.service import NewAccount
from tidings.config import Settings
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.secrets import SecretBox

REDIS_URL = os.environ.get("TIDINGS_TEST_REDIS_URL")
if os.environ.get("CI") and not REDIS_URL:
    raise pytest.UsageError("CI must set TIDINGS_TEST_REDIS_URL: the chaos test runs on Redis")

N = 20_000
RATE = 500
APP_SECRET = "chaos-app-secret"
WORKER_SETTINGS = {
    "TIDINGS_LEASE_SECONDS": "10",
    "TIDINGS_RECONCILE_SECONDS": "10",
    "TIDINGS_POLL_INTERVAL": "0.05",
    "TIDINGS_RETRY_BASE": "0.2",
    "TIDINGS_RETRY_CAP": "2",
    "TIDINGS_MAX_ATTEMPTS": "40",  # 10 % random refusals must never exhaust a row's attempts
    "TIDINGS_DISPATCH_BATCH": "200",
}


def _setup(db: Database, box: SecretBox, account: NewAccount, standin_url: str) -> None:
    insert_profiles(
        db,
        account.account_id,
        [{"identity": f"u{i}", "phone": phone(i), "properties": {"Name": f"N{i}"}} for i in range(N)],
    )
    with db.session() as session:
        integrations.configure(
            session,
            box,
            account.account_id,
            kind="meta",
            settings={"phone_number_id": "1555000", "waba_id": "42", "base_url": standin_url},
            secrets={"access_token": "chaos-token", "app_secret": APP_SECRET},
            rate_limit=RATE,
        )


def _ledger(db: Database, campaign_id: int) -> Counter[str]:
    with db.session() as session:
        rows = session.execute(
            select(Message.state, func.count())
            .where(Message.campaign_id == campaign_id)
            .group_by(Message.state)
        )
        return Counter({state: n for state, n in rows})


def _rows_of(db: Database, campaign_id: int, phones: set[str]) -> list[tuple[object, ...]]:
    """The ledger rows of these recipients, to say why they got nothing."""
    columns = (Message.id, Message.to_phone, Message.state, Message.reason, Message.attempts)
    with db.session() as session:
        rows = session.execute(
            select(*columns, Message.error_detail, Message.dispatched_at, Message.sent_at).where(
                Message.campaign_id == campaign_id, Message.to_phone.in_(sorted(phones)[:20])
            )
        )
        return [tuple(row) for row in rows]


def test_chaos(
    db: Database,
    box: SecretBox,
    account: NewAccount,
    settings: Settings,
    tmp_path: Path,
) -> None:
    postgres = db.engine.dialect.name == "postgresql"
    if postgres and not REDIS_URL:
        pytest.skip("TIDINGS_TEST_REDIS_URL is not set")
    n_workers = 3 if postgres else 1
    rng = random.Random(5)
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    standin = start_standin(
        tmp_path / "standin.log",
        "--fail", "0.1", "--slow", "0.05", "--delay", "0.3", "--seed", "7",
        "--webhook", f"{server_url}/webhooks/meta/{account.account_id}",
        "--app-secret", APP_SECRET,
        "--statuses", "sent,delivered", "--delivered", "0.6",
    )  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    kills = 0
    try:
        _setup(db, box, account, standin.url)
        env = tidings_env(
            db.url,
            tmp_path,
            str(settings.secret_key),
            redis_url=REDIS_URL if postgres else None,
            extra=WORKER_SETTINGS,
        )
        server = start_server(env, port, tmp_path / "server.log")
        processes.append(server)
        fleet = [start_worker(env, tmp_path / f"worker{i}.log") for i in range(n_workers)]
        processes.extend(fleet)
        with httpx.Client(base_url=server_url, headers=basic(account), timeout=30) as http:
            template = http.post(
                "/api/v1/templates",
                json={"name": "shop:launch", "category": "MARKETING", "body": "Hi {{1}}"},
            )
            assert template.status_code == 201, template.text
            created = http.post(
                "/api/v1/campaigns",
                json={
                    "name": "chaos",
                    "template_id": template.json()["id"],
                    "variables": ['{{ Profile.Name | default: "friend" }}'],
                    "system_control_group": False,
                },
            )
            assert created.status_code == 201, created.text
            campaign_id = created.json()["id"]

            # Kill a worker every few seconds while the campaign runs; restart it after a moment.
            deadline = time.monotonic() + 600
            next_kill = time.monotonic() + rng.uniform(3, 6)
            while True:
                state = http.get(f"/api/v1/campaigns/{campaign_id}").json()["state"]
                if state == "completed":
                    break
                assert state == "running" or state == "scheduled", state
                assert time.monotonic() < deadline, f"the campaign did not finish: {_ledger(db, campaign_id)}"
                if time.monotonic() >= next_kill and kills < 6:
                    victim = rng.randrange(len(fleet))
                    fleet[victim].kill()  # SIGKILL: no clean-up of any kind
                    fleet[victim].wait()
                    kills += 1
                    time.sleep(rng.uniform(0.2, 1.5))
                    fleet[victim] = start_worker(env, tmp_path / f"worker{victim}.log")
                    processes.append(fleet[victim])
                    next_kill = time.monotonic() + rng.uniform(3, 6)
                time.sleep(0.2)
            progress = http.get(f"/api/v1/campaigns/{campaign_id}/progress").json()
            # Every status the provider reports has reached us before the books are closed.
            while standin.stats()["statuses_pending"]:
                assert time.monotonic() < deadline, "the stand-in's webhooks were not all taken"
                time.sleep(0.2)
            stats = http.get(f"/api/v1/campaigns/{campaign_id}/stats").json()
    finally:
        for process in processes:
            stop(process, timeout=20)
        standin.stop()

    assert kills >= 1
    log = read_log(standin.log)
    accepted = [r for r in log if r.status == 200]
    refused = [r for r in log if r.status != 200]
    # Exactly one message at the provider per recipient, and for the right ledger row.
    per_phone = Counter(r.to for r in accepted)
    missing = {phone(i) for i in range(N)} - {f"+{to}" for to in per_phone}
    assert not missing, f"no message reached {len(missing)} recipients: {_rows_of(db, campaign_id, missing)}"
    assert max(per_phone.values()) == 1
    assert {r.to for r in accepted} == {phone(i).removeprefix("+") for i in range(N)}
    assert len({r.ref for r in accepted}) == N
    assert refused, "the stand-in should have refused some calls"
    # The stats are the stand-in's log.
    assert stats["audience"] == N and stats["pending"] == 0
    assert stats["sent"] == len(accepted)
    assert stats["errors"] == 0 and stats["errors_by_reason"] == {}
    assert stats["delivered"] == sum(1 for r in accepted if "delivered" in r.reported)
    assert progress["remaining"] == 0 and progress["sent"] == N
    # Never above the rate in any one-second window of the provider's clock, wherever it starts: the
    # arrival times sorted, the most of them in any [t, t + 1 s) (every call counts, refused or not).
    arrivals = [r.at for r in log]
    busiest = max_in_window(arrivals)
    print(
        f"\nchaos ({'postgresql' if postgres else 'sqlite'}, {n_workers} workers, {kills} kills): "
        f"{len(log)} calls, {len(refused)} refused, busiest calendar second "
        f"{max(per_second(arrivals).values())}, busiest sliding second {busiest}, "
        f"{len(log) / (log[-1].at - log[0].at):.0f} calls/s"
    )
    assert busiest <= RATE, f"{busiest} calls within one second, more than {RATE}"
