"""Segment SQL against a straightforward Python evaluation of the same definition (property-based), on
SQLite and PostgreSQL: generated profiles, events and definitions; the SQL must select exactly the profiles
that the plain reading of docs/segments.md selects."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator
from sqlalchemy import delete, insert, select

from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.profiles.models import Event, Profile
from tidings.segments.service import profile_condition, validate_target

NOW = datetime(2026, 3, 15, 12, 0, 0, 500_000, tzinfo=UTC)  # half a second: rounding must be right

# ----------------------------------------------------------------------------------------------- reference

DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
UNIT = {"minutes": timedelta(minutes=1), "hours": timedelta(hours=1), "days": timedelta(days=1)}


@dataclass
class Person:
    identity: str
    properties: dict[str, Any]
    events: list[tuple[str, dict[str, Any], datetime]] = field(default_factory=list)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def same(v: Any, x: Any) -> bool:
    """Typed equality: strings with strings, numbers with numbers, booleans with booleans."""
    if isinstance(x, bool):
        return isinstance(v, bool) and v is x
    if is_number(x):
        return is_number(v) and v == x
    return isinstance(v, str) and v == x


def as_date(v: Any) -> datetime | None:
    if isinstance(v, str) and DATE.fullmatch(v):
        return datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return None


def bound(text: str) -> tuple[datetime, bool]:
    """(moment, date only)"""
    if len(text) == 10:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC), True
    return datetime.fromisoformat(text).astimezone(UTC), False


def property_holds(cond: dict[str, Any], props: dict[str, Any], now: datetime) -> bool:
    key, op = cond["property"], cond["op"]
    x: Any = cond.get("value")
    v = props.get(key)
    if op == "exists":
        return v is not None
    if op == "not_exists":
        return v is None
    if op == "equals":
        return same(v, x)
    if op == "not_equals":
        return not same(v, x)
    if op == "in":
        return any(same(v, item) for item in x)
    if op == "contains":
        in_text = isinstance(x, str) and isinstance(v, str) and x in v
        return in_text or (isinstance(v, list) and any(same(item, x) for item in v))
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(x, str) and not isinstance(v, str):
            return False
        if is_number(x) and not is_number(v):
            return False
        return {"gt": v > x, "gte": v >= x, "lt": v < x, "lte": v <= x}[op]
    d = as_date(v)
    if d is None:
        return False
    if op == "before":
        moment, _ = bound(x)
        return d < moment
    if op == "after":
        moment, date_only = bound(x)
        return d >= moment + timedelta(days=1) if date_only else d > moment
    if op == "within_last_days":
        return now - timedelta(days=x) <= d <= now
    assert op == "within_next_days"
    return now <= d <= now + timedelta(days=x)


def where_holds(node: Any, props: dict[str, Any], now: datetime) -> bool:
    if isinstance(node, list):
        return all(where_holds(item, props, now) for item in node)
    if "and" in node:
        return all(where_holds(item, props, now) for item in node["and"])
    if "or" in node:
        return any(where_holds(item, props, now) for item in node["or"])
    if "not" in node:
        return not where_holds(node["not"], props, now)
    return property_holds(node, props, now)


def did(spec: Any, person: Person, now: datetime) -> bool:
    if isinstance(spec, str):
        spec = {"event": spec}
    n = 0
    for name, props, ts in person.events:
        if name != spec["event"]:
            continue
        if "in_the_last" in spec:
            ((unit, amount),) = spec["in_the_last"].items()
            if not now - amount * UNIT[unit] <= ts <= now:
                continue
        if "between" in spec:
            window = spec["between"]
            if "from" in window and ts < bound(window["from"])[0]:
                continue
            if "to" in window:
                moment, date_only = bound(window["to"])
                if (ts >= moment + timedelta(days=1)) if date_only else (ts > moment):
                    continue
        if "where" in spec and not where_holds(spec["where"], props, now):
            continue
        n += 1
    count = spec.get("count", {})
    if "exactly" in count:
        return n == count["exactly"]
    low = count.get("at_least", 0 if "at_most" in count else 1)
    return n >= low and ("at_most" not in count or n <= count["at_most"])


def selects(node: dict[str, Any], person: Person, now: datetime, saved: dict[int, Any] | None = None) -> bool:
    """The plain reading of a definition for one profile."""
    if not node or node.get("all") is True:
        return True
    if "and" in node:
        return all(selects(item, person, now, saved) for item in node["and"])
    if "or" in node:
        return any(selects(item, person, now, saved) for item in node["or"])
    if "not" in node:
        return not selects(node["not"], person, now, saved)
    if "conditions" in node:
        return all(property_holds(c, person.properties, now) for c in node["conditions"])
    if "did" in node:
        return did(node["did"], person, now)
    if "did_not" in node:
        return not did(node["did_not"], person, now)
    if "segment_id" in node:
        assert saved is not None
        return selects(saved[node["segment_id"]], person, now, saved)
    return property_holds(node, person.properties, now)


# ----------------------------------------------------------------------------------------------- data

PROFILE_KEYS = ["City", "Age", "Tags", "Joined", "Score", "Città", 'we"ird', "x.y"]
EVENT_KEYS = ["Amount", "Currency", "Items", "Delivery By"]
EVENTS = ["Charged", "Refund", "Viewed"]
STRINGS = ["Pune", "pune", "Pu", "Delhi", "", "Pune Camp", 'a"b', "ü", "10", "2", "true"]
NUMBERS: list[int | float] = [-3, 0, 1, 2, 10, 17, 18, 30, 2.5, -1.5, 30.0]
DAY_OFFSETS = [-400, -31, -30, -7, -1, 0, 1, 7, 30, 31]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# Stored dates near the boundaries of the windows (whole seconds, as the upload stores them).
MIDNIGHT = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
DATES = sorted(
    {_iso(NOW + timedelta(days=d, seconds=s)) for d in DAY_OFFSETS for s in (-1, 0, 1)}
    | {_iso(MIDNIGHT + timedelta(days=d, seconds=s)) for d in DAY_OFFSETS for s in (-1, 0, 1)}
)
BOUND_DATES = sorted(
    {(NOW + timedelta(days=d)).strftime("%Y-%m-%d") for d in DAY_OFFSETS}
    | {_iso(NOW + timedelta(days=d)) for d in (-30, -1, 0, 1)}
    | {(NOW + timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%S+05:30") for d in (-1, 0)}
    | {"2026-03-14T12:00:00.500000Z", "2026-03-15T17:29:59.250+05:30"}  # fractions of a second
)

scalars = st.one_of(st.sampled_from(STRINGS), st.sampled_from(NUMBERS), st.booleans())
stored_values = st.one_of(
    scalars,
    st.sampled_from(DATES),
    st.lists(scalars, max_size=3),
    st.just(None),
    st.just({"nested": 1}),
    st.just([["Pune"]]),
)


def property_dicts(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), stored_values, max_size=4)


# Event times: anywhere in 100 days, or exactly on a window's edge.
EDGES = [
    NOW,
    NOW - timedelta(days=30),
    NOW - timedelta(hours=1),
    NOW - timedelta(minutes=90),
    NOW + timedelta(seconds=1),
    NOW - timedelta(days=29, hours=12),
    datetime(2026, 2, 1, tzinfo=UTC),
    datetime(2026, 2, 28, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 2, 28, 15, 0, 0, tzinfo=UTC),
    datetime(2026, 2, 28, 23, 59, 59, tzinfo=UTC),
    datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 15, 6, 0, 0, tzinfo=UTC),
]
event_times = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-100 * 86400, 5 * 86400).map(lambda s: NOW.replace(microsecond=0) + timedelta(seconds=s)),
)
events = st.tuples(st.sampled_from(EVENTS), property_dicts(EVENT_KEYS), event_times)


@st.composite
def people(draw: st.DrawFn) -> list[Person]:
    n = draw(st.integers(0, 8))
    return [
        Person(f"p{i}", draw(property_dicts(PROFILE_KEYS)), draw(st.lists(events, max_size=6)))
        for i in range(n)
    ]


# ----------------------------------------------------------------------------------------------- definitions


def property_tests(keys: list[str], date_key: str) -> st.SearchStrategy[dict[str, Any]]:
    key = st.sampled_from(keys)
    dated = st.sampled_from([date_key, date_key, *keys])  # mostly the key that holds dates
    comparable = st.one_of(st.sampled_from(STRINGS), st.sampled_from(NUMBERS), st.sampled_from(DATES))
    return st.one_of(
        st.builds(
            lambda k, op, v: {"property": k, "op": op, "value": v},
            key,
            st.sampled_from(["equals", "not_equals", "contains"]),
            scalars,
        ),
        st.builds(lambda k, op: {"property": k, "op": op}, key, st.sampled_from(["exists", "not_exists"])),
        st.builds(
            lambda k, v: {"property": k, "op": "in", "value": v},
            key,
            st.lists(scalars, min_size=1, max_size=3),
        ),
        st.builds(
            lambda k, op, v: {"property": k, "op": op, "value": v},
            key,
            st.sampled_from(["gt", "gte", "lt", "lte"]),
            comparable,
        ),
        st.builds(
            lambda k, op, v: {"property": k, "op": op, "value": v},
            dated,
            st.sampled_from(["before", "after"]),
            st.one_of(st.sampled_from(BOUND_DATES), st.sampled_from(DATES)),
        ),
        st.builds(
            lambda k, op, v: {"property": k, "op": op, "value": v},
            dated,
            st.sampled_from(["within_last_days", "within_next_days"]),
            st.sampled_from([1, 7, 30, 31, 400]),
        ),
    )


def event_wheres() -> st.SearchStrategy[Any]:
    leaf = property_tests(EVENT_KEYS, "Delivery By")
    node = st.recursive(
        leaf,
        lambda children: st.one_of(
            st.builds(lambda xs: {"and": xs}, st.lists(children, min_size=1, max_size=2)),
            st.builds(lambda xs: {"or": xs}, st.lists(children, min_size=1, max_size=2)),
            st.builds(lambda x: {"not": x}, children),
        ),
        max_leaves=3,
    )
    return st.one_of(node, st.lists(node, min_size=1, max_size=2))


counts = st.one_of(
    st.builds(lambda n: {"at_least": n}, st.integers(1, 3)),
    st.builds(lambda n: {"at_most": n}, st.integers(0, 2)),
    st.builds(lambda n: {"exactly": n}, st.integers(0, 2)),
    st.builds(lambda a, b: {"at_least": a, "at_most": a + b}, st.integers(1, 2), st.integers(0, 2)),
)
windows = st.one_of(
    st.builds(
        lambda u, n: {"in_the_last": {u: n}},
        st.sampled_from(["minutes", "hours", "days"]),
        st.sampled_from([1, 30, 60, 90, 24, 720]),
    ),
    st.builds(
        lambda a, b: {"between": {"from": min(a, b), "to": max(a, b)}},
        st.sampled_from(["2026-02-01", "2026-01-01", "2026-02-14T12:00:00Z"]),
        st.sampled_from(["2026-02-28", "2026-03-15", "2026-03-15T11:30:00Z"]),
    ),
    st.builds(
        lambda a: {"between": {"from": a}}, st.sampled_from(["2026-03-01", "2026-02-13T12:00:00.500000Z"])
    ),
    st.builds(lambda a: {"between": {"to": a}}, st.sampled_from(["2026-02-28", "2026-03-15T12:00:00Z"])),
    st.just({"ever": True}),
)


@st.composite
def event_tests(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(EVENTS))
    kind = draw(st.sampled_from(["did", "did_not"]))
    if draw(st.booleans()):
        return {kind: name}
    spec: dict[str, Any] = {"event": name}
    if draw(st.booleans()):
        spec["where"] = draw(event_wheres())
    if draw(st.booleans()):
        spec["count"] = draw(counts)
    if draw(st.booleans()):
        spec.update(draw(windows))
    return {kind: spec}


leaves = st.one_of(
    property_tests(PROFILE_KEYS, "Joined"),
    event_tests(),
    st.builds(
        lambda cs: {"conditions": cs},
        st.lists(property_tests(PROFILE_KEYS, "Joined"), min_size=1, max_size=3),
    ),
    st.just({"all": True}),
)
definitions = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(lambda xs: {"and": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda xs: {"or": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=6,
)


# ----------------------------------------------------------------------------------------------- running


def store(db: Database, account_id: str, group: list[Person]) -> None:
    with db.session() as session:
        session.execute(delete(Event))
        session.execute(delete(Profile))
        if not group:
            return
        rows = [
            {
                "account_id": account_id,
                "identity": p.identity,
                "phone": None,
                "whatsapp_opt_in": True,
                "properties": p.properties,
                "seed": 0,
                "created_at": NOW,
                "updated_at": NOW,
            }
            for p in group
        ]
        ids = dict(session.execute(insert(Profile).returning(Profile.identity, Profile.id), rows).all())
        event_rows = [
            {
                "account_id": account_id,
                "profile_id": ids[p.identity],
                "name": name,
                "properties": props,
                "ts": ts,
                "created_at": NOW,
            }
            for p in group
            for name, props, ts in p.events
        ]
        if event_rows:
            session.execute(insert(Event), event_rows)


def selected(db: Database, account_id: str, definition: dict[str, Any]) -> set[str]:
    with db.session() as session:
        query = select(Profile.identity).where(profile_condition(definition, account_id=account_id, now=NOW))
        return set(session.scalars(query))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=people(), defs=st.lists(definitions, min_size=1, max_size=4))
def test_sql_selects_what_the_plain_reading_selects(
    db: Database, account: NewAccount, group: list[Person], defs: list[dict[str, Any]]
) -> None:
    store(db, account.account_id, group)
    for definition in defs:
        validate_target(definition)
        expected = {p.identity for p in group if selects(definition, p, NOW)}
        assert selected(db, account.account_id, definition) == expected, definition


# One larger population, many definitions.
def _population(seed: int = 7, size: int = 60) -> list[Person]:
    rnd = random.Random(seed)

    def value() -> Any:
        pick = rnd.random()
        if pick < 0.35:
            return rnd.choice(STRINGS)
        if pick < 0.6:
            return rnd.choice(NUMBERS)
        if pick < 0.7:
            return rnd.choice([True, False])
        if pick < 0.85:
            return rnd.choice(DATES)
        return [rnd.choice([*STRINGS, *NUMBERS]) for _ in range(rnd.randint(0, 3))]

    group = []
    for i in range(size):
        props = {k: value() for k in rnd.sample(PROFILE_KEYS, rnd.randint(0, len(PROFILE_KEYS)))}
        if rnd.random() < 0.8:
            props["Joined"] = rnd.choice(DATES)
        evs = [
            (
                rnd.choice(EVENTS),
                {k: value() for k in rnd.sample(EVENT_KEYS, rnd.randint(0, len(EVENT_KEYS)))}
                | ({"Delivery By": rnd.choice(DATES)} if rnd.random() < 0.5 else {}),
                rnd.choice(EDGES)
                if rnd.random() < 0.2
                else NOW.replace(microsecond=0) - timedelta(seconds=rnd.randint(-5 * 86400, 100 * 86400)),
            )
            for _ in range(rnd.randint(0, 8))
        ]
        group.append(Person(f"q{i}", props, evs))
    return group


POPULATION = _population()
_stored: set[str] = set()  # accounts whose database holds POPULATION (the tables are emptied per test)


def _store_population(db: Database, account_id: str) -> None:
    if account_id not in _stored:
        store(db, account_id, POPULATION)
        _stored.add(account_id)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_many_definitions_over_one_population(db: Database, account: NewAccount, data: st.DataObject) -> None:
    _store_population(db, account.account_id)
    for _ in range(10):
        definition = data.draw(definitions)
        expected = {p.identity for p in POPULATION if selects(definition, p, NOW)}
        assert selected(db, account.account_id, definition) == expected, definition


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_each_kind_of_test_alone_over_one_population(
    db: Database, account: NewAccount, data: st.DataObject
) -> None:
    """Single conditions (not masked by and/or): every operator's edge is reached often."""
    _store_population(db, account.account_id)
    for _ in range(10):
        definition = data.draw(st.one_of(property_tests(PROFILE_KEYS, "Joined"), event_tests()))
        expected = {p.identity for p in POPULATION if selects(definition, p, NOW)}
        assert selected(db, account.account_id, definition) == expected, definition


# ----------------------------------------------------------------------------------------------- the schema


def _definition_schema() -> dict[str, Any]:
    from fastapi import FastAPI

    from tidings.segments.api import router

    app = FastAPI()
    app.include_router(router)
    doc = app.openapi()
    schemas = doc["components"]["schemas"]
    return {"$ref": "#/components/schemas/SegmentDefinition", "components": {"schemas": schemas}}


@settings(max_examples=150, deadline=None)
@given(definition=definitions)
def test_every_valid_definition_fits_the_documented_schema(definition: dict[str, Any]) -> None:
    validate_target(definition)
    OAS31Validator(SCHEMA).validate(definition)


SCHEMA = _definition_schema()
