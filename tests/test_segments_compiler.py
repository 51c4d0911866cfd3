"""Each operator, window and count of the segment language on a small fixed data set, with a fixed ``now``,
on SQLite and PostgreSQL; and the messages that point at the faulty part of a definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import new_account
from tests.test_segments_property import Person, selected, store
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.errors import Invalid
from tidings.profiles.models import Event, Profile
from tidings.secrets import SecretBox
from tidings.segments.service import profile_condition, validate_target

NOW = datetime(2026, 3, 15, 12, 0, 0, 500_000, tzinfo=UTC)
DAY = timedelta(days=1)

PEOPLE = [
    Person(
        "a",
        {
            "City": "Pune",
            "Age": 30,
            "Tags": ["shoes", "bags", 3],
            "Joined": "2026-03-10T08:00:00Z",
            "VIP": True,
            "Score": 2.5,
            "Città": "Roma",
            'we"ird': "yes",
        },
        [
            ("Charged", {"Amount": 500, "Currency": "USD"}, NOW - DAY),
            ("Charged", {"Amount": 100, "Currency": "INR"}, NOW - 10 * DAY),
            ("Charged", {"Amount": 900, "Currency": "INR"}, NOW - 40 * DAY),
            ("Refund", {"Amount": 100}, NOW - timedelta(hours=2)),
        ],
    ),
    Person(
        "b",
        {
            "City": "pune",
            "Age": "30",
            "Tags": "shoes and bags",
            "Joined": "2025-01-01T00:00:00Z",
            "VIP": False,
        },
        [
            ("Charged", {"Amount": 50, "Items": ["tea", "cups"]}, NOW - 5 * DAY),
            ("Charged", {"Amount": 70, "Items": ["tea"]}, NOW - 6 * DAY),
        ],
    ),
    Person(
        "c",
        {"City": "Delhi", "Age": 17, "Renewal": "2026-03-20T00:00:00Z"},
        [("Viewed", {}, NOW - timedelta(minutes=30))],
    ),
    Person("d", {}, []),
    Person(
        "e",
        {"City": None, "Age": 18.0, "Tags": [], "VIP": 1, "Joined": "soon"},
        [("Charged", {"Amount": 10}, NOW + DAY)],  # in the future: never "in the last …"
    ),
]
EVERYONE = {"a", "b", "c", "d", "e"}


@pytest.fixture
def people(db: Database, account: NewAccount) -> str:
    store(db, account.account_id, PEOPLE)
    return account.account_id


def prop(key: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"property": key, "op": op} | ({} if value is None else {"value": value})


PROPERTY_CASES: list[tuple[dict[str, Any], set[str]]] = [
    (prop("City", "equals", "Pune"), {"a"}),  # case-sensitive
    (prop("Age", "equals", 30), {"a"}),  # a number: the string "30" is not 30
    (prop("Age", "equals", "30"), {"b"}),
    (prop("Age", "equals", 18), {"e"}),  # 18.0 is 18
    (prop("VIP", "equals", True), {"a"}),  # true is not 1
    (prop("VIP", "equals", False), {"b"}),
    (prop("VIP", "equals", 1), {"e"}),
    (prop("City", "not_equals", "Pune"), {"b", "c", "d", "e"}),  # missing and null count as not equal
    (prop("City", "in", ["Pune", "Delhi", 3]), {"a", "c"}),
    (prop("Age", "in", [17, "30"]), {"b", "c"}),
    (prop("City", "contains", "un"), {"a", "b"}),
    (prop("Tags", "contains", "shoes"), {"a", "b"}),  # a list element, or a substring of a string
    (prop("Tags", "contains", "shoe"), {"b"}),  # list elements are matched whole
    (prop("Tags", "contains", 3), {"a"}),
    (prop("City", "exists"), {"a", "b", "c"}),  # null is not a value
    (prop("City", "not_exists"), {"d", "e"}),
    (prop("Tags", "exists"), {"a", "b", "e"}),  # an empty list exists
    (prop("Age", "gt", 17), {"a", "e"}),
    (prop("Age", "gte", 17), {"a", "c", "e"}),
    (prop("Age", "lt", 18), {"c"}),
    (prop("Age", "lte", 18), {"c", "e"}),
    (prop("Score", "gte", 2.5), {"a"}),
    (prop("City", "gt", "Mumbai"), {"a", "b"}),  # strings compare with strings, in code point order
    (prop("City", "lt", "P"), {"c"}),
    (prop("Joined", "before", "2026-01-01"), {"b"}),  # "soon" is not a date
    (prop("Joined", "after", "2026-03-09"), {"a"}),
    (prop("Joined", "after", "2026-03-10"), set()),  # a date means the whole day
    (prop("Joined", "before", "2026-03-10"), {"b"}),
    (prop("Joined", "after", "2026-03-10T07:59:59Z"), {"a"}),
    (prop("Joined", "after", "2026-03-10T08:00:00Z"), set()),
    (prop("Joined", "after", "2026-03-10T13:29:59+05:30"), {"a"}),  # 07:59:59 UTC
    (prop("Joined", "within_last_days", 7), {"a"}),
    (prop("Joined", "within_last_days", 6), {"a"}),
    (prop("Joined", "within_last_days", 5), set()),  # 5 days back is 03-10 12:00:00.5
    (prop("Joined", "within_last_days", 4), set()),
    (prop("Renewal", "within_next_days", 5), {"c"}),
    (prop("Renewal", "within_next_days", 4), set()),
    (prop("Joined", "within_next_days", 400), set()),
    (prop("Città", "equals", "Roma"), {"a"}),  # keys a JSON path cannot spell
    (prop('we"ird', "exists"), {"a"}),
]


@pytest.mark.parametrize(("definition", "expected"), PROPERTY_CASES, ids=lambda x: str(x)[:60])
def test_property_operators(
    db: Database, people: str, definition: dict[str, Any], expected: set[str]
) -> None:
    assert selected(db, people, definition) == expected


def did(event: str, **spec: Any) -> dict[str, Any]:
    return {"did": {"event": event, **spec}}


EVENT_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"did": "Charged"}, {"a", "b", "e"}),
    (did("Charged", ever=True), {"a", "b", "e"}),
    (did("Charged", in_the_last={"days": 30}), {"a", "b"}),
    (did("Charged", in_the_last={"days": 30}, count={"at_least": 2}), {"a", "b"}),
    (did("Charged", in_the_last={"days": 7}, count={"at_least": 2}), {"b"}),
    (did("Charged", in_the_last={"days": 7}, count={"exactly": 1}), {"a"}),
    (did("Charged", count={"at_least": 3}), {"a"}),
    (did("Charged", count={"at_most": 1}), {"c", "d", "e"}),  # at most once includes never
    (did("Charged", count={"at_most": 0}), {"c", "d"}),
    (did("Charged", count={"exactly": 0}), {"c", "d"}),
    (did("Charged", count={"at_least": 2, "at_most": 2}), {"b"}),
    (did("Refund", in_the_last={"hours": 3}), {"a"}),
    (did("Refund", in_the_last={"hours": 1}), set()),
    (did("Viewed", in_the_last={"minutes": 29}), set()),
    (did("Viewed", in_the_last={"minutes": 31}), {"c"}),
    (did("Charged", where=[prop("Amount", "gte", 500)]), {"a"}),
    (did("Charged", where=[prop("Amount", "gte", 500)], in_the_last={"days": 30}), {"a"}),
    (did("Charged", where=[prop("Amount", "gte", 800)], in_the_last={"days": 30}), set()),
    (did("Charged", where=prop("Currency", "equals", "USD")), {"a"}),
    (did("Charged", where={"not": prop("Currency", "exists")}, count={"at_least": 2}), {"b"}),
    (did("Charged", where=[prop("Items", "contains", "cups")]), {"b"}),
    (did("Charged", where={"or": [prop("Amount", "lt", 60), prop("Amount", "gt", 800)]}), {"a", "b", "e"}),
    (did("Charged", between={"from": "2026-03-01", "to": "2026-03-10"}), {"a", "b"}),
    (did("Charged", between={"from": "2026-03-10", "to": "2026-03-10"}), {"b"}),  # 03-10 12:00:00.5
    (did("Charged", between={"from": "2026-03-10T12:00:01Z"}), {"a", "e"}),
    (did("Charged", between={"to": "2026-02-03"}), {"a"}),  # the whole day of 02-03
    (did("Charged", between={"to": "2026-02-03T12:00:00Z"}), set()),  # 12:00:00.5 is later
    ({"did_not": "Refund"}, {"b", "c", "d", "e"}),
    ({"not": {"did": "Charged"}}, {"c", "d"}),
    ({"did_not": {"event": "Charged", "in_the_last": {"days": 7}}}, {"c", "d", "e"}),
    (
        {
            "and": [
                prop("City", "equals", "Pune"),
                did("Charged", count={"at_least": 2}, in_the_last={"days": 30}),
                {"not": {"did": "Refund"}},
            ]
        },
        set(),  # a asked for a refund
    ),
    (
        {
            "and": [
                prop("City", "in", ["Pune", "pune"]),
                did("Charged", count={"at_least": 2}, in_the_last={"days": 30}),
                {"not": {"did": "Refund"}},
            ]
        },
        {"b"},
    ),
    ({"or": [prop("Age", "lt", 18), {"did": "Refund"}]}, {"a", "c"}),
    ({"not": {"or": [prop("Age", "lt", 18), {"did": "Refund"}]}}, {"b", "d", "e"}),
]


@pytest.mark.parametrize(("definition", "expected"), EVENT_CASES, ids=lambda x: str(x)[:60])
def test_past_behaviour(db: Database, people: str, definition: dict[str, Any], expected: set[str]) -> None:
    assert selected(db, people, definition) == expected


def test_a_condition_selects_only_its_accounts_profiles(db: Database, box: SecretBox, people: str) -> None:
    """The condition names the account (callers need not): another account's profiles are never selected,
    not by a complement ("did not", "at most") either, and their events count for no one here."""
    other = new_account(db, box, "Other").account_id
    with db.session() as session:
        stranger = Profile(account_id=other, identity="x", properties={"City": "Pune"}, seed=0)
        session.add(stranger)
        session.flush()
        session.add_all(
            Event(account_id=other, profile_id=stranger.id, name=name, properties={}, ts=NOW - DAY)
            for name in ("Charged", "Charged", "Refund", "Viewed")
        )
    assert selected(db, people, {"all": True}) == EVERYONE
    assert selected(db, people, prop("City", "equals", "Pune")) == {"a"}
    assert selected(db, people, {"did_not": "Charged"}) == {"c", "d"}
    assert selected(db, people, did("Charged", count={"at_most": 1})) == {"c", "d", "e"}
    assert selected(db, people, did("Charged", count={"exactly": 2})) == {"b"}
    assert selected(db, people, {"did": "Viewed"}) == {"c"}
    assert selected(db, other, {"did": {"event": "Charged", "count": {"exactly": 2}}}) == {"x"}
    assert selected(db, other, {"did_not": "Charged"}) == set()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ({}, EVERYONE),
        ({"all": True}, EVERYONE),
        ({"conditions": [prop("City", "equals", "Pune"), prop("Age", "gte", 18)]}, {"a"}),
        ({"conditions": [prop("City", "exists")]}, {"a", "b", "c"}),
        ({"or": [{"conditions": [prop("Age", "lt", 18)]}, {"all": True}]}, EVERYONE),
    ],
)
def test_the_forms_campaigns_send_still_work(
    db: Database, people: str, target: dict[str, Any], expected: set[str]
) -> None:
    validate_target(target)
    assert selected(db, people, target) == expected


def test_relative_windows_follow_the_now_passed_in(db: Database, people: str) -> None:
    from sqlalchemy import select

    def at(now: datetime, definition: dict[str, Any]) -> set[str]:
        with db.session() as session:
            query = select(Profile.identity).where(
                Profile.account_id == people, profile_condition(definition, account_id=people, now=now)
            )
            return set(session.scalars(query))

    last_week = did("Charged", in_the_last={"days": 7})
    assert at(NOW, last_week) == {"a", "b"}
    assert at(NOW + 3 * DAY, last_week) == {"a", "e"}  # b's are 8 and 9 days old; e's has happened
    assert at(NOW - 20 * DAY, last_week) == set()
    joined = prop("Joined", "within_last_days", 1)
    assert at(datetime(2026, 3, 10, 7, 59, 59, tzinfo=UTC), joined) == set()  # not yet
    assert at(datetime(2026, 3, 10, 8, 0, 0, tzinfo=UTC), joined) == {"a"}
    assert at(datetime(2026, 3, 11, 8, 0, 0, tzinfo=UTC), joined) == {"a"}
    assert at(datetime(2026, 3, 11, 8, 0, 0, 1, tzinfo=UTC), joined) == set()


def test_now_is_needed_only_for_relative_windows() -> None:
    profile_condition({"did": "Charged"}, account_id="A")
    profile_condition(prop("Joined", "before", "2026-01-01"), account_id="A")
    with pytest.raises(ValueError, match="now"):
        profile_condition(did("Charged", in_the_last={"days": 1}), account_id="A")
    with pytest.raises(ValueError, match="now"):
        profile_condition(did("X", where=prop("When", "within_next_days", 3)), account_id="A")
    with pytest.raises(ValueError, match="aware"):
        profile_condition({"did": "Charged"}, account_id="A", now=datetime(2026, 1, 1))


def test_a_saved_segment_must_be_inlined_before_compiling() -> None:
    with pytest.raises(Invalid, match=r"target\.and\[0\]\.segment_id: .*resolve_target"):
        profile_condition({"and": [{"segment_id": 3}]}, account_id="A", now=NOW)


def test_the_same_definition_compiles_for_either_database_from_one_statement(
    db: Database, people: str
) -> None:
    """The statement cache must not mix the two spellings up: run the same compiled object twice."""
    condition = profile_condition(
        {"and": [prop("Tags", "contains", "shoes"), {"did": "Charged"}]}, account_id=people, now=NOW
    )
    from sqlalchemy import select

    query = select(Profile.identity).where(Profile.account_id == people, condition)
    with db.session() as session:
        assert set(session.scalars(query)) == {"a", "b"}
        assert set(session.scalars(query)) == {"a", "b"}


# ----------------------------------------------------------------------------------------------- messages

BAD: list[tuple[Any, str]] = [
    (
        {"and": [prop("City", "equals", "Pune"), {"did": {"event": "Charged", "count": {"at_least": 0}}}]},
        "target.and[1].did.count.at_least must be a positive integer",
    ),
    (
        {"and": [{"did": {"event": "Charged", "count": {"at_least": True}}}]},
        "target.and[0].did.count.at_least",
    ),
    ({"and": []}, "target.and must be a non-empty list"),
    ({"or": "x"}, "target.or must be a non-empty list"),
    ({"or": [{"foo": 1}]}, "target.or[0] must have one of: and, or, not, property, did"),
    ({"or": [{}]}, "target.or[0] is empty"),
    ({"not": prop("A", "like")}, "target.not.op must be one of: equals, not_equals"),
    ({"conditions": [{"property": "A", "op": "like"}]}, "target.conditions[0].op must be one of"),
    ({"conditions": []}, "target.conditions must be a non-empty list"),
    ({"conditions": [{"did": "X"}]}, "target.conditions[0].did is not a field of a property test"),
    (prop("A", "in", []), "target.value must be a non-empty list for 'in'"),
    ({"property": "A", "op": "equals"}, "target.value is required for 'equals'"),
    (prop("A", "equals", {"x": 1}), "target.value must be a string, number or boolean"),
    (prop("A", "equals", float("nan")), "target.value must be a finite number"),
    (prop("A", "gt", True), "target.value must be a number or a string for 'gt'"),
    (prop("A", "in", ["x", [1]]), "target.value[1] must be a string, number or boolean"),
    ({"property": "", "op": "exists"}, "target.property must be a non-empty string"),
    ({"property": "A\x00", "op": "exists"}, "target.property must not contain the NUL character"),
    ({"property": "A", "op": "exists", "extra": 1}, "target.extra is not a field of a property test"),
    (prop("Joined", "before", "2026-03-01T10:00:00"), "must say its time zone"),
    (prop("Joined", "before", "2026-02-30"), 'target.value "2026-02-30" is not a valid date'),
    (prop("Joined", "after", "yesterday"), 'target.value must be a date "YYYY-MM-DD" or a date-time'),
    (prop("Joined", "after", 20260301), "target.value must be a date string for 'after'"),
    (prop("Joined", "within_last_days", 1.5), "target.value must be a whole number of days from 1 to 36500"),
    (prop("Joined", "within_next_days", 0), "target.value must be a whole number of days"),
    ({"did": {"event": ""}}, "target.did.event must be a non-empty event name"),
    ({"did": ""}, "target.did must be a non-empty event name"),
    ({"did": 5}, "target.did must be an event name or an object"),
    ({"did": {"event": "X", "when": 1}}, "target.did.when is not a field here"),
    (
        {"did": {"event": "X", "in_the_last": {"weeks": 2}}},
        'target.did.in_the_last must be one of {"minutes"',
    ),
    (
        {"did": {"event": "X", "in_the_last": {"days": 0}}},
        "target.did.in_the_last.days must be a whole number",
    ),
    (
        {"did": {"event": "X", "in_the_last": {"days": 1, "hours": 2}}},
        "target.did.in_the_last must be one of",
    ),
    ({"did": {"event": "X", "between": {"from": "2026-13-01"}}}, "target.did.between.from"),
    ({"did": {"event": "X", "between": {}}}, 'target.did.between must be an object with "from" and/or "to"'),
    (
        {"did": {"event": "X", "between": {"from": "2026-03-02", "to": "2026-03-01"}}},
        "target.did.between.from must not be later than target.did.between.to",
    ),
    ({"did": {"event": "X", "count": {"exactly": 1, "at_least": 1}}}, "target.did.count: exactly cannot"),
    (
        {"did": {"event": "X", "count": {"at_least": 3, "at_most": 2}}},
        "target.did.count.at_most must not be less",
    ),
    ({"did": {"event": "X", "count": {"exactly": -1}}}, "target.did.count.exactly must be a whole number"),
    ({"did": {"event": "X", "count": {}}}, 'target.did.count must be an object like {"at_least": 2}'),
    ({"did": {"event": "X", "where": [{"did": "Y"}]}}, "target.did.where[0].did is not allowed here"),
    ({"did": {"event": "X", "where": []}}, "target.did.where must not be empty"),
    ({"did_not": {"event": "X", "where": {"and": [prop("A", "op")]}}}, "target.did_not.where.and[0].op"),
    (
        {"did": {"event": "X", "in_the_last": {"days": 1}, "ever": True}},
        "use one of in_the_last, between or ever",
    ),
    ({"did": {"event": "X", "ever": False}}, "target.did.ever must be true"),
    ({"and": [prop("A", "exists")], "or": [prop("A", "exists")]}, "target must have only one key, 'and'"),
    ({"all": False}, "target.all must be true"),
    ({"all": True, "conditions": []}, "target must have only one key"),
    ({"segment_id": 0}, "target.segment_id must be a positive integer"),
    ({"segment_id": "3"}, "target.segment_id must be a positive integer"),
    ([1, 2], "target must be an object"),
    (
        {"not": {"not": {"not": {"not": {"and": [5]}}}}},
        "target.not.not.not.not.and[0] must be an object, got 5",
    ),
]


@pytest.mark.parametrize(("target", "message"), BAD, ids=lambda x: str(x)[:50])
def test_invalid_definitions_name_the_faulty_part(target: Any, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        validate_target(target)
    assert caught.value.status == 422
    assert caught.value.code == "invalid_segment"
    assert message in caught.value.message, caught.value.message


def test_limits() -> None:
    deep: dict[str, Any] = prop("A", "exists")
    for _ in range(30):
        deep = {"not": deep}
    with pytest.raises(Invalid, match="nested too deeply"):
        validate_target(deep)
    with pytest.raises(Invalid, match="at most 250 conditions"):
        validate_target({"or": [prop("A", "equals", i) for i in range(251)]})
    with pytest.raises(Invalid, match="more than 1000 values"):
        validate_target(prop("A", "in", list(range(1001))))
    validate_target({"or": [prop("A", "equals", i) for i in range(250)]})
