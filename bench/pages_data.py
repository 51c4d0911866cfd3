"""The data set of the dashboard benchmark (bench/pages.py, issue 11): one account with 1,000,000
profiles, 10,000,000 events, 20 templates, 30 saved segments and 500 campaigns of the four types in every
state, with about 2,000 ledger rows per completed campaign; and a few small accounts beside it, whose
rows exist but must not matter.

    .venv/bin/python -m bench.pages_data --database-url sqlite:////work/bigdata/sqlite/pages.db
    .venv/bin/python -m bench.pages_data --data-dir /work/bigdata/pg \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/tidings_h3big
    .venv/bin/python -m bench.pages_data --database-url sqlite:////tmp/small/pages.db \\
        --profiles 2000 --events 20000 --campaigns 40

The database is emptied first (the SQLite file is removed; PostgreSQL's ``public`` schema is DROPPED and
rebuilt: give it a database of its own), migrated with tidings' own migrations, and filled: accounts,
users, API keys, templates, segments and campaigns through the services (so they are what the product
writes), profiles, events and ledger rows in bulk (COPY on PostgreSQL, executemany of large batches on
SQLite, with the secondary indexes built after the load). The rows are the same on both databases for
the same sizes (one random seed), but for the account ids, passcodes and times (relative to the load).
``<data dir>/pages-bench.json`` records what bench/pages.py needs: the database, the account and its
passcode, the dashboard sign-in, and the ids of a campaign, a segment and a profile to open; the data dir
also holds the secret key (``secret.key``) the integration's secrets are sealed with, so serve with
``TIDINGS_DATA_DIR`` set to it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sqlite3
import time
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import Any

from sqlalchemy import Index, Table, case, func, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateIndex

from tidings.accounts.service import create_account, update_account
from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles.models import Event, Profile
from tidings.profiles.service import PHONE, WHATSAPP, profile_seed
from tidings.secrets import SecretBox
from tidings.segments.service import create_segment
from tidings.templates.service import create_template
from tidings.users.service import create_api_key, create_user

EMAIL = "bench@example.com"
PASSWORD = "bench-password-1"
MANIFEST = "pages-bench.json"
SPAN = timedelta(days=90)  # events and campaigns over the last 90 days
OPT_IN = 0.60  # share of profiles opted in to WhatsApp
OTHER_ACCOUNTS = 3

FIRST = (
    "Asha",
    "Aarav",
    "Priya",
    "Rohan",
    "Ananya",
    "Vikram",
    "Diya",
    "Arjun",
    "Kavya",
    "Rahul",
    "Meera",
    "Karan",
    "Isha",
    "Aditya",
    "Neha",
    "Sanjay",
    "Pooja",
    "Rajesh",
    "Sneha",
    "Amit",
    "Lakshmi",
    "Suresh",
    "Divya",
    "Manoj",
    "Anjali",
    "Ravi",
    "Nisha",
    "Vivek",
    "Shreya",
    "Deepak",
    "Fatima",
    "Imran",
    "Zoya",
    "Farhan",
    "Simran",
    "Harpreet",
    "Gurpreet",
    "Joseph",
    "Mary",
    "Thomas",
    "Anil",
    "Sunita",
    "Gita",
    "Prakash",
    "Rekha",
    "Mohan",
    "Swati",
)
LAST = (
    "Sharma",
    "Verma",
    "Iyer",
    "Nair",
    "Reddy",
    "Patel",
    "Shah",
    "Mehta",
    "Gupta",
    "Singh",
    "Kumar",
    "Das",
    "Bose",
    "Rao",
    "Menon",
    "Pillai",
    "Khan",
    "Joshi",
    "Kulkarni",
    "Desai",
    "Chopra",
    "Kapoor",
    "Malhotra",
    "Banerjee",
    "Mukherjee",
    "Ghosh",
    "Naidu",
    "Hegde",
    "Shetty",
    "Fernandes",
)
CITIES = (
    "Mumbai",
    "Delhi",
    "Bengaluru",
    "Pune",
    "Chennai",
    "Hyderabad",
    "Kolkata",
    "Ahmedabad",
    "Jaipur",
    "Kochi",
)
CITY_WEIGHTS = (16, 16, 14, 10, 9, 9, 8, 7, 6, 5)
TIERS = ("Free", "Silver", "Gold", "Platinum")
TIER_WEIGHTS = (60, 25, 11, 4)
LANGUAGES = ("en", "hi", "ta", "mr", "bn")
LANGUAGE_WEIGHTS = (55, 25, 8, 7, 5)
# name, share of all events: a few names dominate, then a long tail
EVENT_MIX = (
    ("App Launched", 0.34),
    ("Product Viewed", 0.30),
    ("Searched", 0.09),
    ("Added To Cart", 0.08),
    ("Charged", 0.05),
    ("Notification Viewed", 0.04),
    ("Added To Wishlist", 0.025),
    ("Checkout Started", 0.02),
    ("Category Viewed", 0.015),
    ("Coupon Applied", 0.01),
    ("Product Rated", 0.008),
    ("Refund", 0.005),
    ("App Uninstalled", 0.003),
    ("Subscription Renewed", 0.003),
    ("Support Ticket Opened", 0.002),
)
PRODUCTS = (
    "Running Shoes",
    "Cotton Kurta",
    "Wireless Earbuds",
    "Steel Bottle",
    "Yoga Mat",
    "Silk Saree",
    "Smart Watch",
    "Backpack",
    "Pressure Cooker",
    "Phone Case",
    "Denim Jacket",
    "Basmati Rice 5kg",
)
CATEGORIES = ("Footwear", "Apparel", "Electronics", "Home", "Fitness", "Grocery")
PLATFORMS = ("Android", "iOS", "Web")


# ------------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    profiles: int = 1_000_000
    events: int = 10_000_000
    campaigns: int = 500
    messages_per_campaign: int = 2_000  # ledger rows of a completed campaign (fewer when few profiles)
    templates: int = 20
    segments: int = 30

    def small(self) -> Sizes:
        """An other account's sizes: a little of everything."""
        return Sizes(
            profiles=max(20, self.profiles // 500),
            events=max(100, self.events // 500),
            campaigns=max(5, self.campaigns // 50),
            messages_per_campaign=max(10, self.messages_per_campaign // 20),
            templates=3,
            segments=3,
        )


@dataclass
class Filled:
    """What one account got, and what bench/pages.py opens."""

    account_id: str
    passcode: str
    profiles: int = 0
    events: int = 0
    campaigns: int = 0
    messages: int = 0
    campaign_id: int = 0  # a completed campaign with the most ledger rows
    segment_id: int = 0  # a past-behaviour segment
    identity: str = ""  # the profile with the most events
    name_prefix: str = ""


def _stamp(moment: datetime) -> str:
    """Naive UTC text, as SQLAlchemy writes a UTCDateTime on SQLite (PostgreSQL parses it as well)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# ------------------------------------------------------------------------------------------- bulk writes


class Bulk:
    """Fast row writes on one raw connection: COPY on PostgreSQL (foreign-key triggers off for the load:
    the rows are made consistent here), executemany of large batches on SQLite (journal and sync off);
    the tables' secondary indexes are dropped first and built again by :meth:`finish`."""

    TABLES = (Profile.__table__, Event.__table__, Message.__table__)

    def __init__(self, db: Database) -> None:
        self.db = db
        self.postgres = db.engine.dialect.name == "postgresql"
        self.indexes: list[Index] = [i for t in self.TABLES for i in sorted(t.indexes, key=lambda i: i.name)]  # type: ignore[attr-defined]
        self.sqlite: sqlite3.Connection | None = None
        self.conn: Any = None
        if self.postgres:
            self.conn = db.engine.raw_connection()
            raw = self.conn.driver_connection
            with raw.cursor() as cur:
                cur.execute("SET session_replication_role = replica")
                for index in self.indexes:
                    cur.execute(f"DROP INDEX IF EXISTS {index.name}")
            raw.commit()
        else:
            path = db.url.split("///", 1)[1]
            db.dispose()
            self.sqlite = sqlite3.connect(path, isolation_level=None)
            for pragma in (
                "journal_mode=OFF",
                "synchronous=OFF",
                "foreign_keys=OFF",
                "cache_size=-1000000",
                "temp_store=FILE",
            ):
                self.sqlite.execute(f"PRAGMA {pragma}")
            for index in self.indexes:
                self.sqlite.execute(f"DROP INDEX IF EXISTS {index.name}")

    def write(
        self, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]], batch: int = 100_000
    ) -> int:
        count = 0
        names = ", ".join(columns)
        if self.postgres:
            raw = self.conn.driver_connection
            with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
            raw.commit()
            return count
        assert self.sqlite is not None
        sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(columns))})"
        chunk: list[Sequence[Any]] = []
        self.sqlite.execute("BEGIN")
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                self.sqlite.executemany(sql, chunk)
                count += len(chunk)
                chunk = []
        self.sqlite.executemany(sql, chunk)
        count += len(chunk)
        self.sqlite.execute("COMMIT")
        return count

    def finish(self, say: Callable[[str], None], analyze: bool = True) -> None:
        """Build the indexes, gather the planner's statistics, and give the database back its settings."""
        if self.postgres:
            raw = self.conn.driver_connection
            with raw.cursor() as cur:
                cur.execute("SET maintenance_work_mem = '512MB'")
                for table in ("profiles", "events", "messages", "campaigns", "campaign_variants"):
                    cur.execute(
                        "SELECT setval(pg_get_serial_sequence(%s, 'id'), "
                        f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)",
                        (table,),
                    )
                for index in self.indexes:
                    started = time.perf_counter()
                    cur.execute(str(_create(index, self.db)))
                    raw.commit()
                    say(f"  index {index.name}: {time.perf_counter() - started:.0f} s")
                cur.execute("SET session_replication_role = DEFAULT")
            raw.commit()
            self.conn.close()
            if analyze:
                with self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    started = time.perf_counter()
                    conn.execute(text("VACUUM ANALYZE"))
                    say(f"  VACUUM ANALYZE: {time.perf_counter() - started:.0f} s")
            return
        assert self.sqlite is not None
        for index in self.indexes:
            started = time.perf_counter()
            self.sqlite.execute(str(_create(index, self.db)))
            say(f"  index {index.name}: {time.perf_counter() - started:.0f} s")
        if analyze:
            started = time.perf_counter()
            self.sqlite.execute("ANALYZE")
            say(f"  ANALYZE: {time.perf_counter() - started:.0f} s")
        self.sqlite.execute("PRAGMA journal_mode=WAL")
        self.sqlite.close()


