"""Bounded work (issue 9, item 10): Liquid limits, one segment size limit both databases compile, statement
time-outs, reads that do not take SQLite's write lock, custom-property caps, and live-trigger planning
whose statement count does not grow with the events of an upload."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update

import tidings.db
from tests.conftest import basic, clevertap, new_account
from tests.helpers import insert_profiles, phone, refused
from tidings.accounts.models import Account
from tidings.accounts.service import NewAccount
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.campaigns.triggers import on_events
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.errors import Invalid
from tidings.personalization import service as personalization
from tidings.personalization.service import PersonalizationError, Renderer
from tidings.profiles.models import Event, Profile
from tidings.profiles.service import ingest
from tidings.secrets import SecretBox
from tidings.segments.compiler import MAX_SIZE, SIZE_PER_CONDITION
from tidings.templates.service import create_template

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _template(db: Database, account_id: str) -> int:
    from tidings.templates.models import Template

    with db.session() as session:
        found = session.scalar(select(Template.id).where(Template.account_id == account_id))
        if found is not None:
            return int(found)
        return create_template(
            session, account_id, name="shop:promo", body="Hi {{1}}", category="MARKETING"
        ).id


def _live(db: Database, account_id: str, now: datetime, **kwargs: Any) -> int:
    kwargs.setdefault("variables", ['{{ Profile.Name | default: "there" }}'])
    with db.session() as session:
        campaign_id = create_campaign(
            session,
            account_id,
            CampaignCreate(name="live", template_id=_template(db, account_id), send_at=now, **kwargs),
        ).id
    with db.session() as session:
        start_campaign(session, campaign_id, now)
    return campaign_id


def _people(db: Database, account_id: str, n: int) -> None:
    insert_profiles(
        db,
        account_id,
        [
            {"identity": f"u{i}", "phone": phone(i), "properties": {"Name": f"N{i}", "City": "Pune"}}
            for i in range(n)
        ],
    )


def _charged(identity: str, ts: int, **data: Any) -> dict[str, Any]:
    return {"identity": identity, "type": "event", "evtName": "Charged", "ts": ts, "evtData": data}


# ---- Liquid -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("{% for i in (1..100000000) %}x{% endfor %}", "range of 100000000 numbers"),
        ("{% include 'header' %}", "'include' tag is not allowed"),
        ("{% render 'header' %}", "'render' tag is not allowed"),
        ("x" * 5000, "at most 4096"),
    ],
)
def test_unbounded_liquid_is_refused_when_the_campaign_is_created(
    db: Database, account: NewAccount, client: TestClient, source: str, says: str
) -> None:
    template_id = _template(db, account.account_id)
    with db.session() as session, pytest.raises(Invalid) as caught:
        create_campaign(
            session, account.account_id, CampaignCreate(name="c", template_id=template_id, variables=[source])
        )
    assert caught.value.code == "invalid_liquid" and says in caught.value.message
    answer = client.post(
        "/api/v1/campaigns",
        headers=basic(account),
        json={"name": "c", "template_id": template_id, "variables": [source]},
    )
    assert says in refused(answer, 422, "invalid_liquid")


@pytest.mark.parametrize(
    "source",
    [
        "{% assign n = 3000000 %}{{ (1..n) | join: ',' }}",  # a range built at render time
        "{% for i in (1..1000) %}{% for j in (1..1000) %}{% endfor %}{% endfor %}",  # nested loops
        "{% for i in (1..1000) %}xxxxxxxxxx{% endfor %}",  # 10 kB of output
        "{% assign s = 'ab' %}{% for i in (1..16) %}{% assign s = s | append: s %}{% endfor %}{{ s | size }}",
        "{% assign x = 9 %}{% for i in (1..16) %}{% assign x = x | times: x %}{% endfor %}{{ x | size }}",
    ],
)
def test_liquid_that_breaks_a_limit_at_render_skips_the_recipient(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(personalization, "RENDER_SECONDS", 3600.0)  # a limit stops it, not the time budget
    renderer = Renderer((source,))
    with pytest.raises(PersonalizationError) as refused_value, _counting_calls() as calls:
        renderer.render({"Name": "Ann"})
    assert refused_value.value.reason == "liquid_limit"
    assert calls[0] <= MOST_CALLS  # bounded: thousands of calls, not the millions it would take unbounded


MOST_CALLS = 100_000


@contextmanager
def _counting_calls() -> Iterator[list[int]]:
    """Counts the function calls (Python's and C's) made in the block: the work it did, which the wall
    clock only hints at. Past ``MOST_CALLS`` the block is stopped, so unbounded work fails at once."""
    calls = [0]

    def count(frame: object, event: str, arg: object) -> None:
        calls[0] += 1
        if calls[0] > MOST_CALLS:
            sys.setprofile(None)
            raise AssertionError(f"more than {MOST_CALLS:,} calls: the work is not bounded")

    sys.setprofile(count)
    try:
        yield calls
    finally:
        sys.setprofile(None)


def test_liquid_has_a_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    source = "{% for i in (1..10) %}{{ Profile.Name }}{% endfor %}"
    assert Renderer((source,)).render({"Name": "A"}) == ["AAAAAAAAAA"]
    monkeypatch.setattr(personalization, "_SLOW", {})  # this test's strikes stay its own
    monkeypatch.setattr(personalization, "RENDER_SECONDS", -1.0)  # already spent
    for _ in range(personalization.SLOW_STRIKES):
        with pytest.raises(PersonalizationError) as refused_value:
            Renderer((source,)).render({"Name": "A"})
        assert refused_value.value.reason == "liquid_timeout"
    # Out of time too often: not rendered again (its time is not spent again) — even with time to spare.
    monkeypatch.setattr(personalization, "RENDER_SECONDS", 60.0)
    with pytest.raises(PersonalizationError) as refused_value:
        Renderer((source,)).render({"Name": "A"})
    assert (
        refused_value.value.reason == "liquid_timeout" and "no longer rendered" in refused_value.value.detail
    )
    personalization._SLOW.clear()
    assert Renderer((source,)).render({"Name": "A"}) == ["AAAAAAAAAA"]


# ---- one segment size limit --------------------------------------------------------------------------


def _sized(conditions: int, listed: int = 0) -> dict[str, Any]:
    """A definition of the given size: 11 lists of 1,000 values (the most bound parameters a unit of size
    can cost) and equality tests, in an OR that Pune's profiles match."""
    lists = [
        {"property": f"P{i}", "op": "in", "value": list(range(i * 1000, i * 1000 + 1000))}
        for i in range(listed)
    ]
    tests = [
        {"property": "City", "op": "equals", "value": "Pune" if i == 0 else f"c{i}"}
        for i in range(conditions)
    ]
    return {"or": [*lists, *tests]}


