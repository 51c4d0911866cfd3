"""Campaign benchmarks (issue 4): planning a 1,000,000-profile audience into the ledger, and a live
trigger's latency from the end of ingest to the provider call.

    .venv/bin/python -m bench.campaign_bench [--profiles 1000000] [--triggers 300]
    TIDINGS_BENCH_DATABASE_URL=postgresql+psycopg://… adds the PostgreSQL planning figure.

Planning: one ``INSERT … SELECT`` writes every recipient's ledger row (opt-in, phone, personalization
check, control group, state); the figure is the time of ``start_campaign`` and the process's peak
memory before and after it (flat: no row passes through Python).
Trigger: a single-action campaign on the sandbox-free path — the account's provider is the fast Meta
stand-in (tests/standins/fast_meta.py) — the real server with its worker on loopback, one
``POST /1/upload`` of one event at a time; latency = the stand-in's arrival time of the message minus
the moment the upload answered (ingest committed), matched by the ledger id the message carries.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import insert, select, text

from tests.cluster import start_standin
from tidings.accounts.integrations import configure
from tidings.accounts.service import create_account
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.profiles.service import profile_seed
from tidings.secrets import SecretBox
from tidings.templates.service import create_template


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fresh(url: str) -> Database:
    db = Database(url)
    if url.startswith("postgresql"):
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    db.migrate()
    return db


def planning(url: str, n: int, box: SecretBox) -> None:
    db = _fresh(url)
    with db.session() as session:
        account_id = create_account(session, box, "bench").account_id
        template_id = create_template(
            session, account_id, name="bench:hello", body="Hi {{1}}", category="MARKETING"
        ).id
    now = utcnow()
    started = time.perf_counter()
    chunk = 50_000
    for start in range(0, n, chunk):
        rows = [
            {
                "account_id": account_id,
                "identity": f"u{i}",
                "phone": f"+91{9_000_000_000 + i}",
                "whatsapp_opt_in": i % 10 != 0,
                "properties": {"Name": f"N{i}"} if i % 7 else {},
                "seed": profile_seed(account_id, f"u{i}"),
                "created_at": now,
                "updated_at": now,
            }
            for i in range(start, min(n, start + chunk))
        ]
        with db.session() as session:
            session.execute(insert(Profile), rows)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE profiles"))
    loaded = time.perf_counter() - started
    with db.session() as session:
        campaign_id = create_campaign(
            session,
            account_id,
            CampaignCreate(
                name="bench",
                template_id=template_id,
                variables=["{{ Profile.Name }}"],
                control_group_pct=10,
                send_at=now,
            ),
        ).id
    before = _peak_mb()
    started = time.perf_counter()
    with db.session() as session:
        planned = start_campaign(session, campaign_id, now)
    elapsed = time.perf_counter() - started
    after = _peak_mb()
    with db.session() as session:
        states = dict(
            session.execute(
                select(Message.state, text("count(*)"))
                .where(Message.campaign_id == campaign_id)
                .group_by(Message.state)
            ).all()
        )
    print(
        f"planning [{db.engine.dialect.name}]: {planned:,} ledger rows in {elapsed:.2f} s "
        f"({planned / elapsed:,.0f} rows/s); peak memory {before:.0f} MB before, {after:.0f} MB after; "
        f"states {states}; (profiles loaded in {loaded:.0f} s)"
    )
    db.dispose()


def trigger_latency(count: int, workdir: Path) -> None:
    from tidings.app import asgi_app, create_app
    from tidings.server import bind, serving

    standin = start_standin(workdir / "standin.log")
    try:
        url = f"sqlite:///{workdir / 'trigger.db'}"
        db = _fresh(url)
        sock = bind()
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings().model_copy(
            update={
                "data_dir": workdir,
                "database_url": url,
                "public_url": base,
                "secret_key": None,
                "poll_interval": 0.2,
            }
        )
        box = SecretBox.from_settings(None, workdir)
        with db.session() as session:
            new = create_account(session, box, "bench")
            configure(
                session,
                box,
                new.account_id,
                kind="meta",
                settings={"phone_number_id": "1555000", "base_url": standin.url},
                secrets={"access_token": "t", "app_secret": "s"},
                rate_limit=1000,
            )
            template_id = create_template(
                session, new.account_id, name="shop:thanks", body="Thanks {{1}}", category="UTILITY"
            ).id
            campaign_id = create_campaign(
                session,
                new.account_id,
                CampaignCreate(
                    name="live",
                    kind="single_action",
                    template_id=template_id,
                    variables=["{{ Event.Item }}"],
                    trigger={"event": "Charged"},
                    system_control_group=False,
                ),
            ).id
        with db.session() as session:
            start_campaign(session, campaign_id, utcnow())
        headers = {"X-CleverTap-Account-Id": new.account_id, "X-CleverTap-Passcode": new.passcode}
        profiles = [
            {
                "identity": f"u{i}",
                "type": "profile",
                "profileData": {"Phone": f"+91{9_000_000_000 + i}", "MSG-whatsapp": True},
            }
            for i in range(count)
        ]
        answered: dict[str, float] = {}
        app = create_app(settings, db, run_worker=True)
        with serving(asgi_app(app), sock), httpx.Client(base_url=base, timeout=30) as http:
            http.post("/1/upload", json={"d": profiles}, headers=headers).raise_for_status()
            for i in range(count):
                event = {
                    "identity": f"u{i}",
                    "type": "event",
                    "evtName": "Charged",
                    "evtData": {"Item": "shoes"},
                    "ts": int(datetime.now(UTC).timestamp()),
                }
                http.post("/1/upload", json={"d": [event]}, headers=headers).raise_for_status()
                answered[f"u{i}"] = time.time()
                time.sleep(0.02)
            time.sleep(2)
        with db.session() as session:
            refs = dict(
                session.execute(
                    select(text("messages.id"), Profile.identity)
                    .select_from(Message)
                    .join(Profile, Profile.id == Message.profile_id)
                    .where(Message.campaign_id == campaign_id)
                ).all()
            )
        arrivals: dict[str, float] = {}
        for line in (workdir / "standin.log").read_text().splitlines():
            at, status, ref, *_ = line.split()
            if status == "200" and ref.isdigit() and int(ref) in refs:
                arrivals.setdefault(refs[int(ref)], float(at))
        latencies = sorted((arrivals[k] - answered[k]) * 1000 for k in answered if k in arrivals)
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else max(latencies)
        print(
            f"live trigger (end of ingest → provider call), {len(latencies)} of {count} events: "
            f"p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, "
            f"max {max(latencies):.1f} ms (poll interval {settings.poll_interval} s)"
        )
        db.dispose()
    finally:
        standin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Campaign benchmarks")
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--triggers", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        box = SecretBox.from_settings(None, work)
        if args.triggers:
            trigger_latency(args.triggers, work)
        if args.profiles:
            planning(f"sqlite:///{work / 'plan.db'}", args.profiles, box)
            pg = os.environ.get("TIDINGS_BENCH_DATABASE_URL")
            if pg:
                planning(pg, args.profiles, box)


if __name__ == "__main__":
    main()