def _create(index: Index, db: Database) -> Any:
    return CreateIndex(index).compile(dialect=db.engine.dialect)


# ---------------------------------------------------------------------------------------------- profiles


def _name(pid: int) -> str:
    return f"{FIRST[pid * 7919 % len(FIRST)]} {LAST[pid * 104_729 % len(LAST)]}"


def _profile_rows(
    account_id: str, first_id: int, n: int, rnd: random.Random, created: list[str], opted: bytearray
) -> Iterator[tuple[Any, ...]]:
    """Profiles ``first_id`` … ``first_id + n - 1``: identity, E.164 phone (a few shared, a few missing),
    Name, City and a few properties; ``opted[i]`` is set for the opted-in ones (i = id - first_id)."""
    choices = rnd.choices
    cities = choices(CITIES, CITY_WEIGHTS, k=n)
    tiers = choices(TIERS, TIER_WEIGHTS, k=n)
    languages = choices(LANGUAGES, LANGUAGE_WEIGHTS, k=n)
    for i in range(n):
        pid = first_id + i
        identity = f"cust{pid:08d}"
        opt_in = rnd.random() < OPT_IN
        opted[i] = opt_in
        roll = rnd.random()
        if roll < 0.005:
            phone = None
        elif roll < 0.01 and i:
            phone = f"+91{9_000_000_000 + first_id + i - 1}"  # shares the previous profile's number
        else:
            phone = f"+91{9_000_000_000 + pid}"
        since = created[pid % len(created)]
        props: dict[str, Any] = {
            "Name": _name(pid),
            "City": cities[i],
            "Tier": tiers[i],
            "Language": languages[i],
            "Gender": "F" if rnd.random() < 0.48 else "M",
            "Customer Since": since[:10] + "T" + since[11:19] + "Z",
            WHATSAPP: opt_in,
        }
        if phone:
            props[PHONE] = phone
        if rnd.random() < 0.3:
            props["Birthday"] = f"{rnd.randint(1960, 2006)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        yield (
            pid,
            account_id,
            identity,
            phone,
            opt_in,
            json.dumps(props),
            profile_seed(account_id, identity),
            since,
            since,
        )