def _size(conditions: int, listed: int = 0) -> int:
    return (conditions + listed) * SIZE_PER_CONDITION + listed * 1000


UNDER = (MAX_SIZE - _size(0, 11)) // SIZE_PER_CONDITION  # equality tests beside 11 lists of 1,000


def test_one_size_limit_both_databases_can_run(db: Database, account: NewAccount, client: TestClient) -> None:
    assert _size(UNDER, 11) <= MAX_SIZE < _size(UNDER + 1, 11)
    _people(db, account.account_id, 3)
    over = client.post(
        "/api/v1/segments/estimate", headers=basic(account), json={"definition": _sized(UNDER + 1, 11)}
    )
    message = refused(over, 422, "invalid_segment")
    assert f"over the limit of {MAX_SIZE}" in message
    under = client.post(
        "/api/v1/segments/estimate", headers=basic(account), json={"definition": _sized(UNDER, 11)}
    )
    assert under.status_code == 200, under.text
    assert under.json() == {"count": 3}

    # The largest statement a campaign runs: a target and a trigger condition at the limit, joined to the
    # 1,000 events of an upload — it compiles and runs on this database.
    now = utcnow()
    campaign_id = _live(
        db,
        account.account_id,
        now - timedelta(minutes=1),
        kind="single_action",
        target=_sized(UNDER, 11),
        trigger={"event": "Charged", "where": _sized(UNDER, 11)},
    )
    ts = int(time.time())
    records = [_charged(f"u{i % 3}", ts, City="Pune", n=i) for i in range(1000)]
    answer = client.post("/1/upload", headers=clevertap(account), json={"d": records})
    assert answer.json() == {"status": "success", "processed": 1000, "unprocessed": []}
    with db.session() as session:
        assert session.scalar(select(func.count()).where(Message.campaign_id == campaign_id)) == 1000


