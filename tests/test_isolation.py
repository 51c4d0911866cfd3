"""One campaign's failure stays its own (issue 9, item 9; item 8's inaction claim): a campaign whose target
cannot be resolved is paused with a note while every other campaign and account goes on, an upload carrying
its trigger event is stored regardless, and a segment an unfinished campaign uses cannot be deleted."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import delete, event, select, text, update

from tests.conftest import basic, clevertap, new_account
from tests.helpers import insert_profiles, phone, refused
from tidings.accounts.service import NewAccount
from tidings.campaigns.lifecycle import resume_campaign
from tidings.campaigns.models import Campaign, CampaignTrigger
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, run_live, scheduler_tick, start_campaign
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.profiles.models import Event, Profile
from tidings.secrets import SecretBox
from tidings.segments.models import Segment
from tidings.segments.service import create_segment
from tidings.templates.service import create_template

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)


def _template(db: Database, account_id: str) -> int:
    from tidings.templates.models import Template

    with db.session() as session:
        found = session.scalar(select(Template.id).where(Template.account_id == account_id))
        if found is not None:
            return int(found)
        return create_template(
            session, account_id, name="shop:promo", body="Hi {{1}}", category="MARKETING"
        ).id


def _segment(db: Database, account_id: str, name: str = "Pune") -> int:
    with db.session() as session:
        definition = {"property": "City", "op": "equals", "value": "Pune"}
        return create_segment(session, account_id, name=name, definition=definition).id


def _campaign(db: Database, account_id: str, name: str, **kwargs: Any) -> int:
    if "template_id" not in kwargs:
        kwargs["template_id"] = _template(db, account_id)
    kwargs.setdefault("variables", ['{{ Profile.Name | default: "there" }}'])
    with db.session() as session:
        return create_campaign(session, account_id, CampaignCreate(name=name, **kwargs)).id


def _people(db: Database, account_id: str, n: int, prefix: str = "u") -> None:
    insert_profiles(
        db,
        account_id,
        [
            {"identity": f"{prefix}{i}", "phone": phone(i), "properties": {"Name": f"N{i}", "City": "Pune"}}
            for i in range(n)
        ],
    )


def _drop_segment(db: Database, segment_id: int) -> None:
    """What the API now refuses, forced at the database level (a segment deleted under its campaign)."""
    with db.session() as session:
        session.execute(delete(Segment).where(Segment.id == segment_id))


def _state(db: Database, campaign_id: int) -> tuple[str, str | None]:
    with db.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        return campaign.state, campaign.note


def _planned(db: Database, campaign_id: int) -> int:
    with db.session() as session:
        return len(session.scalars(select(Message.id).where(Message.campaign_id == campaign_id)).all())


def test_a_campaign_that_cannot_start_is_paused_and_the_tick_goes_on(
    db: Database, account: NewAccount, box: SecretBox
) -> None:
    other = new_account(db, box, "Other")
    _people(db, account.account_id, 3)
    _people(db, other.account_id, 4, prefix="o")
    broken_segment = _segment(db, account.account_id)
    # due first: the tick meets it before the healthy campaign of the other account
    broken = _campaign(
        db,
        account.account_id,
        "broken",
        target={"segment_id": broken_segment},
        send_at=T0 - timedelta(hours=1),
    )
    healthy = _campaign(db, other.account_id, "healthy", send_at=T0 - timedelta(minutes=1))
    _drop_segment(db, broken_segment)

    scheduler_tick(db, GRACE, now=T0)

    state, note = _state(db, broken)
    assert state == "paused"
    assert note is not None and "segment" in note and "resume" in note
    assert _planned(db, broken) == 0
    assert _state(db, healthy)[0] == "running"
    assert _planned(db, healthy) == 4

    # The next tick leaves it paused (nothing to retry) and does not complete it.
    scheduler_tick(db, GRACE, now=T0 + timedelta(seconds=5))
    assert _state(db, broken)[0] == "paused"

    # Fixed and resumed, it is planned at the next tick (it never was), then completes as usual.
    with db.session() as session:
        session.execute(update(Campaign).where(Campaign.id == broken).values(target={"all": True}))
        assert resume_campaign(session, account.account_id, broken)
    scheduler_tick(db, GRACE, now=T0 + timedelta(seconds=10))
    assert _state(db, broken) == ("running", None)
    assert _planned(db, broken) == 3
    with db.session() as session:
        resumed = session.get(Campaign, broken)
        assert resumed is not None and resumed.audience_size == 3 and resumed.started_at is not None


def test_a_live_campaign_that_cannot_be_planned_is_paused_and_the_others_are_planned(
    db: Database, account: NewAccount, box: SecretBox
) -> None:
    other = new_account(db, box, "Other")
    _people(db, account.account_id, 2)
    _people(db, other.account_id, 2, prefix="o")
    trigger = {"event": "Added To Cart", "absent_event": "Charged", "within_minutes": 30}
    broken_segment = _segment(db, account.account_id)
    broken = _campaign(
        db,
        account.account_id,
        "broken",
        kind="inaction",
        trigger=trigger,
        target={"segment_id": broken_segment},
        send_at=T0,
    )
    healthy = _campaign(db, other.account_id, "healthy", kind="inaction", trigger=trigger, send_at=T0)
    for campaign_id in (broken, healthy):
        with db.session() as session:
            start_campaign(session, campaign_id, T0)
    with db.session() as session:
        for account_id, campaign_id in ((account.account_id, broken), (other.account_id, healthy)):
            profiles = session.scalars(select(Profile.id).where(Profile.account_id == account_id)).all()
            session.add_all(
                CampaignTrigger(
                    account_id=account_id,
                    campaign_id=campaign_id,
                    profile_id=profile_id,
                    occurrence=f"x{profile_id}",
                    event_ts=T0,
                    due_at=T0 + timedelta(minutes=30),
                    context={},
                    state="waiting",
                )
                for profile_id in profiles
            )
    _drop_segment(db, broken_segment)

    with db.session() as session:
        run_live(session, T0 + timedelta(minutes=31))

    state, note = _state(db, broken)
    assert state == "paused" and note is not None and "segment" in note
    assert _planned(db, healthy) == 2
    with db.session() as session:  # the broken campaign's candidates were not lost: still waiting
        states = session.scalars(
            select(CampaignTrigger.state).where(CampaignTrigger.campaign_id == broken)
        ).all()
    assert states == ["waiting", "waiting"]


def test_an_upload_carrying_a_broken_campaigns_trigger_is_stored(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    _people(db, account.account_id, 3)
    broken_segment = _segment(db, account.account_id)
    now = utcnow()
    broken = _campaign(
        db,
        account.account_id,
        "broken",
        kind="single_action",
        trigger={"event": "Charged"},
        target={"segment_id": broken_segment},
        send_at=now - timedelta(minutes=1),
    )
    healthy = _campaign(
        db,
        account.account_id,
        "healthy",
        kind="single_action",
        trigger={"event": "Charged"},
        send_at=now - timedelta(minutes=1),
    )
    for campaign_id in (broken, healthy):
        with db.session() as session:
            start_campaign(session, campaign_id, now)
    _drop_segment(db, broken_segment)

    ts = int(time.time())
    records = [
        {"identity": f"u{i}", "type": "event", "evtName": "Charged", "ts": ts, "evtData": {"Amount": i}}
        for i in range(3)
    ] + [{"identity": "new", "type": "profile", "profileData": {"Name": "New"}}]
    answer = client.post("/1/upload", headers=clevertap(account), json={"d": records})

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "success", "processed": 4, "unprocessed": []}
    with db.session() as session:
        assert len(session.scalars(select(Event.id).where(Event.name == "Charged")).all()) == 3
        assert session.scalar(select(Profile.id).where(Profile.identity == "new")) is not None
    state, note = _state(db, broken)
    assert state == "paused" and note is not None and "segment" in note
    assert _planned(db, broken) == 0
    assert _planned(db, healthy) == 3  # the other campaign was planned in the same upload


def test_a_segment_an_unfinished_campaign_uses_cannot_be_deleted(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    segment = _segment(db, account.account_id)
    paused = _campaign(db, account.account_id, "paused one", target={"segment_id": segment}, send_at=T0)
    draft = _campaign(db, account.account_id, "draft one", target={"segment_id": segment}, draft=True)
    with db.session() as session:
        session.execute(update(Campaign).where(Campaign.id == paused).values(state="paused"))

    answer = client.delete(f"/api/v1/segments/{segment}", headers=basic(account))
    message = refused(answer, 409, "segment_in_use")
    assert "'paused one' (paused)" in message and "'draft one' (draft)" in message
    assert {c["id"] for c in answer.json()["details"]["campaigns"]} == {paused, draft}

    with db.session() as session:
        session.execute(update(Campaign).values(state="stopped"))
    assert client.delete(f"/api/v1/segments/{segment}", headers=basic(account)).status_code == 204


def test_due_inaction_candidates_are_claimed_in_one_step(db: Database, account: NewAccount) -> None:
    """A candidate that arrives while due ones are being planned (committed by an upload in between, on
    PostgreSQL) is planned at the next tick — never marked done without being planned."""
    _people(db, account.account_id, 2)
    trigger = {"event": "Added To Cart", "absent_event": "Charged", "within_minutes": 30}
    campaign_id = _campaign(db, account.account_id, "cart", kind="inaction", trigger=trigger, send_at=T0)
    with db.session() as session:
        start_campaign(session, campaign_id, T0)
        first, second = session.scalars(select(Profile.id).order_by(Profile.id)).all()
        session.add(
            CampaignTrigger(
                account_id=account.account_id,
                campaign_id=campaign_id,
                profile_id=first,
                occurrence="a",
                event_ts=T0,
                due_at=T0 + timedelta(minutes=30),
                context={},
                state="waiting",
            )
        )
    late = (
        "INSERT INTO campaign_triggers (account_id, campaign_id, profile_id, occurrence, event_ts, due_at, "
        f"context, state) VALUES ('{account.account_id}', {campaign_id}, {second}, 'b', "
        "'2026-11-25 12:00:00', '2026-11-25 12:30:00', '{}', 'waiting')"
    )
    injected: list[bool] = []

    def between(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if injected or not statement.lstrip().upper().startswith("INSERT INTO MESSAGES"):
            return
        injected.append(True)
        if db.engine.dialect.name == "postgresql":  # another transaction, committed in between
            with db.engine.connect() as other:
                other.execute(text(late))
                other.commit()
        else:  # SQLite has one writer: the same transaction stands in for it
            conn.connection.dbapi_connection.cursor().execute(late)

    event.listen(db.engine, "after_cursor_execute", between)
    try:
        with db.session() as session:
            run_live(session, T0 + timedelta(minutes=31))
    finally:
        event.remove(db.engine, "after_cursor_execute", between)
    assert injected
    with db.session() as session:
        states = dict(
            session.execute(
                select(CampaignTrigger.occurrence, CampaignTrigger.state).where(
                    CampaignTrigger.campaign_id == campaign_id
                )
            ).all()
        )
    assert states == {"a": "done", "b": "waiting"}
    assert _planned(db, campaign_id) == 1
    with db.session() as session:
        run_live(session, T0 + timedelta(minutes=32))
    assert _planned(db, campaign_id) == 2