# ------------------------------------------------------------------------------------------------ events


def _event_pools(rnd: random.Random) -> dict[str, list[str]]:
    """A few hundred property sets per event name, drawn from per row (JSON written once)."""
    pools: dict[str, list[str]] = {}
    for name, _ in EVENT_MIX:
        pool = []
        for _ in range(300):
            product = rnd.choice(PRODUCTS)
            price = rnd.choice((199, 299, 499, 799, 999, 1499, 2499, 4999))
            if name in ("Product Viewed", "Added To Cart", "Added To Wishlist", "Product Rated"):
                props: dict[str, Any] = {
                    "Product": product,
                    "Category": rnd.choice(CATEGORIES),
                    "Price": price,
                }
                if name == "Product Rated":
                    props["Rating"] = rnd.randint(1, 5)
            elif name in ("Charged", "Checkout Started", "Refund"):
                props = {"Amount": price * rnd.randint(1, 4), "Currency": "INR", "Items": rnd.randint(1, 4)}
                if name == "Charged":
                    props["Payment Mode"] = rnd.choice(("UPI", "Card", "COD", "Wallet"))
            elif name == "App Launched":
                props = {
                    "Platform": rnd.choice(PLATFORMS),
                    "App Version": rnd.choice(("5.2.0", "5.3.1", "5.4.0")),
                }
            elif name == "Searched":
                props = {"Query": rnd.choice(PRODUCTS).split()[0].lower(), "Results": rnd.randint(0, 80)}
            elif name == "Category Viewed":
                props = {"Category": rnd.choice(CATEGORIES)}
            elif name == "Coupon Applied":
                props = {"Coupon": rnd.choice(("SPRING20", "WELCOME10", "DIWALI25", "FREESHIP"))}
            else:
                props = {}
            pool.append(json.dumps(props))
        pools[name] = pool
    return pools


