"""CleverTap's system events kept on the profile: ``Notification Sent`` / ``Delivered`` / ``Viewed`` /
``Replied`` of a campaign message, each once however the statuses come (repeated, reordered, before
the send is recorded), none for an agent's message; segments and conversion goals use them; and
``Channel Subscribed`` / ``Channel Unsubscribed`` for every consent change, by each path. On SQLite and
PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.conftest import basic, clevertap
from tests.helpers import insert_profiles, phone, running_campaign
from tidings.accounts.service import NewAccount
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.conversations.attribution import mark_replied
from tidings.db import Database, utcnow
from tidings.delivery import system_events
from tidings.delivery.claims import claim_batch
from tidings.delivery.models import Message
from tidings.delivery.outcomes import Attempt, record_attempts
from tidings.delivery.statuses import apply_statuses
from tidings.profiles import service as profiles
from tidings.profiles.models import Event, Profile
from tidings.providers.base import SendResult, Status, StatusUpdate
from tidings.segments import service as segments
from tidings.stats.service import campaign_stats
from tidings.templates.service import create_template

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
NOTIFICATIONS = system_events.NAMES


def _send(db: Database, ids: list[int] | None = None) -> dict[int, str]:
    """Claim the queued rows (only ``ids`` when given) and record them accepted, as the dispatcher
    does: {ledger id: provider message id}."""
    with db.session() as session:
        claimed = claim_batch(session, 1000, timedelta(minutes=10), utcnow())
        chosen = [c for c in claimed if ids is None or c.id in ids]
        record_attempts(
            session,
            [Attempt(c, "sandbox", result=SendResult.accepted(f"wamid-{c.id}")) for c in chosen],
            utcnow(),
            max_attempts=5,
            retry_base=1,
            retry_cap=1,
        )
    return {c.id: f"wamid-{c.id}" for c in chosen}


def _status(message_id: int, status: Status, minutes: int) -> StatusUpdate:
    return StatusUpdate(
        status=status, timestamp=T0 + timedelta(minutes=minutes), provider_message_id=f"wamid-{message_id}"
    )


def _apply(db: Database, account_id: str, *statuses: StatusUpdate) -> list[str]:
    with db.session() as session:
        return apply_statuses(session, [(account_id, "sandbox", s) for s in statuses])


def _events(db: Database, account_id: str, names: tuple[str, ...] = NOTIFICATIONS) -> list[Event]:
    with db.session() as session:
        return list(
            session.scalars(
                select(Event)
                .where(Event.account_id == account_id, Event.name.in_(names))
                .order_by(Event.profile_id, Event.ts, Event.id)
            )
        )


def _by_profile(db: Database, account_id: str) -> dict[int, Counter[str]]:
    found: dict[int, Counter[str]] = {}
    for event in _events(db, account_id):
        found.setdefault(event.profile_id, Counter())[event.name] += 1
    return found


def _profile_of(db: Database, message_id: int) -> int:
    with db.session() as session:
        return int(session.scalar(select(Message.profile_id).where(Message.id == message_id)) or 0)


def test_each_system_event_once_whatever_the_order_of_the_statuses(db: Database, account: NewAccount) -> None:
    account_id = account.account_id
    campaign_id = running_campaign(db, account_id, [phone(i) for i in range(4)])
    sent = _send(db)
    m0, m1, m2, m3 = sorted(sent)
    read, delivered, repeated, failed = (_profile_of(db, m) for m in (m0, m1, m2, m3))
    # The dispatcher's outcome records Sent for each.
    assert _by_profile(db, account_id) == {
        p: Counter({system_events.SENT: 1}) for p in (read, delivered, repeated, failed)
    }

    # m0: read before delivered (and the late delivered, and a repeat of sent, change nothing);
    # m1: delivered twice in one batch; m2: delivered then read then all of them again; m3 fails.
    first = [
        _status(m0, Status.READ, 5),
        _status(m1, Status.DELIVERED, 2),
        _status(m1, Status.DELIVERED, 3),
        _status(m3, Status.FAILED, 1),
    ]
    assert _apply(db, account_id, *first) == ["applied", "applied", "ignored", "applied"]
    assert _apply(db, account_id, _status(m0, Status.DELIVERED, 6), _status(m0, Status.SENT, 1)) == [
        "ignored",
        "ignored",
    ]
    assert _apply(db, account_id, _status(m2, Status.READ, 4), _status(m2, Status.DELIVERED, 3)) == [
        "applied",
        "applied",
    ]
    again = [_status(m, s, 9) for m in (m0, m1, m2, m3) for s in (Status.SENT, Status.DELIVERED, Status.READ)]
    _apply(db, account_id, *again[:6])
    _apply(db, account_id, *again[6:])
    with db.session() as session:  # the late read of m1 moved it on once: Viewed once
        assert session.scalar(select(Message.state).where(Message.id == m1)) == "read"

    counts = _by_profile(db, account_id)
    all_three = Counter({system_events.SENT: 1, system_events.DELIVERED: 1, system_events.VIEWED: 1})
    assert counts == {
        read: all_three,
        delivered: all_three,
        repeated: all_three,
        failed: Counter({system_events.SENT: 1}),
    }
    # A read without a delivery receipt records Delivered and Viewed, both at the read's time; each
    # with the campaign's id, name and type, and the channel.
    with db.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        name, kind = campaign.name, campaign.kind
    events = {e.name: e for e in _events(db, account_id) if e.profile_id == read}
    assert events[system_events.DELIVERED].ts == events[system_events.VIEWED].ts == T0 + timedelta(minutes=5)
    assert events[system_events.VIEWED].properties == {
        "Campaign id": campaign_id,
        "Campaign name": name,
        "Campaign type": kind,
        "Channel": "WhatsApp",
    }  # one template, no variants: no Variant (see test_replied_exact for a campaign with variants)
    m2_events = {e.name: e.ts for e in _events(db, account_id) if e.profile_id == repeated}
    assert m2_events[system_events.DELIVERED] == T0 + timedelta(minutes=3)
    assert m2_events[system_events.VIEWED] == T0 + timedelta(minutes=4)


def test_a_status_before_the_send_is_recorded_records_sent_once(db: Database, account: NewAccount) -> None:
    """The provider's status may come while the row is still ``sending`` (found by our echoed id): the
    webhook records Sent (and Delivered); the dispatcher's outcome after it records nothing more. A
    status for a message not known yet waits, and records its events once the send is recorded."""
    account_id = account.account_id
    running_campaign(db, account_id, [phone(1), phone(2)])
    with db.session() as session:
        claimed = claim_batch(session, 1000, timedelta(minutes=10), utcnow())
    early, pending = sorted(c.id for c in claimed)
    echoed = StatusUpdate(status=Status.DELIVERED, timestamp=T0, client_ref=str(early))
    unknown = StatusUpdate(status=Status.READ, timestamp=T0, provider_message_id=f"wamid-{pending}")
    assert _apply(db, account_id, echoed, unknown) == ["applied", "unmatched"]
    with db.session() as session:
        record_attempts(
            session,
            [Attempt(c, "sandbox", result=SendResult.accepted(f"wamid-{c.id}")) for c in claimed],
            utcnow(),
            max_attempts=5,
            retry_base=1,
            retry_cap=1,
        )
    counts = _by_profile(db, account_id)
    assert counts[_profile_of(db, early)] == Counter({system_events.SENT: 1, system_events.DELIVERED: 1})
    assert counts[_profile_of(db, pending)] == Counter(
        {system_events.SENT: 1, system_events.DELIVERED: 1, system_events.VIEWED: 1}
    )


def test_replied_once_per_message_and_none_for_an_agent_message(db: Database, account: NewAccount) -> None:
    account_id = account.account_id
    running_campaign(db, account_id, [phone(1)])
    (message_id,) = _send(db)
    profile_id = _profile_of(db, message_id)
    _apply(db, account_id, _status(message_id, Status.DELIVERED, 1))
    with db.session() as session:
        agent = Message(
            account_id=account_id, profile_id=profile_id, occurrence="agent-1", state="sent", text="Hi!"
        )
        session.add(agent)
        session.flush()
        agent_id = agent.id
    with db.session() as session:
        assert mark_replied(session, message_id, T0 + timedelta(minutes=30))
        assert mark_replied(session, message_id, T0 + timedelta(minutes=40))  # still replied: no event
        assert mark_replied(session, agent_id, T0 + timedelta(minutes=50))  # no campaign: no event
    with db.session() as session:
        assert mark_replied(session, message_id, T0 + timedelta(minutes=60))
    assert _by_profile(db, account_id)[profile_id] == Counter(
        dict.fromkeys(NOTIFICATIONS, 1)  # Viewed implied by the reply, at its time
    )
    replied = [e for e in _events(db, account_id) if e.name in (system_events.VIEWED, system_events.REPLIED)]
    assert {e.ts for e in replied} == {T0 + timedelta(minutes=30)}


def test_segments_and_conversion_goals_use_the_system_events(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    """ "Did not Notification Viewed where Campaign id = X" as a target: those who were sent campaign X
    and did not read it, and those never sent it; ``Notification Replied`` as a conversion goal."""
    account_id = account.account_id
    campaign_id = running_campaign(db, account_id, [phone(i) for i in range(3)])
    with db.session() as session:  # another campaign to the same three
        template = create_template(session, account_id, name="c:d", body="Hey", category="UTILITY")
        spec = CampaignCreate(
            name="other",
            template_id=template.id,
            variables=[],
            target={"all": True},
            system_control_group=False,
        )
        other = create_campaign(session, account_id, spec).id
    with db.session() as session:
        start_campaign(session, other, utcnow())
    sent = _send(db)
    mine = sorted(m for m in sent if _campaign_of(db, m) == campaign_id)
    theirs = sorted(m for m in sent if _campaign_of(db, m) == other)
    # Campaign X: the first read, the second delivered, the third sent; the other campaign: all read.
    _apply(
        db,
        account_id,
        _status(mine[0], Status.READ, 2),
        _status(mine[1], Status.DELIVERED, 2),
        *(_status(m, Status.READ, 2) for m in theirs),
    )
    insert_profiles(db, account_id, [{"identity": "never", "phone": phone(50)}])
    not_viewed = {
        "did_not": {
            "event": system_events.VIEWED,
            "where": [{"property": "Campaign id", "op": "equals", "value": campaign_id}],
        }
    }
    r = client.post("/api/v1/segments/estimate", json={"definition": not_viewed}, headers=basic(account))
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 3
    with db.session() as session:
        condition = segments.profile_condition(not_viewed, account_id=account_id, now=T0)
        selected = set(session.scalars(select(Profile.identity).where(condition)))
    assert selected == {"u1", "u2", "never"}

    with db.session() as session:
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(conversion_event=system_events.REPLIED, conversion_window_hours=24)
        )
        session.execute(update(Message).where(Message.campaign_id == campaign_id).values(sent_at=T0))
        mark_replied(session, mine[1], T0 + timedelta(hours=1))
    with db.session() as session:
        conversion = campaign_stats(session, campaign_id)["conversion"]
    assert (conversion["messaged"], conversion["messaged_converted"]) == (3, 1)


def _campaign_of(db: Database, message_id: int) -> int | None:
    with db.session() as session:
        return session.scalar(select(Message.campaign_id).where(Message.id == message_id))


def _consent_events(db: Database, account_id: str, identity: str) -> list[tuple[str, dict[str, Any]]]:
    names = (profiles.SUBSCRIBED, profiles.UNSUBSCRIBED)
    with db.session() as session:
        profile_id = session.scalar(
            select(Profile.id).where(Profile.account_id == account_id, Profile.identity == identity)
        )
        return [
            (e.name, e.properties)
            for e in session.scalars(
                select(Event).where(Event.profile_id == profile_id, Event.name.in_(names)).order_by(Event.id)
            )
        ]


def test_every_consent_change_is_an_event_with_its_source(
    client: TestClient, db: Database, account: NewAccount
) -> None:
    account_id = account.account_id
    records = [
        {"type": "profile", "identity": f"p{i}", "profileData": {"Phone": phone(i), "MSG-whatsapp": True}}
        for i in range(3)
    ]
    r = client.post("/1/upload", json={"d": records}, headers=clevertap(account))
    assert r.status_code == 200, r.text
    again = client.post("/1/upload", json={"d": records[:1]}, headers=clevertap(account))  # no change
    assert again.status_code == 200, again.text
    r = client.put("/api/v1/profiles/p0/consent", json={"whatsapp": False}, headers=basic(account))
    assert r.status_code == 200, r.text
    with db.session() as session:
        profiles.change_consent(session, account_id, "p1", False, profiles.ConsentSource.dashboard, "a@b.c")
        profiles.set_whatsapp_opt_in_by_phone(
            session, account_id, phone(2), False, profiles.ConsentSource.keyword, phone(2)
        )
        profiles.set_whatsapp_opt_in_by_phone(  # already opted out: no change, no event
            session, account_id, phone(2), False, profiles.ConsentSource.keyword, phone(2)
        )
    subscribed = {"Channel": "WhatsApp", "MSG-whatsapp": True, "Source": "upload", "Actor": "passcode"}
    p0 = _consent_events(db, account_id, "p0")
    assert [name for name, _ in p0] == [profiles.SUBSCRIBED, profiles.UNSUBSCRIBED]
    assert p0[0][1] == subscribed
    assert p0[1][1]["Source"] == "api" and p0[1][1]["MSG-whatsapp"] is False
    unsubscribed = {"Channel": "WhatsApp", "MSG-whatsapp": False}
    assert _consent_events(db, account_id, "p1") == [
        (profiles.SUBSCRIBED, subscribed),
        (profiles.UNSUBSCRIBED, {**unsubscribed, "Source": "dashboard", "Actor": "a@b.c"}),
    ]
    assert _consent_events(db, account_id, "p2") == [
        (profiles.SUBSCRIBED, subscribed),
        (profiles.UNSUBSCRIBED, {**unsubscribed, "Source": "keyword", "Actor": phone(2)}),
    ]
    # Each change's event is at the time of the change kept in the consent history.
    with db.session() as session:
        profile = profiles.get_profile(session, account_id, "p2")
        changes, _ = profiles.consent_history(session, account_id, "p2")
        times = {c.changed_at for c in changes}
        events = session.scalars(
            select(Event.ts).where(
                Event.profile_id == profile.id, Event.name.in_((profiles.SUBSCRIBED, profiles.UNSUBSCRIBED))
            )
        )
        assert set(events) == times


def test_the_dashboards_pickers_offer_the_system_events(db: Database, account: NewAccount) -> None:
    from tidings.web.pages.segments import suggestions

    with db.read() as session:
        offered = suggestions(session, account.account_id)
    assert {*system_events.NAMES, profiles.SUBSCRIBED, profiles.UNSUBSCRIBED} <= set(offered["events"])
    lists = dict(offered["per_event"])
    assert "Campaign id" in lists[offered["event_lists"]["Notification Viewed"]]
