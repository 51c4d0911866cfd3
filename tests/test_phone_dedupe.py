"""One person is one phone number: of the profiles that share a number, one per campaign occurrence gets
the message, the others are ``skipped`` as ``duplicate_phone`` (so Sent + Errors + Control group is still
the audience), control groups stay what the hash says, and the frequency caps count what the number got."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select, update

from tests.conftest import basic, clevertap
from tests.helpers import insert_profiles, phone
from tidings.accounts.models import Account
from tidings.accounts.service import NewAccount
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, run_live, start_campaign
from tidings.campaigns.triggers import engagement_context, on_events
from tidings.conversations.service import record_inbound
from tidings.db import Database
from tidings.delivery import planning
from tidings.delivery.models import Message
from tidings.delivery.planning import control_bucket, control_salts, plan_audience
from tidings.profiles.models import Profile
from tidings.profiles.service import ingest
from tidings.providers.base import InboundReply
from tidings.stats.service import campaign_stats
from tidings.templates.service import create_template

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _campaign(db: Database, account: NewAccount, start: bool = True, **kwargs: Any) -> int:
    with db.session() as session:
        template = create_template(
            session,
            account.account_id,
            name=f"shop:t{time.monotonic_ns()}",
            body="Hi {{1}}",
            category="MARKETING",
        )
        kwargs.setdefault("variables", ['{{ Profile.Name | default: "there" }}'])
        kwargs.setdefault("send_at", T0)
        kwargs.setdefault("target", {"all": True})
        campaign_id = create_campaign(
            session, account.account_id, CampaignCreate(name="c", template_id=template.id, **kwargs)
        ).id
    if start:
        with db.session() as session:
            start_campaign(session, campaign_id, kwargs["send_at"])
    return campaign_id


def _rows(db: Database, campaign_id: int) -> dict[str, tuple[str, str | None]]:
    with db.session() as session:
        rows = session.execute(
            select(Profile.identity, Message.occurrence, Message.state, Message.reason)
            .join(Profile, Profile.id == Message.profile_id)
            .where(Message.campaign_id == campaign_id)
        ).all()
    return {f"{i}/{o}" if o else i: (state, reason) for i, o, state, reason in rows}


def _replan(db: Database, campaign_id: int, audience: Any, now: datetime) -> int:
    with db.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        context = engagement_context(session, campaign.account_id)
        return plan_audience(session, campaign, audience, now, rules=context.rules, account_tz=context.tz)


@pytest.fixture(params=["few", "many"])
def threshold(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways of finding shared numbers: per row (a few rows planned), or the account's shared numbers
    listed first (many rows planned; the threshold lowered so that these small audiences take it)."""
    if request.param == "many":
        monkeypatch.setattr(planning, "MANY", 0)


@pytest.mark.usefixtures("threshold")
def test_one_time_campaign_plans_one_row_per_phone(db: Database, account: NewAccount) -> None:
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "app-ana", "phone": phone(1)},
            {"identity": "crm-ana", "phone": phone(1)},  # Ana again, under the CRM's identity
            {"identity": "bo", "phone": phone(2)},
            {"identity": "old-cy", "phone": phone(3), "opt_in": False},
            {"identity": "cy", "phone": phone(3)},  # the opted-in profile of the number is the one planned
            {"identity": "nophone-1"},
            {"identity": "nophone-2"},  # no phone is not a shared phone
        ],
    )
    campaign_id = _campaign(db, account)
    assert _rows(db, campaign_id) == {
        "app-ana": ("queued", None),
        "crm-ana": ("skipped", "duplicate_phone"),
        "bo": ("queued", None),
        "old-cy": ("skipped", "not_opted_in"),
        "cy": ("queued", None),
        "nophone-1": ("skipped", "no_valid_phone"),
        "nophone-2": ("skipped", "no_valid_phone"),
    }
    with db.session() as session:
        stats = campaign_stats(session, campaign_id)
        assert stats["audience"] == 7 and stats["pending"] == 3
        assert stats["errors_by_reason"]["duplicate_phone"] == 1
        assert (
            stats["sent"] + stats["errors"] + stats["control_group"] + stats["pending"] == stats["audience"]
        )
        queued = session.scalars(
            select(Message.to_phone).where(Message.campaign_id == campaign_id, Message.state == "queued")
        ).all()
    assert sorted(queued) == [phone(1), phone(2), phone(3)]