def _coprime_step(n: int) -> int:
    """A step that visits every residue mod n (to spread the busiest profiles over the id range)."""
    step = 1_000_003
    while math.gcd(step, n) != 1:
        step += 2
    return step


def _event_rows(
    account_id: str, first_id: int, n_profiles: int, n: int, rnd: random.Random, stamps: list[str]
) -> Iterator[tuple[Any, ...]]:
    """Events whose count per profile follows a power law (rank r has about r^-0.6 of them: the busiest
    profile ~13,000 of 10,000,000, the median a handful), names by EVENT_MIX, times over the last 90 days."""
    names = [name for name, _ in EVENT_MIX]
    cumulative = list(accumulate(share for _, share in EVENT_MIX))
    total = cumulative[-1]
    pools = _event_pools(rnd)
    pool_of = [pools[name] for name in names]
    top = n_profiles**0.4 - 1
    step = _coprime_step(n_profiles)
    r = rnd.random
    n_stamps = len(stamps)
    for _ in range(n):
        rank = min(n_profiles, int((1 + r() * top) ** 2.5))  # 1 … n_profiles, power law
        profile_id = first_id + (rank * step) % n_profiles
        k = bisect(cumulative, r() * total)
        pool = pool_of[k]
        ts = stamps[int(r() * n_stamps)]
        yield (account_id, profile_id, names[k], pool[int(r() * len(pool))], ts, ts)


def _stamps(now: datetime, n: int, rnd: random.Random) -> list[str]:
    """n times over the last 90 days, sorted (drawn from at random per row)."""
    span = SPAN.total_seconds()
    return sorted(_stamp(now - timedelta(seconds=rnd.random() * span)) for _ in range(n))


# ---------------------------------------------------------------------- templates, segments, campaigns

TEMPLATES = (
    ("shop:spring_sale", "Hi {{1}}, our Spring Sale is on: {{2}} off everything until Sunday.", "MARKETING"),
    ("shop:cart_reminder", "{{1}}, you left {{2}} in your cart. Complete your order today!", "MARKETING"),
    ("shop:order_confirmed", "Thanks {{1}}! Order {{2}} is confirmed and ships in 2 days.", "UTILITY"),
    ("shop:birthday", "Happy birthday {{1}}! Here is {{2}} off, just for you.", "MARKETING"),
    ("shop:back_in_stock", "Good news {{1}}: {{2}} is back in stock.", "MARKETING"),
    ("shop:feedback", "Hi {{1}}, how was your order? Reply 1-5.", "UTILITY"),
    ("shop:welcome", "Welcome to the family, {{1}}!", "MARKETING"),
    ("shop:renewal", "{{1}}, your {{2}} membership renews on {{3}}.", "UTILITY"),
    ("shop:diwali", "Diwali dhamaka, {{1}}! Up to {{2}} off.", "MARKETING"),
    ("shop:winback", "We miss you, {{1}}. Come back for {{2}} off.", "MARKETING"),
    ("shop:price_drop", "Price drop on {{1}}: now {{2}}.", "MARKETING"),
    ("shop:delivery_update", "Your order {{1}} is out for delivery.", "UTILITY"),
    ("shop:otp", "{{1}} is your verification code.", "AUTHENTICATION"),
    ("shop:monsoon", "Monsoon deals for {{1}}: {{2}}.", "MARKETING"),
    ("shop:payment_failed", "{{1}}, your payment for {{2}} did not go through.", "UTILITY"),
    ("shop:review_request", "Enjoying {{1}}? Leave a review.", "MARKETING"),
    ("shop:flash_sale", "Flash sale, {{1}}! 2 hours only.", "MARKETING"),
    ("shop:loyalty", "{{1}}, you have {{2}} loyalty points.", "MARKETING"),
    ("shop:survey", "Hi {{1}}, a 1-minute survey?", "MARKETING"),
    ("shop:restock_hi", "नमस्ते {{1}}, {{2}} फिर से उपलब्ध है।", "MARKETING"),
)


