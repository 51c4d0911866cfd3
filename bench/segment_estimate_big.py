"""Segment estimates on a big data set that already exists (e.g. the one ``bench.pages_data`` builds: a
million profiles, ten million events), opened READ-ONLY: ``segments.service.estimate`` for a few realistic
definitions, p50 (and min, max) of --runs after one warm-up run, and the plan of the statement it ran.

    .venv/bin/python -m bench.segment_estimate_big /work/bigdata/sqlite/pages-bench.json
    .venv/bin/python -m bench.segment_estimate_big /work/bigdata/pg/pages-bench.json --analyze

The JSON file is what ``bench.pages_data`` writes (``database_url`` and ``account.account_id``); its
``created`` time is "now" for the windows, so that the figures do not drift as the data ages. SQLite is
opened with ``mode=ro&immutable=1``; on PostgreSQL each estimate runs in a read-only transaction.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tidings.segments.service import estimate

PUNE = {"property": "City", "op": "equals", "value": "Pune"}
BOUGHT_TWICE = {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}}
NO_REFUND = {"did_not": "Refund"}

DEFINITIONS: list[tuple[str, dict[str, Any]]] = [
    ("property: City = Pune", PUNE),
    ("did Charged >= 2 times in 30 days", BOUGHT_TWICE),
    ("did not App Launched in 30 days", {"did_not": {"event": "App Launched", "in_the_last": {"days": 30}}}),
    ("did Charged >= 2 in 30 days AND did not Refund", {"and": [BOUGHT_TWICE, NO_REFUND]}),
    (
        "(Pune OR Mumbai) AND (Charged >= 2 in 30 days OR Coupon Applied) AND did not Refund",
        {
            "and": [
                {"or": [PUNE, {"property": "City", "op": "equals", "value": "Mumbai"}]},
                {"or": [BOUGHT_TWICE, {"did": "Coupon Applied"}]},
                NO_REFUND,
            ]
        },
    ),
    (
        "did Charged with Payment Mode = UPI and Amount >= 2000 in 7 days",
        {
            "did": {
                "event": "Charged",
                "where": [
                    {"property": "Payment Mode", "op": "equals", "value": "UPI"},
                    {"property": "Amount", "op": "gte", "value": 2000},
                ],
                "in_the_last": {"days": 7},
            }
        },
    ),
    (
        "did at most 1 Charged in 30 days (incl. never)",
        {"did": {"event": "Charged", "count": {"at_most": 1}, "in_the_last": {"days": 30}}},
    ),
]


def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1]
        return create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True),
        )
    return create_engine(url)


def run(engine: Engine, account: str, definition: dict[str, Any], now: datetime) -> tuple[int, float]:
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":
            session.execute(text("SET TRANSACTION READ ONLY"))
        started = time.perf_counter()
        n = estimate(session, account, definition, now)
        return n, time.perf_counter() - started


def explain(engine: Engine, account: str, definition: dict[str, Any], now: datetime, analyze: bool) -> str:
    """The plan of the counting statement ``estimate`` runs (caught as it is sent, then explained)."""
    seen: list[tuple[str, Any]] = []

    def catch(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if "count(" in statement.lower():
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", catch)
    try:
        run(engine, account, definition, now)
    finally:
        event.remove(engine, "before_cursor_execute", catch)
    statement, parameters = seen[-1]
    with engine.connect() as conn:
        raw: Any = conn.connection.driver_connection
        cur = raw.cursor()
        if engine.dialect.name == "postgresql":
            cur.execute("SET jit = off")
            how = "(ANALYZE, COSTS OFF, TIMING OFF) " if analyze else "(COSTS OFF) "
            cur.execute("EXPLAIN " + how + statement, parameters)
            lines = [row[0] for row in cur.fetchall()]
        else:
            cur.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            depth: dict[int, int] = {0: -1}  # node id -> indentation (SQLite gives each row's parent)
            lines = []
            for node, parent, _, detail in cur.fetchall():
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
        conn.rollback()
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="*", help="definition numbers (1-based)")
    parser.add_argument("--plans", action="store_true", help="print the plan of each statement")
    parser.add_argument("--analyze", action="store_true", help="PostgreSQL: EXPLAIN ANALYZE (runs it)")
    args = parser.parse_args()
    info = json.loads(args.bench_json.read_text())
    account = info["account"]["account_id"]
    now = datetime.fromisoformat(info["created"])
    engine = engine_for(info["database_url"])
    print(f"{engine.dialect.name}: account {account}, now {now.isoformat()}, p50 of {args.runs} runs")
    for number, (label, definition) in enumerate(DEFINITIONS, start=1):
        if args.only and number not in args.only:
            continue
        timings = []
        n = -1
        for attempt in range(args.runs + 1):
            n, seconds = run(engine, account, definition, now)
            if attempt:
                timings.append(seconds)
        print(
            f"{number}. {label}: {n:,} profiles — p50 {statistics.median(timings) * 1000:,.0f} ms "
            f"(min {min(timings) * 1000:,.0f}, max {max(timings) * 1000:,.0f})",
            flush=True,
        )
        if args.plans or args.analyze:
            print("   " + explain(engine, account, definition, now, args.analyze).replace("\n", "\n   "))
    engine.dispose()


if __name__ == "__main__":
    main()
