"""Segment counts over 100,000 profiles and 1,000,000 events: how long one past-behaviour segment takes
to count (the query an estimate, or a one-time campaign's audience, runs), on SQLite and PostgreSQL.

    .venv/bin/python -m bench.segment_bench
    TIDINGS_BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/tidings_e \\
        .venv/bin/python -m bench.segment_bench

SQLite runs in a temporary file. PostgreSQL runs when TIDINGS_BENCH_DATABASE_URL is set: its ``public``
schema is DROPPED and rebuilt, so give it a database of its own. Each count is checked against the same
definition evaluated in Python over the generated data, then timed (best and median of --runs, after one
warm-up run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tidings.accounts.models import Account
from tidings.db import Database
from tidings.segments.service import estimate

ACCOUNT = "BENCH-SEGMENTS"
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
CITIES = [
    "Pune",
    "Mumbai",
    "Delhi",
    "Bengaluru",
    "Chennai",
    "Kolkata",
    "Hyderabad",
    "Jaipur",
    "Surat",
    "Lucknow",
]
# name, share of all events
EVENT_MIX = [
    ("Viewed", 0.50),
    ("Added to cart", 0.17),
    ("Charged", 0.20),
    ("App Launched", 0.10),
    ("Refund", 0.03),
]
SPAN = timedelta(days=90)


@dataclass
class Data:
    cities: list[str]  # per profile (index = profile id - 1)
    events: list[tuple[int, str, int, float]]  # profile id, name, amount, age in seconds


def generate(profiles: int, events: int, seed: int = 1) -> Data:
    rnd = random.Random(seed)
    cities = [rnd.choices(CITIES, weights=[10, 14, 14, 12, 10, 10, 10, 8, 6, 6])[0] for _ in range(profiles)]
    names = [name for name, _ in EVENT_MIX]
    weights = [share for _, share in EVENT_MIX]
    rows = [
        (
            rnd.randint(1, profiles),
            rnd.choices(names, weights)[0],
            rnd.randint(50, 5000),
            rnd.uniform(0, SPAN.total_seconds()),
        )
        for _ in range(events)
    ]
    return Data(cities, rows)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load(db: Database, data: Data) -> float:
    """Bulk-load the data (driver-level executemany on SQLite, COPY on PostgreSQL); seconds taken."""
    started = time.perf_counter()
    created = NOW.replace(tzinfo=None)
    postgres = db.engine.dialect.name == "postgresql"
    with db.session() as session:
        session.add(Account(id=ACCOUNT, name="bench", passcode_hash="0" * 64, timezone="UTC"))
    with db.engine.begin() as conn:
        raw: Any = conn.connection.driver_connection
        cur = raw.cursor()
        profile_rows = [
            (i, ACCOUNT, f"user-{i}", json.dumps({"City": city, "Age": 18 + i % 50}), i % 1_000_003)
            for i, city in enumerate(data.cities, start=1)
        ]
        event_rows = [
            (
                ACCOUNT,
                profile_id,
                name,
                json.dumps({"Amount": amount, "Currency": "INR"} if name in ("Charged", "Refund") else {}),
                created - timedelta(seconds=age),
            )
            for profile_id, name, amount, age in data.events
        ]
        if postgres:
            with cur.copy(
                "COPY profiles (id, account_id, identity, properties, seed, phone, whatsapp_opt_in, "
                "created_at, updated_at) FROM STDIN"
            ) as copy:
                for pid, account, identity, props, seed in profile_rows:
                    copy.write_row((pid, account, identity, props, seed, None, True, created, created))
            cur.execute("SELECT setval(pg_get_serial_sequence('profiles', 'id'), %s)", (len(profile_rows),))
            with cur.copy(
                "COPY events (account_id, profile_id, name, properties, ts, created_at) FROM STDIN"
            ) as copy:
                for row in event_rows:
                    copy.write_row((*row, created))
        else:
            # UTCDateTime on SQLite: naive UTC text, as SQLAlchemy writes it
            def stamp(moment: datetime) -> str:
                return moment.strftime("%Y-%m-%d %H:%M:%S.%f")

            at = stamp(created)
            for chunk in _chunks(profile_rows, 50_000):
                cur.executemany(
                    "INSERT INTO profiles (id, account_id, identity, properties, seed, phone, "
                    "whatsapp_opt_in, created_at, updated_at) VALUES (?, ?, ?, ?, ?, NULL, 1, ?, ?)",
                    [(*row, at, at) for row in chunk],
                )
            for chunk in _chunks(event_rows, 100_000):
                cur.executemany(
                    "INSERT INTO events (account_id, profile_id, name, properties, ts, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(a, p, n, props, stamp(ts), at) for a, p, n, props, ts in chunk],
                )
    # Statistics for the planner; on PostgreSQL also the visibility map (index-only scans), as autovacuum
    # would leave it after a bulk load.
    if postgres:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


# ----------------------------------------------------------------------------------------------- segments

PUNE = {"property": "City", "op": "equals", "value": "Pune"}
BOUGHT_TWICE = {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}}
NO_REFUND = {"not": {"did": "Refund"}}
BIG_SPENDER = {
    "did": {
        "event": "Charged",
        "where": [{"property": "Amount", "op": "gte", "value": 4000}],
        "in_the_last": {"days": 7},
    }
}

SEGMENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "City = Pune AND did Charged >= 2x in 30 days AND NOT did Refund",
        {"and": [PUNE, BOUGHT_TWICE, NO_REFUND]},
    ),
    ("did Charged >= 2x in 30 days AND NOT did Refund (all profiles)", {"and": [BOUGHT_TWICE, NO_REFUND]}),
    ("did Charged with Amount >= 4000 in the last 7 days", BIG_SPENDER),
    ("City = Pune", PUNE),
]


def expected(data: Data, definition: dict[str, Any]) -> int:
    """The same definitions, evaluated over the generated rows in Python."""
    month, week = timedelta(days=30).total_seconds(), timedelta(days=7).total_seconds()
    charged_month: Counter[int] = Counter()
    big_week: set[int] = set()
    refunded: set[int] = set()
    for profile_id, name, amount, age in data.events:
        if name == "Charged" and age <= month:
            charged_month[profile_id] += 1
        if name == "Charged" and age <= week and amount >= 4000:
            big_week.add(profile_id)
        if name == "Refund":
            refunded.add(profile_id)
    ids = range(1, len(data.cities) + 1)

    def pune(i: int) -> bool:
        return data.cities[i - 1] == "Pune"

    def loyal(i: int) -> bool:
        return charged_month[i] >= 2 and i not in refunded

    checks: dict[str, Callable[[int], bool]] = {
        json.dumps({"and": [PUNE, BOUGHT_TWICE, NO_REFUND]}): lambda i: pune(i) and loyal(i),
        json.dumps({"and": [BOUGHT_TWICE, NO_REFUND]}): loyal,
        json.dumps(BIG_SPENDER): lambda i: i in big_week,
        json.dumps(PUNE): pune,
    }
    check = checks[json.dumps(definition)]
    return sum(1 for i in ids if check(i))


def time_count(db: Database, definition: dict[str, Any], runs: int) -> tuple[int, list[float]]:
    timings = []
    n = -1
    for run in range(runs + 1):
        with db.session() as session:
            started = time.perf_counter()
            n = estimate(session, ACCOUNT, definition, NOW)
            elapsed = time.perf_counter() - started
        if run:  # the first run warms the caches
            timings.append(elapsed)
    return n, timings


def bench(url: str, data: Data, runs: int) -> None:
    if url.startswith("postgresql"):
        reset = Database(url)
        with reset.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        reset.dispose()
    db = Database(url)
    db.migrate()
    name = db.engine.dialect.name
    with db.engine.connect() as conn:
        version = conn.execute(
            text("SELECT sqlite_version()" if name == "sqlite" else "SHOW server_version")
        ).scalar()
    seconds = load(db, data)
    sizes = f"{len(data.cities):,} profiles and {len(data.events):,} events"
    print(f"\n{name} {version}: loaded {sizes} in {seconds:.1f} s")
    for label, definition in SEGMENTS:
        n, timings = time_count(db, definition, runs)
        want = expected(data, definition)
        assert n == want, f"{label}: SQL counted {n}, Python {want}"
        print(
            f"  {label}: {n:,} profiles — best {min(timings) * 1000:.0f} ms, "
            f"median {statistics.median(timings) * 1000:.0f} ms ({runs} runs)"
        )
    db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    data = generate(args.profiles, args.events)
    elapsed = time.perf_counter() - started
    print(f"generated {args.profiles:,} profiles and {args.events:,} events in {elapsed:.1f} s")
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory(prefix="tidings-segments-") as folder:
            bench(f"sqlite:///{Path(folder) / 'bench.db'}", data, args.runs)
    pg = os.environ.get("TIDINGS_BENCH_DATABASE_URL")
    if pg:
        bench(pg, data, args.runs)
    else:
        print("\n(set TIDINGS_BENCH_DATABASE_URL to run on PostgreSQL too)")


if __name__ == "__main__":
    main()