def _segment_definitions() -> list[tuple[str, dict[str, Any]]]:
    city = [(f"Customers in {c}", {"property": "City", "op": "equals", "value": c}) for c in CITIES[:8]]
    return [
        *city,
        ("Gold and Platinum", {"property": "Tier", "op": "in", "value": ["Gold", "Platinum"]}),
        ("Hindi speakers", {"property": "Language", "op": "equals", "value": "hi"}),
        ("Opted in", {"property": WHATSAPP, "op": "equals", "value": True}),
        (
            "Bought twice this month",
            {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}},
        ),
        (
            "Big spenders",
            {"did": {"event": "Charged", "where": [{"property": "Amount", "op": "gte", "value": 4000}]}},
        ),
        ("Active this week", {"did": {"event": "App Launched", "in_the_last": {"days": 7}}}),
        ("Lapsed: no launch in 30 days", {"did_not": {"event": "App Launched", "in_the_last": {"days": 30}}}),
        (
            "Cart abandoners",
            {
                "and": [
                    {"did": {"event": "Added To Cart", "in_the_last": {"days": 3}}},
                    {"did_not": {"event": "Charged", "in_the_last": {"days": 3}}},
                ]
            },
        ),
        ("Refunded", {"did": "Refund"}),
        ("Browsers who never bought", {"and": [{"did": "Product Viewed"}, {"did_not": "Charged"}]}),
        ("Wishlisters", {"did": {"event": "Added To Wishlist", "in_the_last": {"days": 14}}}),
        (
            "Searched shoes",
            {
                "did": {
                    "event": "Searched",
                    "where": [{"property": "Query", "op": "equals", "value": "running"}],
                }
            },
        ),
        (
            "UPI payers",
            {
                "did": {
                    "event": "Charged",
                    "where": [{"property": "Payment Mode", "op": "equals", "value": "UPI"}],
                }
            },
        ),
        (
            "Android users",
            {
                "did": {
                    "event": "App Launched",
                    "where": [{"property": "Platform", "op": "equals", "value": "Android"}],
                }
            },
        ),
        ("Uninstalled", {"did": "App Uninstalled"}),
        (
            "Low raters",
            {"did": {"event": "Product Rated", "where": [{"property": "Rating", "op": "lte", "value": 2}]}},
        ),
        ("Coupon users", {"did": "Coupon Applied"}),
        (
            "Women in Mumbai",
            {
                "and": [
                    {"property": "City", "op": "equals", "value": "Mumbai"},
                    {"property": "Gender", "op": "equals", "value": "F"},
                ]
            },
        ),
        ("Has a birthday", {"property": "Birthday", "op": "exists"}),
        ("Support seekers", {"did": {"event": "Support Ticket Opened", "in_the_last": {"days": 60}}}),
        ("Renewed", {"did": "Subscription Renewed"}),
        ("Frequent buyers", {"did": {"event": "Charged", "count": {"at_least": 5}}}),
    ]


THEMES = {  # kind: (name themes, template index, trigger)
    "one_time": (
        ("Spring Sale", "Diwali Offers", "Monsoon Deals", "Flash Sale", "Winback", "Loyalty Points"),
        (0, 8, 13, 16, 9, 17),
        None,
    ),
    "single_action": (
        ("Order Confirmation", "Payment Failed", "Thanks For Rating"),
        (2, 14, 15),
        {"event": "Charged"},
    ),
    "inaction": (
        ("Cart Reminder", "Checkout Nudge"),
        (1, 1),
        {"event": "Added To Cart", "absent_event": "Charged", "within_minutes": 120},
    ),
    "on_date": (
        ("Birthday Wishes", "Renewal Reminder"),
        (3, 7),
        {"property": "Birthday", "at_time": "10:00"},
    ),
}
KIND_WEIGHTS = {"one_time": 60, "single_action": 15, "inaction": 15, "on_date": 10}
STATE_WEIGHTS = {"completed": 55, "running": 10, "scheduled": 10, "draft": 15, "stopped": 10}


def _variables(count: int) -> list[str]:
    values = ['{{ Profile.Name | default: "there" }}', "20%", '{{ Profile.Tier | default: "Silver" }}']
    return values[:count]


# ----------------------------------------------------------------------------------------------- ledger

FAILED = (
    ("1300", "Not part of the provider network"),
    ("1330", "Delivery failed"),
    ("131026", "Message undeliverable"),
    ("131047", "Re-engagement message"),
    ("131049", "Meta chose not to deliver this marketing message"),
)
SKIPPED = (
    "not_opted_in",
    "no_valid_phone",
    "global_frequency_cap",
    "missing_personalization",
    "duplicate_phone",
    "dnd",
)