@pytest.mark.usefixtures("threshold")
def test_control_groups_stay_deterministic_with_shared_phones(db: Database, account: NewAccount) -> None:
    # 120 numbers, three identities each; in every number the lowest identity opted out a third of the time.
    rows = []
    for n in range(120):
        for k in range(3):
            rows.append({"identity": f"p{n}-{k}", "phone": phone(n), "opt_in": not (k == 0 and n % 3 == 0)})
    insert_profiles(db, account.account_id, rows)
    campaign_id = _campaign(db, account, control_group_pct=30)
    first = _rows(db, campaign_id)
    a, b = control_salts(account.account_id, campaign_id)
    with db.session() as session:
        profiles = session.execute(select(Profile.identity, Profile.id, Profile.seed, Profile.phone)).all()
    by_phone: dict[str, list[tuple[int, str, int]]] = {}
    for identity, profile_id, seed, number in profiles:
        by_phone.setdefault(number, []).append((profile_id, identity, seed))
    for number, people in by_phone.items():
        eligible = sorted(p for p in people if first[p[1]] != ("skipped", "not_opted_in"))
        _, chosen, seed = eligible[0]  # the lowest id among those that may be messaged
        expected = (
            ("control", "campaign_control_group") if control_bucket(seed, a, b) < 30 else ("queued", None)
        )
        assert first[chosen] == expected, number
        assert all(first[i] == ("skipped", "duplicate_phone") for _, i, _ in eligible[1:]), number
    per_phone = Counter(
        number
        for number, people in by_phone.items()
        for _, identity, _ in people
        if first[identity][0] in ("queued", "control")
    )
    assert set(per_phone.values()) == {1} and len(per_phone) == 120
    # Planned anew, the same rows (the same people in the control group, the same chosen identities).
    with db.session() as session:
        session.execute(delete(Message).where(Message.campaign_id == campaign_id))
    _replan(db, campaign_id, Profile.id.is_not(None), T0)
    assert _rows(db, campaign_id) == first


@pytest.mark.usefixtures("threshold")
def test_a_number_planned_by_an_earlier_statement_is_not_planned_again(
    db: Database, account: NewAccount
) -> None:
    insert_profiles(db, account.account_id, [{"identity": "first", "phone": phone(1)}])
    campaign_id = _campaign(db, account)
    insert_profiles(db, account.account_id, [{"identity": "second", "phone": phone(1)}])
    written = _replan(db, campaign_id, Profile.identity == "second", T0)
    assert written == 1
    assert _rows(db, campaign_id) == {"first": ("queued", None), "second": ("skipped", "duplicate_phone")}
    # A number whose earlier row was settled without a message (here: the first identity opted out) may
    # be planned for another identity that is opted in.
    insert_profiles(db, account.account_id, [{"identity": "third", "phone": phone(1)}])
    with db.session() as session:
        session.execute(update(Message).where(Message.campaign_id == campaign_id).values(state="skipped"))
    _replan(db, campaign_id, Profile.identity == "third", T0)
    assert _rows(db, campaign_id)["third"] == ("queued", None)


@pytest.mark.usefixtures("threshold")
def test_on_date_one_message_per_number_and_date(db: Database, account: NewAccount) -> None:
    flight = "2026-11-27T10:00:00Z"
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "web", "phone": phone(1), "properties": {"Flight": flight}},
            {"identity": "app", "phone": phone(1), "properties": {"Flight": flight}},
            {"identity": "other", "phone": phone(2), "properties": {"Flight": flight}},
        ],
    )
    campaign_id = _campaign(
        db, account, kind="on_date", trigger={"property": "Flight", "offset_minutes": -1440}
    )
    with db.session() as session:
        run_live(session, datetime(2026, 11, 26, 10, 1, tzinfo=UTC))
    assert _rows(db, campaign_id) == {
        f"web/{flight}": ("queued", None),
        f"app/{flight}": ("skipped", "duplicate_phone"),
        f"other/{flight}": ("queued", None),
    }


def _event(identity: str, at: datetime) -> dict[str, Any]:
    return {
        "identity": identity,
        "type": "event",
        "evtName": "Signed Up",
        "ts": int(at.timestamp()),
        "evtData": {},
    }


def _upload(db: Database, account: NewAccount, records: list[dict[str, Any]], now: datetime) -> None:
    with db.session() as session:
        result = ingest(session, account.account_id, records, now=now)
        on_events(session, account.account_id, [e.id for e in result.events], now)