# ---- statement time-outs and reads -------------------------------------------------------------------


def test_an_estimate_that_runs_too_long_answers_query_timeout(
    db: Database, account: NewAccount, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_profiles(
        db, account.account_id, [{"identity": f"u{i}", "properties": {"City": "Pune"}} for i in range(20_000)]
    )
    slow = {"or": [{"property": f"Key {i} é", "op": "contains", "value": "x"} for i in range(200)]}
    monkeypatch.setattr(tidings.db, "API_QUERY_TIMEOUT", 0.05)
    answer = client.post("/api/v1/segments/estimate", headers=basic(account), json={"definition": slow})
    assert "0.05 s" in refused(answer, 503, "query_timeout")
    monkeypatch.setattr(tidings.db, "API_QUERY_TIMEOUT", 60.0)
    quick = {"property": "City", "op": "equals", "value": "Pune"}
    answer = client.post("/api/v1/segments/estimate", headers=basic(account), json={"definition": quick})
    assert answer.json() == {"count": 20_000}


def _never_wait_for_a_lock(dbapi_connection: Any, record: object, proxy: object) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=0")


def test_a_read_held_open_does_not_make_an_upload_wait(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    """An estimate or the stats read in a read-only unit of work: on SQLite it takes no write lock, so
    an upload meanwhile is stored at once (it used to wait for the read, then fail "database is locked").
    Here no connection may wait for a lock at all (a busy time-out of 0, not 30 s): an upload that had to
    wait for the read, which stays open all along, fails at once."""
    _people(db, account.account_id, 2)
    sqlite = db.engine.dialect.name == "sqlite"
    if sqlite:
        db.engine.dispose()
        event.listen(db.engine.pool, "checkout", _never_wait_for_a_lock)
    try:
        with db.for_api().read() as reading:
            assert reading.scalar(select(func.count()).select_from(Profile)) == 2
            answer = client.post(
                "/1/upload",
                headers=clevertap(account),
                json={"d": [{"identity": "new", "type": "profile", "profileData": {"Name": "New"}}]},
            )
            assert answer.json() == {"status": "success", "processed": 1, "unprocessed": []}
            assert reading.scalar(select(func.count()).select_from(Profile)) == 2  # its own snapshot
    finally:
        if sqlite:
            event.remove(db.engine.pool, "checkout", _never_wait_for_a_lock)
            db.engine.dispose()  # the next connections wait for locks again (the busy time-out of 30 s)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Profile)) == 3


# ---- custom property caps ----------------------------------------------------------------------------


def test_custom_property_caps_refuse_the_record_alone(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    keys = {f"k{i}": i for i in range(256)}
    standard = {"Name": "Ann", "Phone": phone(1), "MSG-whatsapp": True, "MSG-sms": False, "Email": "a@b.c"}
    records = [
        {"identity": "too-many", "type": "profile", "profileData": {**keys, "k256": 1}},
        {"identity": "full", "type": "profile", "profileData": {**keys, **standard}},
        _charged("full", int(time.time()), **{f"p{i}": i for i in range(257)}),
        _charged("full", int(time.time()), **{f"p{i}": i for i in range(256)}),
    ]
    answer = client.post("/1/upload", headers=clevertap(account), json={"d": records})
    body = answer.json()
    assert answer.status_code == 200 and body["processed"] == 2
    assert [(f["code"], f["record"]) for f in body["unprocessed"]] == [(522, records[0]), (522, records[2])]
    assert "257 custom keys" in body["unprocessed"][0]["error"]
    assert "257 properties" in body["unprocessed"][1]["error"]
    with db.session() as session:
        assert session.scalar(select(Profile.id).where(Profile.identity == "too-many")) is None
        full = session.scalars(select(Profile).where(Profile.identity == "full")).one()
        assert len(full.properties) == 256 + len(standard)
        assert session.scalar(select(func.count()).select_from(Event).where(Event.name == "Charged")) == 1

    # A full profile takes no new custom key, but its keys still change.
    more = [
        {"identity": "full", "type": "profile", "profileData": {"k0": "changed", "extra": 1}},
        {"identity": "full", "type": "profile", "profileData": {"k0": "changed", "Gender": "F"}},
    ]
    body = client.post("/1/upload", headers=clevertap(account), json={"d": more}).json()
    assert body["processed"] == 1
    assert [(f["code"], f["record"]) for f in body["unprocessed"]] == [(522, more[0])]
    with db.session() as session:
        full = session.scalars(select(Profile).where(Profile.identity == "full")).one()
        assert full.properties["k0"] == "changed" and "extra" not in full.properties


# ---- set-based live-trigger planning -----------------------------------------------------------------


def test_trigger_planning_statements_do_not_grow_with_the_events(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    _people(db, account.account_id, 300)
    now = utcnow() - timedelta(minutes=1)
    every = _live(db, account.account_id, now, kind="single_action", trigger={"event": "Charged"})
    once = _live(
        db,
        account.account_id,
        now,
        kind="single_action",
        trigger={"event": "Charged"},
        frequency={"rule": "once"},
    )
    _live(
        db,
        account.account_id,
        now,
        kind="inaction",
        trigger={"event": "Charged", "absent_event": "Refund", "within_minutes": 30},
    )
    with db.session() as session:  # the property catalogue knows Charged and its properties already
        ingest(session, account.account_id, [_charged("known", int(time.time()))])
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    def upload(identities: range) -> int:
        ts = int(time.time())
        records = [_charged(f"u{i}", ts) for i in identities]
        statements.clear()
        event.listen(db.engine, "before_cursor_execute", count)
        try:
            answer = client.post("/1/upload", headers=clevertap(account), json={"d": records})
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
        assert answer.json()["processed"] == len(records)
        return len(statements)

    few = upload(range(0, 5))
    many = upload(range(5, 300))
    assert many == few, f"{few} statements for 5 events, {many} for 295"
    with db.session() as session:
        for campaign_id in (every, once):
            assert session.scalar(select(func.count()).where(Message.campaign_id == campaign_id)) == 300


def _upload(db: Database, account_id: str, records: list[dict[str, Any]], now: datetime) -> None:
    with db.session() as session:
        result = ingest(session, account_id, records, now=now)
        on_events(session, account_id, [e.id for e in result.events], now)


def _outcomes(db: Database, campaign_id: int) -> list[tuple[str, str | None]]:
    """Each event's outcome, in the order the events were stored (their ids)."""
    with db.session() as session:
        rows = session.execute(
            select(Message.occurrence, Message.state, Message.reason).where(
                Message.campaign_id == campaign_id
            )
        ).all()
    return [(state, reason) for _, state, reason in sorted(rows, key=lambda row: int(row[0][1:]))]


def test_a_profiles_events_in_one_upload_are_planned_as_if_one_at_a_time(
    db: Database, account: NewAccount, box: SecretBox
) -> None:
    capped = new_account(db, box, "Capped")
    with db.session() as session:
        session.execute(
            update(Account)
            .where(Account.id == capped.account_id)
            .values(settings={"frequency_cap": {"max": 2, "hours": 24}})
        )
    for acc in (account, capped):
        _people(db, acc.account_id, 2)
    once = _live(
        db,
        account.account_id,
        T0,
        kind="single_action",
        trigger={"event": "Charged"},
        frequency={"rule": "once"},
        system_control_group=False,
    )
    capped_campaign = _live(
        db,
        capped.account_id,
        T0,
        kind="single_action",
        trigger={"event": "Charged"},
        system_control_group=False,
    )
    # "twin" shares u0's phone number: one person, whom the account's cap counts once.
    insert_profiles(db, capped.account_id, [{"identity": "twin", "phone": phone(0)}])
    at = int((T0 + timedelta(minutes=1)).timestamp())
    records = [*(_charged("u0", at, n=n) for n in range(4)), _charged("twin", at), _charged("u1", at)]
    _upload(
        db, account.account_id, [r for r in records if r["identity"] != "twin"], T0 + timedelta(minutes=1)
    )
    _upload(db, capped.account_id, records, T0 + timedelta(minutes=1))
    queued, skipped = ("queued", None), ("skipped", "campaign_frequency_cap")
    assert _outcomes(db, once) == [queued, skipped, skipped, skipped, queued]
    # u0's first two events reach the cap of two a person; u0's later ones and the twin's are capped.
    capped_out = ("skipped", "global_frequency_cap")
    assert _outcomes(db, capped_campaign) == [queued, queued, capped_out, capped_out, capped_out, queued]