def _message_rows(
    account_id: str,
    campaign: Campaign,
    variant_ids: list[int],
    n: int,
    finished: bool,
    rnd: random.Random,
    first_id: int,
    n_profiles: int,
    opted: bytearray,
) -> Iterator[tuple[Any, ...]]:
    """A campaign's ledger rows: distinct profiles, a realistic mix of states and reasons with their times;
    a campaign not finished (running, stopped) leaves the last third queued."""
    started = campaign.started_at or campaign.scheduled_at
    picks = rnd.sample(range(n_profiles), min(3 * n, n_profiles))
    live = campaign.kind != "one_time"
    k = 0
    for i in picks:
        if k >= n:
            break
        if not opted[i] and rnd.random() < 0.8:
            continue  # segments are mostly chosen among reachable users: a fifth of the others get a row
        k += 1
        pid = first_id + i
        created = started + timedelta(seconds=k * 0.05 if not live else rnd.random() * 3 * 86400)
        phone: str | None = f"+91{9_000_000_000 + pid}"
        state, reason, detail = "queued", None, None
        sent = delivered = read = replied = failed = None
        variant = variant_ids[k % len(variant_ids)] if variant_ids else None
        if not opted[i]:
            state, reason = "skipped", "not_opted_in"
        elif not finished and k > 2 * n // 3:
            state = "queued"
        else:
            roll = rnd.random()
            if roll < 0.03:
                state, reason = "control", "system_control_group"
            elif roll < 0.07:
                state, reason = "control", "campaign_control_group"
            elif roll < 0.10:
                state, reason = "skipped", rnd.choice(SKIPPED[1:])
                if reason == "no_valid_phone":
                    phone = None
            elif roll < 0.14:
                state = "failed"
                reason, detail = rnd.choice(FAILED)
                sent = created + timedelta(seconds=rnd.random() * 5)
                failed = sent + timedelta(seconds=rnd.random() * 60)
            else:
                state = "read" if roll < 0.60 else "delivered" if roll < 0.88 else "sent"
                sent = created + timedelta(seconds=rnd.random() * 5)
                if state != "sent":
                    delivered = sent + timedelta(seconds=2 + rnd.random() * 120)
                if state == "read":
                    read = delivered + timedelta(minutes=rnd.random() * 600)  # type: ignore[operator]
                    if rnd.random() < 0.08:
                        replied = read + timedelta(minutes=rnd.random() * 30)
        params = None
        if state in ("sent", "delivered", "read", "failed", "queued"):
            params = json.dumps([_name(pid), "20%", "Gold"][: len(campaign.variables) or 1])
        handed = state in ("sent", "delivered", "read", "failed")
        occurrence = "" if not live else f"e{rnd.randrange(10**9)}"
        yield (
            account_id,
            campaign.id,
            pid,
            occurrence,
            variant,
            state,
            phone,
            reason,
            detail,
            params if params else None,
            "sandbox" if handed else None,
            f"sbx-{campaign.id}-{pid}" if handed else None,
            1 if handed else 0,
            _stamp(created) if state == "queued" else None,
            _stamp(created),
            _stamp(sent) if sent else None,
            _stamp(delivered) if delivered else None,
            _stamp(read) if read else None,
            _stamp(replied) if replied else None,
            _stamp(failed) if failed else None,
            _stamp(sent) if sent else None,
        )


MESSAGE_COLUMNS = (
    "account_id",
    "campaign_id",
    "profile_id",
    "occurrence",
    "variant_id",
    "state",
    "to_phone",
    "reason",
    "error_detail",
    "params",
    "provider",
    "provider_message_id",
    "attempts",
    "next_attempt_at",
    "created_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "replied_at",
    "failed_at",
    "dispatched_at",
)


# ------------------------------------------------------------------------------------------------- fill


def showcase_campaign(session: Session, account_id: str) -> int:
    """The campaign the stats pages open: a completed one-time campaign with the most ledger rows, one with
    a conversion goal first (its stats read the events too); 0 if there is none."""
    no_goal = case((Campaign.conversion_event.is_(None), 1), else_=0)
    found = session.scalar(
        select(Message.campaign_id)
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(Campaign.account_id == account_id, Campaign.state == "completed", Campaign.kind == "one_time")
        .group_by(Message.campaign_id, Campaign.conversion_event)
        .order_by(func.count().desc(), no_goal, Message.campaign_id)
        .limit(1)
    )
    return int(found or 0)


