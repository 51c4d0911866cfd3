"""End-to-end sending throughput, next to its ceiling, in one run.

* ceiling: the HTTP client the workers use (one shared ``httpx.AsyncClient``, the Meta provider's
  requests, the same concurrency) sending N messages to the fast stand-in, with no database at all;
* end to end: a one-time campaign of N recipients planned into the ledger, sent by ``tidings worker``
  processes with no rate limit, measured as rows recorded in the ledger per second.

    .venv/bin/python -m bench.throughput --messages 20000                      # SQLite, 1 worker
    .venv/bin/python -m bench.throughput --database-url postgresql+psycopg://postgres@127.0.0.1/tidings_f \\
        --workers 1 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import uvloop
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.cluster import start_standin, start_worker, stop, tidings_env
from tidings.accounts import integrations
from tidings.accounts.models import Integration
from tidings.accounts.service import create_account
from tidings.campaigns.models import Campaign
from tidings.campaigns.progress import open_work
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.config import Settings
from tidings.db import Base, Database, utcnow
from tidings.delivery.http import provider_client
from tidings.profiles.models import Profile
from tidings.profiles.service import profile_seed
from tidings.providers.base import OutboundMessage
from tidings.providers.meta import MetaProvider
from tidings.secrets import SecretBox
from tidings.templates.service import create_template


async def ceiling(url: str, n: int, concurrency: int) -> float:
    """Messages a second through the workers' HTTP client alone: ``concurrency`` senders, each sending
    the next message as soon as its previous one is answered."""
    http = provider_client()
    provider = MetaProvider(phone_number_id="1555000", access_token="t", base_url=url, http=http)

    async def run(numbers: Iterator[int]) -> None:
        for i in numbers:
            message = OutboundMessage(
                client_ref=str(i), to=f"+9198{10_000_000 + i}", template_name="shop:launch", params=[f"N{i}"]
            )
            result = await provider.send(message)
            assert result.outcome.value == "accepted", result

    warm = iter(range(min(500, n)))
    await asyncio.gather(*(run(warm) for _ in range(concurrency)))  # open the connections
    numbers = iter(range(n))
    began = time.perf_counter()
    await asyncio.gather(*(run(numbers) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    await http.aclose()
    return n / elapsed


def reset(db: Database) -> None:
    if db.engine.dialect.name == "postgresql":
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.migrate()
    with db.engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def plan(db: Database, box: SecretBox, standin_url: str, n: int, rate: float | None) -> tuple[str, int]:
    """An account on the stand-in, N opted-in profiles, and a one-time campaign scheduled a day ahead, so
    that a worker started meanwhile leaves it alone until ``start_now``."""
    with db.session() as session:
        account_id = create_account(session, box, "bench").account_id
        integrations.configure(
            session,
            box,
            account_id,
            kind="meta",
            settings={"phone_number_id": "1555000", "waba_id": "42", "base_url": standin_url},
            secrets={"access_token": "t", "app_secret": "s"},
        )
        integration = session.get(Integration, account_id)
        assert integration is not None
        integration.rate_limit = rate
    now = utcnow()
    rows = [
        {
            "account_id": account_id,
            "identity": f"u{i}",
            "phone": f"+9198{10_000_000 + i}",
            "whatsapp_opt_in": True,
            "properties": {"Name": f"N{i}"},
            "seed": profile_seed(account_id, f"u{i}"),
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n)
    ]
    with db.session() as session:
        for start in range(0, n, 5000):
            session.execute(Profile.__table__.insert(), rows[start : start + 5000])
        template = create_template(
            session, account_id, name="shop:launch", body="Hi {{1}}", category="UTILITY"
        )
        campaign = create_campaign(
            session,
            account_id,
            CampaignCreate(
                name="bench",
                template_id=template.id,
                variables=['{{ Profile.Name | default: "friend" }}'],
                target={"all": True},
                system_control_group=False,
                send_at=now + timedelta(days=1),
            ),
        )
        campaign_id = campaign.id
    return account_id, campaign_id


def start_now(session: Session, campaign_id: int) -> None:
    """Start the campaign of ``plan`` (its audience all queued at once): moved to now and claimed in one
    transaction, so a worker's own scheduler cannot claim it first."""
    campaign = session.get(Campaign, campaign_id)
    assert campaign is not None
    campaign.scheduled_at = utcnow()
    session.flush()
    assert start_campaign(session, campaign_id, utcnow())


def open_rows(db: Database, campaign_id: int) -> int:
    with db.session() as session:
        return open_work(session, campaign_id)


def end_to_end(
    database_url: str,
    workdir: Path,
    standin_url: str,
    n: int,
    workers: int,
    rate: float | None = None,
    poll: float = 0.02,
) -> tuple[float, float]:
    """(messages a second recorded in the ledger, seconds) for N messages sent by ``workers`` processes;
    the ledger is polled every ``poll`` seconds to see the end (the polls cost the database some CPU)."""
    settings = Settings()
    key = Fernet.generate_key().decode()
    box = SecretBox.from_settings(key, workdir)
    db = Database(database_url)
    reset(db)
    _account_id, campaign_id = plan(db, box, standin_url, n, rate)
    env = tidings_env(
        database_url, workdir, key, redis_url=settings.redis_url, extra={"TIDINGS_POLL_INTERVAL": "0.05"}
    )
    fleet = [start_worker(env, workdir / f"worker{i}.log", "info") for i in range(workers)]
    try:
        time.sleep(3)  # let them start (and find nothing to do yet)
        with db.session() as session:
            start_now(session, campaign_id)
        began = time.perf_counter()
        while open_rows(db, campaign_id):
            time.sleep(poll)
        elapsed = time.perf_counter() - began
    finally:
        for process in fleet:
            stop(process)
        db.dispose()
    return n / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary folder")
    parser.add_argument("--workers", type=int, action="append", help="worker processes (repeatable)")
    parser.add_argument("--concurrency", type=int, default=Settings().dispatch_concurrency)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
    standin = start_standin(workdir / "standin.log")
    try:
        top = uvloop.run(ceiling(standin.url, args.messages, args.concurrency))  # as the workers
        print(f"ceiling (HTTP client alone, concurrency {args.concurrency}): {top:,.0f} msg/s")
        for workers in args.workers or [1]:
            rate, elapsed = end_to_end(database_url, workdir, standin.url, args.messages, workers)
            backend = database_url.split(":", 1)[0].split("+", 1)[0]
            print(
                f"end to end ({backend}, {workers} worker{'s' if workers > 1 else ''}): {rate:,.0f} msg/s "
                f"({args.messages:,} in {elapsed:.1f} s) = {rate / top:.2f} of the ceiling"
            )
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
