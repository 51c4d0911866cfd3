"""The four campaign types, engagement rules and multivariate messages, with a controlled clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select, update

from tests.conftest import clevertap
from tests.helpers import insert_profiles, phone
from tidings.accounts.models import Account
from tidings.accounts.service import NewAccount
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate, VariantCreate
from tidings.campaigns.service import create_campaign, run_live, start_campaign
from tidings.campaigns.triggers import on_events
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.profiles.service import ingest
from tidings.stats.service import campaign_stats
from tidings.templates.service import create_template

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _template(db: Database, account: NewAccount, name: str = "shop:promo", body: str = "Hi {{1}}") -> int:
    with db.session() as session:
        return create_template(session, account.account_id, name=name, body=body, category="MARKETING").id


def _campaign(db: Database, account: NewAccount, **kwargs: Any) -> int:
    if "template_id" not in kwargs:
        kwargs["template_id"] = _template(db, account)
    kwargs.setdefault("variables", ['{{ Profile.Name | default: "there" }}'])
    kwargs.setdefault("send_at", T0)
    with db.session() as session:
        campaign_id = create_campaign(session, account.account_id, CampaignCreate(name="c", **kwargs)).id
    with db.session() as session:
        start_campaign(session, campaign_id, kwargs["send_at"])
    return campaign_id


def _upload(db: Database, account: NewAccount, records: list[dict[str, Any]], now: datetime) -> None:
    """What POST /1/upload does, at a chosen time: store, then plan live campaigns in the same transaction."""
    with db.session() as session:
        result = ingest(session, account.account_id, records, now=now)
        on_events(session, account.account_id, [e.id for e in result.events], now)


def _rows(db: Database, campaign_id: int) -> dict[str, tuple[str, str | None, str]]:
    with db.session() as session:
        rows = session.execute(
            select(Profile.identity, Message.state, Message.reason, Message.occurrence)
            .join(Profile, Profile.id == Message.profile_id)
            .where(Message.campaign_id == campaign_id)
            .order_by(Message.id)
        ).all()
    return {
        f"{identity}/{occurrence}": (state, reason, occurrence)
        for identity, state, reason, occurrence in rows
    }


def _event(identity: str, name: str, at: datetime, **data: Any) -> dict[str, Any]:
    return {
        "identity": identity,
        "type": "event",
        "evtName": name,
        "ts": int(at.timestamp()),
        "evtData": data,
    }


def _people(db: Database, account: NewAccount, n: int = 3, **props: Any) -> None:
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": f"u{i}", "phone": phone(i), "properties": {"Name": f"N{i}", **props}}
            for i in range(n)
        ],
    )


def test_single_action_fires_on_matching_fresh_events_only(db: Database, account: NewAccount) -> None:
    _people(db, account)
    campaign_id = _campaign(
        db,
        account,
        kind="single_action",
        trigger={"event": "Charged", "where": {"property": "Amount", "op": "gt", "value": 100}},
        variables=["{{ Event.Item | default: 'your order' }}"],
    )
    now = T0 + timedelta(minutes=5)
    _upload(
        db,
        account,
        [
            _event("u0", "Charged", now, Amount=300, Item="shoes"),
            _event("u1", "Charged", now, Amount=50),  # the condition does not hold
            _event("u2", "Charged", now - timedelta(hours=3), Amount=500),  # older than two hours
            _event("u2", "Browsed", now, Amount=500),  # another event
        ],
        now,
    )
    rows = _rows(db, campaign_id)
    assert [key.split("/")[0] for key in rows] == ["u0"]
    with db.session() as session:
        message = session.scalars(select(Message).where(Message.campaign_id == campaign_id)).one()
        assert (message.state, message.reason) == ("queued", None)
        assert message.context == {"Amount": 300, "Item": "shoes"}
    # Every time the user qualifies (the default rule): a second purchase is a second message.
    _upload(db, account, [_event("u0", "Charged", now, Amount=120)], now)
    assert sum(1 for k in _rows(db, campaign_id) if k.startswith("u0/")) == 2


def test_single_action_once_per_user_and_stopped_campaigns(db: Database, account: NewAccount) -> None:
    _people(db, account)
    campaign_id = _campaign(
        db, account, kind="single_action", trigger={"event": "Signed Up"}, frequency={"rule": "once"}
    )
    _upload(db, account, [_event("u0", "Signed Up", T0)], T0)
    _upload(db, account, [_event("u0", "Signed Up", T0)], T0)
    states = [(s, r) for s, r, _ in _rows(db, campaign_id).values()]
    assert states == [("queued", None), ("skipped", "campaign_frequency_cap")]
    with db.session() as session:
        session.execute(update(Campaign).where(Campaign.id == campaign_id).values(state="stopped"))
    _upload(db, account, [_event("u1", "Signed Up", T0)], T0)
    assert len(_rows(db, campaign_id)) == 2


def test_single_action_through_the_upload_api(client: TestClient, db: Database, account: NewAccount) -> None:
    _people(db, account)
    now = datetime.now(UTC)
    campaign_id = _campaign(db, account, kind="single_action", trigger={"event": "Charged"}, send_at=now)
    answer = client.post("/1/upload", headers=clevertap(account), json={"d": [_event("u1", "Charged", now)]})
    assert answer.json()["processed"] == 1
    assert list(_rows(db, campaign_id)) == [f"u1/e{_only_event_id(db)}"]


def _only_event_id(db: Database) -> int:
    from tidings.profiles.models import Event

    with db.session() as session:
        return int(session.scalars(select(Event.id)).one())


def test_inaction_within_time(db: Database, account: NewAccount) -> None:
    _people(db, account, 4)
    campaign_id = _campaign(
        db,
        account,
        kind="inaction",
        trigger={"event": "Added To Cart", "absent_event": "Charged", "within_minutes": 30},
    )
    t = T0 + timedelta(minutes=1)
    _upload(db, account, [_event(f"u{i}", "Added To Cart", t) for i in range(4)], t)
    _upload(db, account, [_event("u1", "Charged", t + timedelta(minutes=10))], t + timedelta(minutes=10))
    _upload(db, account, [_event("u2", "Charged", t + timedelta(minutes=45))], t + timedelta(minutes=45))
    _upload(db, account, [_event("u3", "Charged", t - timedelta(minutes=5))], t)  # before A: does not count

    with db.session() as session:
        run_live(session, t + timedelta(minutes=29))
    assert _rows(db, campaign_id) == {}  # not yet: B may still come
    with db.session() as session:
        run_live(session, t + timedelta(minutes=31))
    assert sorted(k.split("/")[0] for k in _rows(db, campaign_id)) == ["u0", "u2", "u3"]
    with db.session() as session:
        run_live(session, t + timedelta(minutes=90))
    assert len(_rows(db, campaign_id)) == 3  # planned once


def test_on_a_date_fires_once_at_the_right_moment(db: Database, account: NewAccount) -> None:
    flight = "2026-11-27T10:00:00Z"
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "soon", "phone": phone(1), "properties": {"Flight": flight}},
            {"identity": "past", "phone": phone(2), "properties": {"Flight": "2026-11-20T10:00:00Z"}},
            {"identity": "none", "phone": phone(3), "properties": {}},
            {"identity": "india", "phone": phone(4), "properties": {"Flight": flight, "Tz": "Asia/Kolkata"}},
        ],
    )
    # One day before the flight, at 09:00 in the user's time zone.
    campaign_id = _campaign(
        db,
        account,
        kind="on_date",
        trigger={"property": "Flight", "offset_minutes": -1440, "at_time": "09:00", "timezone": "user"},
    )
    with db.session() as session:
        run_live(session, datetime(2026, 11, 26, 3, 0, tzinfo=UTC))  # 08:30 in India: nobody yet
    assert _rows(db, campaign_id) == {}
    with db.session() as session:
        run_live(session, datetime(2026, 11, 26, 3, 31, tzinfo=UTC))  # 09:01 in India
    assert list(_rows(db, campaign_id)) == [f"india/{flight}"]
    with db.session() as session:
        run_live(session, datetime(2026, 11, 26, 9, 1, tzinfo=UTC))  # 09:01 UTC
    assert list(_rows(db, campaign_id)) == [f"india/{flight}", f"soon/{flight}"]
    with db.session() as session:
        run_live(session, datetime(2026, 11, 27, 12, 0, tzinfo=UTC))
    assert len(_rows(db, campaign_id)) == 2  # once per user and date; "past" never


def _settings(db: Database, account: NewAccount, **settings: Any) -> None:
    with db.session() as session:
        session.execute(update(Account).where(Account.id == account.account_id).values(settings=settings))


@pytest.mark.parametrize("action", ["delay", "drop"])
def test_dnd_hours_delay_or_drop(db: Database, account: NewAccount, action: str) -> None:
    _people(db, account, 2)
    _settings(db, account, dnd={"start": "22:00", "end": "08:00", "timezone": "account", "action": action})
    night = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    template_id = _template(db, account)
    campaign_id = _campaign(db, account, send_at=night, template_id=template_id)
    with db.session() as session:
        rows = session.scalars(select(Message).where(Message.campaign_id == campaign_id)).all()
        if action == "delay":
            assert {(m.state, m.next_attempt_at) for m in rows} == {
                ("queued", datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
            }
        else:
            assert {(m.state, m.reason) for m in rows} == {("skipped", "dnd")}
    day_campaign = _campaign(
        db, account, send_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC), template_id=template_id
    )
    assert {s for s, _, _ in _rows(db, day_campaign).values()} == {"queued"}


def test_dnd_in_the_users_time_zone(db: Database, account: NewAccount) -> None:
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "utc", "phone": phone(1)},
            {"identity": "india", "phone": phone(2), "properties": {"Tz": "Asia/Kolkata"}},
        ],
    )
    _settings(db, account, dnd={"start": "22:00", "end": "08:00", "timezone": "user", "action": "delay"})
    at = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)  # 22:30 in India, 17:00 in UTC
    campaign_id = _campaign(db, account, template_id=_template(db, account), variables=["x"], send_at=at)
    with db.session() as session:
        due = dict(
            session.execute(
                select(Profile.identity, Message.next_attempt_at)
                .join(Profile, Profile.id == Message.profile_id)
                .where(Message.campaign_id == campaign_id)
            ).all()
        )
    assert due == {"utc": at, "india": datetime(2026, 11, 26, 2, 30, tzinfo=UTC)}  # 08:00 in India


def test_global_frequency_cap_across_campaigns(db: Database, account: NewAccount) -> None:
    _people(db, account, 3)
    _settings(db, account, frequency_cap={"max": 1, "hours": 24})
    template_id = _template(db, account)
    first = _campaign(db, account, template_id=template_id)
    second = _campaign(db, account, template_id=template_id, send_at=T0 + timedelta(hours=1))
    exempt = _campaign(
        db, account, template_id=template_id, send_at=T0 + timedelta(hours=2), respect_rules=False
    )
    later = _campaign(db, account, template_id=template_id, send_at=T0 + timedelta(hours=25))
    assert {s for s, _, _ in _rows(db, first).values()} == {"queued"}
    assert {(s, r) for s, r, _ in _rows(db, second).values()} == {("skipped", "global_frequency_cap")}
    assert {s for s, _, _ in _rows(db, exempt).values()} == {"queued"}
    # A day later, the earlier messages no longer count … but the exempt one does (it was sent).
    assert {(s, r) for s, r, _ in _rows(db, later).values()} == {("skipped", "global_frequency_cap")}


def test_recurring_and_unknown_kinds_are_refused(db: Database, account: NewAccount) -> None:
    """The campaign model refuses them (the API answers its own code, tests/test_campaign_api.py)."""
    template_id = _template(db, account)
    for kwargs in ({"kind": "recurring"}, {"kind": "multiple_dates"}, {"schedule": {"every": "week"}}):
        with pytest.raises(ValidationError) as refused:
            CampaignCreate(name="x", template_id=template_id, variables=["x"], **kwargs)
        error = refused.value.errors()[0]
        assert error["type"] == "not_allowed_on_whatsapp"
        assert "WhatsApp does not allow" in error["msg"]
    with pytest.raises(ValidationError, match="within_minutes"):
        CampaignCreate(
            name="x",
            template_id=template_id,
            variables=["x"],
            kind="inaction",
            trigger={"event": "A", "absent_event": "B"},
        )
    with pytest.raises(ValidationError, match="literal_error"):
        CampaignCreate(name="x", template_id=template_id, variables=["x"], kind="weekly_digest")


def test_multivariate_by_percentage_and_by_property(db: Database, account: NewAccount) -> None:
    n = 2000
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": f"u{i}", "phone": phone(i), "properties": {"Language": ["en", "hi", "ta"][i % 3]}}
            for i in range(n)
        ],
    )
    a, b = _template(db, account, "shop:a"), _template(db, account, "shop:b", "Namaste {{1}}")
    split = _campaign(
        db,
        account,
        template_id=None,
        variables=[],
        split={"by": "percentage"},
        variants=[
            VariantCreate(template_id=a, variables=["x"], weight=30),
            VariantCreate(template_id=b, variables=["y"], weight=70),
        ],
    )
    with db.session() as session:
        stats = campaign_stats(session, split)
    assert set(stats["variants"]) == {"A", "B"}
    share_a = stats["variants"]["A"]["audience"] / n
    assert (
        0.25 <= share_a <= 0.35
        and stats["variants"]["A"]["audience"] + stats["variants"]["B"]["audience"] == n
    )

    by_language = _campaign(
        db,
        account,
        template_id=None,
        variables=[],
        split={"by": "property", "property": "Language"},
        variants=[
            VariantCreate(template_id=b, variables=["y"], match_value="hi"),
            VariantCreate(template_id=a, variables=["x"]),
        ],
    )
    with db.session() as session:
        stats = campaign_stats(session, by_language)
    assert stats["variants"]["A"]["audience"] == sum(1 for i in range(n) if i % 3 == 1)
    assert stats["variants"]["B"]["audience"] == sum(1 for i in range(n) if i % 3 != 1)


def test_system_control_group_is_the_same_users_for_every_campaign(db: Database, account: NewAccount) -> None:
    n = 4000
    insert_profiles(db, account.account_id, [{"identity": f"u{i}", "phone": phone(i)} for i in range(n)])
    _settings(db, account, system_control_group_pct=5)
    template_id = _template(db, account)
    first, second = (_campaign(db, account, template_id=template_id) for _ in range(2))
    transactional = _campaign(db, account, template_id=template_id, system_control_group=False)

    def held(campaign_id: int) -> set[str]:
        return {
            k
            for k, (s, r, _) in _rows(db, campaign_id).items()
            if r == "system_control_group" and s == "control"
        }

    assert held(first) == held(second) and 0.03 * n <= len(held(first)) <= 0.07 * n
    assert held(transactional) == set()


def test_conversion_and_lift(db: Database, account: NewAccount) -> None:
    n = 400
    _people(db, account, n)
    campaign_id = _campaign(
        db, account, control_group_pct=50, conversion={"event": "Charged", "within_hours": 24}
    )
    with db.session() as session:
        session.execute(
            update(Message).where(Message.state == "queued").values(state="delivered", sent_at=T0)
        )
        rows = session.execute(
            select(Profile.identity, Message.state).join(Profile, Profile.id == Message.profile_id)
        ).all()
    messaged = [i for i, s in rows if s == "delivered"]
    control = [i for i, s in rows if s == "control"]
    buyers = messaged[: len(messaged) // 2] + control[: len(control) // 4]
    late = messaged[len(messaged) // 2 : len(messaged) // 2 + 5]  # after the window: not counted
    _upload(
        db, account, [_event(i, "Charged", T0 + timedelta(hours=2)) for i in buyers], T0 + timedelta(hours=2)
    )
    _upload(
        db, account, [_event(i, "Charged", T0 + timedelta(hours=30)) for i in late], T0 + timedelta(hours=30)
    )
    with db.session() as session:
        conversion = campaign_stats(session, campaign_id)["conversion"]
    assert conversion["messaged"] == len(messaged) and conversion["control"] == len(control)
    assert conversion["messaged_converted"] == len(messaged) // 2
    assert conversion["control_converted"] == len(control) // 4
    expected_lift = (conversion["messaged_rate"] - conversion["control_rate"]) / conversion["control_rate"]
    assert conversion["lift"] == pytest.approx(expected_lift) and conversion["lift"] > 0.9


def test_a_live_trigger_is_sent_with_the_events_values(
    live: tuple[str, Any], db: Database, account: NewAccount
) -> None:
    """End to end on the real server: the upload plans the message, the worker sends it through the
    sandbox with the event's values rendered."""
    import time

    import httpx

    url, _app = live
    _people(db, account, 2)
    now = datetime.now(UTC)
    template_id = _template(db, account, "shop:thanks", "Thanks for buying {{1}} ({{2}})")
    campaign_id = _campaign(
        db,
        account,
        kind="single_action",
        trigger={"event": "Charged"},
        template_id=template_id,
        variables=["{{ Event.Item }}", "{{ Profile.Name }}"],
        send_at=now,
    )
    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post(
            "/1/upload",
            headers=clevertap(account),
            json={"d": [_event("u1", "Charged", now, Item="running shoes")]},
        )
        assert answer.json()["processed"] == 1
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    while datetime.now(UTC) < deadline:
        with db.session() as session:
            message = session.scalars(select(Message).where(Message.campaign_id == campaign_id)).one()
        # Recorded by the worker (the sandbox's status webhook may move the row before that).
        if message.state not in ("queued", "sending") and message.claimed_by is None:
            break
        time.sleep(0.05)
    assert message.state in ("sent", "delivered", "read", "failed")
    assert message.params == ["running shoes", "N1"]


def test_overlapping_scheduler_ticks_start_a_campaign_once(db: Database, account: NewAccount) -> None:
    """Four ticks at once (as four processes would): the campaign starts once and nobody is planned twice."""
    from concurrent.futures import ThreadPoolExecutor

    from tidings.campaigns.service import scheduler_tick

    n = 500
    _people(db, account, n)
    with db.session() as session:
        campaign_id = create_campaign(
            session,
            account.account_id,
            CampaignCreate(name="c", template_id=_template(db, account), variables=["x"], send_at=T0),
        ).id
    with ThreadPoolExecutor(4) as pool:
        list(
            pool.map(
                lambda _: scheduler_tick(db, timedelta(minutes=5), now=T0 + timedelta(seconds=1)), range(4)
            )
        )
    with db.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None and campaign.state == "running" and campaign.audience_size == n
    assert len(_rows(db, campaign_id)) == n