def _reset(url: str) -> None:
    if url.startswith("postgresql"):
        db = Database(url)
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.dispose()
        return
    path = Path(url.split("///", 1)[1])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _account(
    db: Database, box: SecretBox, name: str, sizes: Sizes, now: datetime, rnd: random.Random, main: bool
) -> tuple[Filled, list[int]]:
    """An account with its users, API keys, templates, segments and campaigns (through the services);
    the campaigns' states and times are set afterwards, as the scheduler would have left them."""
    with db.session() as session:
        new = create_account(session, box, name, timezone="Asia/Kolkata")
        filled = Filled(new.account_id, new.passcode)
        update_account(
            session,
            new.account_id,
            settings={"system_control_group_pct": 3, "frequency_cap": {"max": 3, "hours": 168}},
        )
        if main:
            create_user(session, new.account_id, email=EMAIL, role="admin", password=PASSWORD)
            create_user(
                session, new.account_id, email="marketer@example.com", role="marketer", password=PASSWORD
            )
            create_user(session, new.account_id, email="agent@example.com", role="agent", password=PASSWORD)
            create_api_key(session, new.account_id, name="warehouse export", role="marketer")
            create_api_key(session, new.account_id, name="CRM sync", role="admin")
        else:
            create_user(
                session,
                new.account_id,
                email=f"admin-{new.account_id.lower()}@example.com",
                role="admin",
                password=PASSWORD,
            )
        templates = []
        for t_name, body, category in TEMPLATES[: sizes.templates]:
            templates.append(
                create_template(session, new.account_id, name=t_name, body=body, category=category)
            )
        for template in templates[-2:]:
            template.status = "PENDING"
        segments = []
        for s_name, definition in _segment_definitions()[: sizes.segments]:
            segments.append(create_segment(session, new.account_id, name=s_name, definition=definition))
        behaviour = [s for s in segments if "did" in json.dumps(s.definition)]
        filled.segment_id = (behaviour or segments)[0].id
    kinds = list(KIND_WEIGHTS)
    states = list(STATE_WEIGHTS)
    campaign_ids = []
    with db.session() as session:
        for c in range(sizes.campaigns):
            kind = rnd.choices(kinds, list(KIND_WEIGHTS.values()))[0]
            state = rnd.choices(states, list(STATE_WEIGHTS.values()))[0]
            themes, template_index, trigger = THEMES[kind]
            theme = rnd.randrange(len(themes))
            template = templates[template_index[theme] % len(templates)]
            city = rnd.choice(CITIES)
            age = timedelta(seconds=rnd.random() * SPAN.total_seconds())
            start = now - age if state in ("completed", "running", "stopped") else now + age / 9
            multivariate = kind == "one_time" and rnd.random() < 0.15
            n_vars = template.variable_count
            spec: dict[str, Any] = {
                "name": f"{themes[theme]} {start:%b %Y} — {city} #{c + 1}",
                "kind": kind,
                "target": {"segment_id": rnd.choice(segments).id}
                if rnd.random() < 0.5
                else {"property": "City", "op": "equals", "value": city},
                "trigger": trigger,
                "control_group_pct": rnd.choice((0, 0, 5, 10)),
                "draft": state == "draft",
                "send_at": start,
                "conversion": {"event": "Charged", "within_hours": 72} if rnd.random() < 0.4 else None,
            }
            if multivariate:
                other = templates[(template_index[theme] + 4) % len(templates)]
                spec |= {
                    "split": {"by": "percentage"},
                    "variants": [
                        {"template_id": template.id, "variables": _variables(n_vars), "weight": 50},
                        {
                            "template_id": other.id,
                            "variables": _variables(other.variable_count),
                            "weight": 50,
                        },
                    ],
                }
            else:
                spec |= {"template_id": template.id, "variables": _variables(n_vars)}
            if kind != "one_time" and state in ("completed", "stopped"):
                spec["ends_at"] = start + timedelta(days=rnd.randint(3, 20))
            campaign = create_campaign(session, filled.account_id, CampaignCreate.model_validate(spec))
            values: dict[str, Any] = {"state": state, "created_at": min(start, now) - timedelta(days=2)}
            if state in ("completed", "running", "stopped"):
                values |= {"started_at": start, "audience_size": sizes.messages_per_campaign}
            if state == "completed":
                values["completed_at"] = spec.get("ends_at") or start + timedelta(hours=1)
            if state == "stopped":
                values["note"] = "stopped by bench@example.com"
            session.execute(update(Campaign).where(Campaign.id == campaign.id).values(**values))
            campaign_ids.append(campaign.id)
        filled.campaigns = len(campaign_ids)
    return filled, campaign_ids


