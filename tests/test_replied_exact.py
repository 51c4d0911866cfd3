"""Replied, exactly: the users who replied to a campaign, each once however often they wrote and however
many of its messages they answered, in total and per variant (the stats, the funnel, the timeline); a
reply is attributed by the message it quotes, else to the latest campaign message within the account's
attribution window (``reply_attribution_hours``, 1-720, default 24), never to an agent's message. On
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from tests.helpers import phone, refused, running_campaign
from tests.test_campaign_results import _multivariate
from tests.test_system_events import _send
from tidings.accounts.service import NewAccount, update_account
from tidings.conversations.attribution import find_answered, mark_replied
from tidings.db import Database
from tidings.delivery import system_events
from tidings.delivery.models import Message
from tidings.profiles.models import Event, Profile
from tidings.stats.service import campaign_stats, campaign_timeline

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)
PEOPLE: list[dict[str, Any]] = [
    {"identity": "asha", "phone": "+919800000001", "properties": {"Name": "Asha", "Language": "en"}},
    {"identity": "bela", "phone": "+919800000002", "properties": {"Name": "Bela", "Language": "en"}},
    {"identity": "chen", "phone": "+919800000003", "properties": {"Name": "Chen", "Language": "en"}},
    {"identity": "ashok", "phone": "+919800000004", "properties": {"Name": "Ashok", "Language": "hi"}},
    {"identity": "dev", "phone": "+919800000005", "properties": {"Name": "Dev", "Language": "hi"}},
]


def _message(db: Database, campaign_id: int | None, identity: str) -> Message:
    with db.session() as session:
        found = session.scalars(
            select(Message)
            .join(Profile, Profile.id == Message.profile_id)
            .where(Message.campaign_id == campaign_id, Profile.identity == identity)
            .order_by(Message.id)
        ).first()
        assert found is not None
        session.expunge(found)
        return found


def _reply(
    db: Database, account_id: str, to_phone: str, at: datetime, context: str | None = None
) -> int | None:
    """What an inbound reply does to the ledger: find the message it answers and mark it replied."""
    with db.session() as session:
        answered = find_answered(session, account_id, to_phone, context, at)
        if answered is not None:
            assert mark_replied(session, answered, at)
        return answered


def _sent_at(db: Database, message_id: int, at: datetime) -> None:
    with db.session() as session:
        session.execute(update(Message).where(Message.id == message_id).values(sent_at=at))


def test_a_user_who_writes_three_times_counts_once_per_variant_and_in_total(
    db: Database, account: NewAccount
) -> None:
    account_id = account.account_id
    campaign_id = _multivariate(db, account_id, PEOPLE)
    _send(db)
    with db.session() as session:
        session.execute(update(Message).where(Message.campaign_id == campaign_id).values(sent_at=T0))
    asha, bela, ashok = (_message(db, campaign_id, who) for who in ("asha", "bela", "ashok"))
    minute = timedelta(minutes=1)
    for i in range(3):  # asha (A) writes three times
        assert _reply(db, account_id, PEOPLE[0]["phone"], T0 + (10 + i) * minute) == asha.id
    assert _reply(db, account_id, PEOPLE[1]["phone"], T0 + 20 * minute, f"wamid-{bela.id}") == bela.id
    for i in range(2):  # ashok (B) twice
        assert _reply(db, account_id, PEOPLE[3]["phone"], T0 + (70 + i) * minute) == ashok.id
    # A triggered campaign sends a user several messages (occurrences): asha answers a second one too.
    with db.session() as session:
        again = Message(
            account_id=account_id,
            campaign_id=campaign_id,
            profile_id=asha.profile_id,
            occurrence="2",
            variant_id=asha.variant_id,
            state="sent",
            to_phone=asha.to_phone,
            sent_at=T0 + 2 * 60 * minute,
        )
        session.add(again)
        session.flush()
        again_id = again.id
    assert _reply(db, account_id, PEOPLE[0]["phone"], T0 + 3 * 60 * minute) == again_id

    with db.session() as session:
        stats = campaign_stats(session, campaign_id)
        timeline = campaign_timeline(session, campaign_id, "hour", ZoneInfo("Asia/Kolkata"))
    assert stats["replied"] == 3
    assert {key: figures["replied"] for key, figures in stats["variants"].items()} == {"A": 2, "B": 1}
    assert stats["funnel"][-1] == {
        "step": "replied",
        "count": 3,
        "of_audience": 3 / stats["audience"],
        "of_previous": 3 / stats["read"],
    }
    # The timeline's replies are the users, each at their first reply: they add up to Replied.
    assert [(row["start"].hour, row["replied"]) for row in timeline if row["replied"]] == [(14, 2), (15, 1)]

    # One Notification Replied per message answered, with its variant.
    with db.session() as session:
        replied = session.execute(
            select(Profile.identity, Event.properties)
            .join(Profile, Profile.id == Event.profile_id)
            .where(Event.account_id == account_id, Event.name == system_events.REPLIED)
            .order_by(Event.ts)
        ).all()
    assert [(who, props["Variant"]) for who, props in replied] == [
        ("asha", "A"),
        ("bela", "A"),
        ("ashok", "B"),
        ("asha", "A"),
    ]


def test_the_attribution_window_is_the_accounts_setting_with_its_edges_included(
    db: Database, account: NewAccount
) -> None:
    account_id = account.account_id
    campaign_id = running_campaign(db, account_id, [phone(1), phone(2)])
    _send(db)
    first, second = (_message(db, campaign_id, who) for who in ("u0", "u1"))
    _sent_at(db, first.id, T0)
    _sent_at(db, second.id, T0)
    second_phone = second.to_phone
    assert second_phone is not None
    with db.session() as session:  # the default: 24 hours
        assert find_answered(session, account_id, phone(1), None, T0 + timedelta(hours=24)) == first.id
        assert find_answered(session, account_id, phone(1), None, T0 + timedelta(hours=24, seconds=1)) is None
    with db.session() as session:
        update_account(session, account_id, settings={"reply_attribution_hours": 1})
    with db.session() as session:
        assert find_answered(session, account_id, phone(1), None, T0 + timedelta(hours=1)) == first.id
        assert find_answered(session, account_id, phone(1), None, T0 + timedelta(hours=1, seconds=1)) is None
        # The message it quotes wins over the window.
        late = T0 + timedelta(days=3)
        assert find_answered(session, account_id, phone(1), f"wamid-{first.id}", late) == first.id
    with db.session() as session:
        update_account(session, account_id, settings={"reply_attribution_hours": 720})
    with db.session() as session:
        assert find_answered(session, account_id, second_phone, None, T0 + timedelta(days=30)) == second.id
        assert (
            find_answered(session, account_id, second_phone, None, T0 + timedelta(days=30, seconds=1)) is None
        )


def test_only_campaign_messages_are_attributed(db: Database, account: NewAccount) -> None:
    """An agent's reply (no campaign) sent after the campaign message is passed over; a reply quoting it
    answers no campaign."""
    account_id = account.account_id
    campaign_id = running_campaign(db, account_id, [phone(1)])
    _send(db)
    campaign_message = _message(db, campaign_id, "u0")
    _sent_at(db, campaign_message.id, T0)
    with db.session() as session:
        agent = Message(
            account_id=account_id,
            profile_id=campaign_message.profile_id,
            occurrence="agent-1",
            state="sent",
            text="How can we help?",
            to_phone=campaign_message.to_phone,
            provider_message_id="wamid-agent",
            sent_at=T0 + timedelta(hours=1),
        )
        session.add(agent)
    at = T0 + timedelta(hours=2)
    assert _reply(db, account_id, phone(1), at) == campaign_message.id
    assert _reply(db, account_id, phone(1), at, "wamid-agent") is None
    assert _message(db, None, "u0").replied_at is None


def test_the_window_setting_is_validated(client: TestClient, auth: dict[str, str]) -> None:
    for hours in (1, 720):
        r = client.patch(
            "/api/v1/account", json={"settings": {"reply_attribution_hours": hours}}, headers=auth
        )
        assert r.status_code == 200, r.text
        assert r.json()["settings"] == {"reply_attribution_hours": hours}
    bad: list[Any] = [0, 721, "24", 1.5, None]
    for hours in bad:
        answer = client.patch(
            "/api/v1/account", json={"settings": {"reply_attribution_hours": hours}}, headers=auth
        )
        assert refused(answer, 422, "validation_error").startswith("settings.reply_attribution_hours"), hours
    assert client.get("/api/v1/account", headers=auth).json()["settings"] == {"reply_attribution_hours": 720}
