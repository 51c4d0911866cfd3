"""Finding a profile among 1,000,000: the search of the profile page (``service.find_profiles``), timed.

    .venv/bin/python -m bench.profile_lookup --url sqlite:////tmp/lookup.db [--profiles 1000000]

Loads the profiles straight into the tables (identity ``user-0000042``, an Indian mobile number, a first
name and a surname), then times each kind of search — identity, phone in three formats, name, nothing
found, a page deep in a cursor — 50 times and prints the median and the 95th percentile.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from sqlalchemy import insert

from tidings.accounts.models import Account
from tidings.db import Database, utcnow
from tidings.profiles.models import Profile
from tidings.profiles.service import find_profiles, name_key

FIRST = ["Asha", "Ravi", "Meera", "John", "Fatima", "Li", "Carlos", "Ana", "Tom", "Priya", "Omar", "Sara"]
LAST = ["Rao", "Shah", "Smith", "Khan", "Wang", "Silva", "Iyer", "Das", "Brown", "Nair"]
ACCOUNT = "bench-lookup"


def load(db: Database, profiles: int) -> None:
    rnd = random.Random(1)
    now = utcnow()
    with db.session() as session:
        if session.get(Account, ACCOUNT) is not None:
            return
        session.add(Account(id=ACCOUNT, name="bench", passcode_hash="-", settings={}))
    for start in range(0, profiles, 20_000):
        rows = []
        for i in range(start, min(start + 20_000, profiles)):
            name = f"{rnd.choice(FIRST)} {rnd.choice(LAST)}"
            phone = f"+9198{10_000_000 + i}"
            rows.append(
                {
                    "account_id": ACCOUNT,
                    "identity": f"user-{i:07d}",
                    "phone": phone,
                    "whatsapp_opt_in": True,
                    "name_key": name_key(name),
                    "properties": {"Name": name, "Phone": phone, "MSG-whatsapp": True},
                    "seed": i % 1_000_003,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        with db.session() as session:
            session.execute(insert(Profile), rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--profiles", type=int, default=1_000_000)
    args = parser.parse_args()
    db = Database(args.url)
    db.migrate()
    started = time.perf_counter()
    load(db, args.profiles)
    print(f"{args.profiles:,} profiles in {time.perf_counter() - started:.0f} s ({db.engine.dialect.name})")
    with db.read() as session:
        deep = None
        for _ in range(20):  # 20 pages into the Ashas
            _, deep = find_profiles(session, ACCOUNT, "asha", 20, deep)
    searches = {
        "identity prefix 'user-00042'": ("user-00042", None),
        "phone E.164 '+919810000042'": ("+919810000042", None),
        "phone '+91 98100 00042'": ("+91 98100 00042", None),
        "phone digits prefix '9198100'": ("9198100", None),
        "name 'asha r'": ("asha r", None),
        "name 'a' (a third of all)": ("a", None),
        "nothing found 'zzz'": ("zzz", None),
        "page 21 of 'asha'": ("asha", deep),
    }
    for label, (q, cursor) in searches.items():
        times = []
        for _ in range(50):
            with db.read() as session:
                t = time.perf_counter()
                found, _ = find_profiles(session, ACCOUNT, q, 20, cursor)
                times.append((time.perf_counter() - t) * 1000)
        times.sort()
        p95 = times[int(len(times) * 0.95) - 1]
        median = statistics.median(times)
        print(f"{label:34} {len(found):3} found  median {median:6.1f} ms  p95 {p95:6.1f} ms")


if __name__ == "__main__":
    main()