def fill(
    url: str,
    data_dir: Path,
    sizes: Sizes,
    *,
    seed: int = 1,
    say: Callable[[str], None] = print,
    analyze: bool = True,
) -> dict[str, Any]:
    """Empty, migrate and fill the database; write and return the manifest. ``analyze=False`` leaves the
    planner's statistics as they were (a shared test database: statistics of this small data set would
    mislead the plans of every later test, as no autovacuum refreshes them there)."""
    started = time.perf_counter()
    rnd = random.Random(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    data_dir.mkdir(parents=True, exist_ok=True)
    box = SecretBox.from_settings(None, data_dir)
    _reset(url)
    db = Database(url)
    db.migrate()
    timings: dict[str, float] = {}

    def lap(label: str, since: float) -> float:
        timings[label] = round(time.perf_counter() - since, 1)
        say(f"{label}: {timings[label]:.1f} s")
        return time.perf_counter()

    at = time.perf_counter()
    plan = [("bench shop", sizes, True)] + [
        (f"other shop {k + 1}", sizes.small(), False) for k in range(OTHER_ACCOUNTS)
    ]
    accounts = []
    for name, account_sizes, main in plan:
        filled, campaign_ids = _account(db, box, name, account_sizes, now, rnd, main)
        accounts.append((filled, account_sizes, campaign_ids))
    at = lap("accounts, users, templates, segments, campaigns (services)", at)

    with db.session() as session:
        campaigns = {c.id: c for c in session.scalars(select(Campaign))}
        variants: dict[int, list[int]] = {}
        for variant in session.scalars(select(CampaignVariant).order_by(CampaignVariant.id)):
            variants.setdefault(variant.campaign_id, []).append(variant.id)
    bulk = Bulk(db)
    stamps = _stamps(now, min(1_000_000, max(1000, sizes.events)), rnd)
    next_id = 1
    profile_cols = (
        "id",
        "account_id",
        "identity",
        "phone",
        "whatsapp_opt_in",
        "properties",
        "seed",
        "created_at",
        "updated_at",
    )
    event_cols = ("account_id", "profile_id", "name", "properties", "ts", "created_at")
    for filled, account_sizes, campaign_ids in accounts:
        first_id = next_id
        n_profiles = account_sizes.profiles
        opted = bytearray(n_profiles)
        since = _stamps(now - SPAN, 10_000, rnd)
        filled.profiles = bulk.write(
            Profile.__table__,
            profile_cols,
            _profile_rows(filled.account_id, first_id, n_profiles, rnd, since, opted),
        )  # type: ignore[arg-type]
        next_id += n_profiles
        at = lap(f"{filled.account_id}: {filled.profiles:,} profiles", at)
        filled.events = bulk.write(
            Event.__table__,  # type: ignore[arg-type]
            event_cols,
            _event_rows(filled.account_id, first_id, n_profiles, account_sizes.events, rnd, stamps),
        )
        at = lap(f"{filled.account_id}: {filled.events:,} events", at)
        busiest = first_id + _coprime_step(n_profiles) % n_profiles  # rank 1 of the power law
        filled.identity = f"cust{busiest:08d}"
        filled.name_prefix = "Asha"
        ledger = (
            row
            for campaign in (campaigns[cid] for cid in campaign_ids)
            if campaign.state in ("completed", "running", "stopped")
            for row in _message_rows(
                filled.account_id,
                campaign,
                variants.get(campaign.id, []),
                account_sizes.messages_per_campaign // (1 if campaign.state == "completed" else 2),
                campaign.state == "completed",
                rnd,
                first_id,
                n_profiles,
                opted,
            )
        )
        filled.messages = bulk.write(Message.__table__, MESSAGE_COLUMNS, ledger)  # type: ignore[arg-type]
        at = lap(f"{filled.account_id}: {filled.messages:,} ledger rows", at)
    bulk.finish(say, analyze)
    at = lap("indexes and statistics", at)
    db = Database(url)
    with db.read() as session:
        main = accounts[0][0]
        main.campaign_id = showcase_campaign(session, main.account_id)
    db.dispose()
    timings["total"] = round(time.perf_counter() - started, 1)
    manifest = {
        "database_url": url,
        "data_dir": str(data_dir),
        "created": now.isoformat(),
        "sizes": asdict(sizes),
        "email": EMAIL,
        "password": PASSWORD,
        "account": asdict(accounts[0][0]),
        "others": [asdict(f) for f, _, _ in accounts[1:]],
        "timings": timings,
    }
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    say(f"total: {timings['total']:.0f} s; manifest {data_dir / MANIFEST}")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--database-url", required=True, help="sqlite:///… or postgresql+psycopg://… (emptied)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="secret key and manifest (default: the SQLite file's folder)"
    )
    parser.add_argument("--profiles", type=int, default=Sizes.profiles)
    parser.add_argument("--events", type=int, default=Sizes.events)
    parser.add_argument("--campaigns", type=int, default=Sizes.campaigns)
    parser.add_argument("--messages-per-campaign", type=int, default=Sizes.messages_per_campaign)
    args = parser.parse_args()
    data_dir = args.data_dir
    if data_dir is None:
        if not args.database_url.startswith("sqlite"):
            parser.error("--data-dir is needed for PostgreSQL")
        data_dir = Path(args.database_url.split("///", 1)[1]).parent
    sizes = Sizes(args.profiles, args.events, args.campaigns, args.messages_per_campaign)
    started = time.perf_counter()
    fill(
        args.database_url,
        data_dir,
        sizes,
        say=lambda line: print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True),
    )


if __name__ == "__main__":
    main()