@pytest.mark.usefixtures("threshold")
def test_single_action_sent_once_per_person(db: Database, account: NewAccount) -> None:
    """A campaign sent once per user is sent once per number: the same person's second identity does not
    get it again, whether its event comes in the same upload or a later one."""
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "web", "phone": phone(1)},
            {"identity": "app", "phone": phone(1)},
            {"identity": "kiosk", "phone": phone(1)},
            {"identity": "other", "phone": phone(2)},
        ],
    )
    campaign_id = _campaign(
        db, account, kind="single_action", trigger={"event": "Signed Up"}, frequency={"rule": "once"}
    )
    _upload(db, account, [_event("web", T0), _event("app", T0), _event("other", T0)], T0)
    _upload(db, account, [_event("kiosk", T0)], T0 + timedelta(minutes=1))
    states = Counter((identity.split("/")[0], row) for identity, row in _rows(db, campaign_id).items())
    assert states == Counter(
        {
            ("web", ("queued", None)): 1,
            ("app", ("skipped", "campaign_frequency_cap")): 1,
            ("kiosk", ("skipped", "campaign_frequency_cap")): 1,
            ("other", ("queued", None)): 1,
        }
    )


def test_global_frequency_cap_counts_what_the_number_got(db: Database, account: NewAccount) -> None:
    insert_profiles(
        db,
        account.account_id,
        [{"identity": "web", "phone": phone(1)}, {"identity": "app", "phone": phone(1)}],
    )
    with db.session() as session:
        session.execute(
            update(Account)
            .where(Account.id == account.account_id)
            .values(settings={"frequency_cap": {"max": 1, "hours": 24}})
        )
    first = _campaign(db, account)
    assert _rows(db, first) == {"web": ("queued", None), "app": ("skipped", "duplicate_phone")}
    second = _campaign(db, account, start=False, send_at=T0 + timedelta(hours=1))
    _replan(db, second, Profile.identity == "app", T0 + timedelta(hours=1))
    assert _rows(db, second) == {"app": ("skipped", "global_frequency_cap")}


def test_stop_settles_the_unsent_messages_of_every_profile_of_the_number(
    db: Database, account: NewAccount
) -> None:
    insert_profiles(
        db,
        account.account_id,
        [{"identity": "web", "phone": phone(1)}, {"identity": "app", "phone": phone(1)}],
    )
    first = _campaign(db, account)  # web queued, app duplicate
    second = _campaign(db, account, start=False)
    _replan(db, second, Profile.identity == "app", T0)  # app queued in another campaign
    assert _rows(db, second) == {"app": ("queued", None)}
    with db.session() as session:
        record_inbound(
            session,
            account.account_id,
            "sandbox",
            InboundReply(
                provider_message_id="in-1", from_phone=phone(1)[1:], timestamp=T0, text="Stop please"
            ),
        )
    assert _rows(db, first)["web"] == ("skipped", "not_opted_in")
    assert _rows(db, second) == {"app": ("skipped", "not_opted_in")}


def test_one_message_per_number_through_the_sandbox(
    live: tuple[str, FastAPI], db: Database, account: NewAccount
) -> None:
    """End to end on the real server: two identities with one phone get one message; the stats add up."""
    url, app = live
    auth = basic(account)
    people = [
        ("ana-app", "+919810000001", True),
        ("ana-crm", "+919810000001", True),
        ("bo", "+919810000002", True),
        ("cy-old", "+919810000003", False),
        ("cy", "+919810000003", True),
    ]
    records = [
        {"identity": i, "type": "profile", "profileData": {"Name": i, "Phone": p, "MSG-whatsapp": opt_in}}
        for i, p, opt_in in people
    ]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert (
            http.post("/1/upload", json={"d": records}, headers=clevertap(account)).json()["processed"] == 5
        )
        template = http.post(
            "/api/v1/templates",
            headers=auth,
            json={"name": "shop:hello", "category": "UTILITY", "body": "Hi {{1}}"},
        ).json()
        created = http.post(
            "/api/v1/campaigns",
            headers=auth,
            json={"name": "hello", "template_id": template["id"], "variables": ["{{ Profile.Name }}"]},
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = http.get(f"/api/v1/campaigns/{campaign_id}", headers=auth).json()["state"]
            if state == "completed" and app.state.worker.sandbox_pending == 0:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the campaign did not finish")
        stats = http.get(f"/api/v1/campaigns/{campaign_id}/stats", headers=auth).json()
    assert stats["audience"] == 5
    assert stats["sent"] + stats["errors"] + stats["control_group"] == 5
    assert stats["errors_by_reason"]["duplicate_phone"] == 1
    assert stats["errors_by_reason"]["not_opted_in"] == 1
    with db.session() as session:
        called = session.scalars(
            select(Message.to_phone).where(
                Message.campaign_id == campaign_id, Message.dispatched_at.is_not(None)
            )
        ).all()
    assert Counter(called) == {"+919810000001": 1, "+919810000002": 1, "+919810000003": 1}
    sandbox = app.state.worker.pool.providers()[0]
    assert sandbox.log["submitted"] == 3
