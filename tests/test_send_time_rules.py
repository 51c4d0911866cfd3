"""Consent, DND hours and frequency caps hold at the moment of sending (the dispatch mark), not only when
a campaign is planned; an opt-out settles the user's unsent messages at once. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests.cluster import read_log, start_standin
from tests.conftest import clevertap
from tests.helpers import insert_profiles, phone
from tests.test_dispatcher import _on_standin
from tidings.accounts.models import Account
from tidings.accounts.service import NewAccount
from tidings.campaigns.progress import open_work
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.config import Settings
from tidings.conversations.service import record_inbound
from tidings.db import Database, utcnow
from tidings.delivery.claims import Claimed, claim_batch
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.models import SENT_STATES, Message
from tidings.delivery.send_rules import Dispatch, mark_dispatched
from tidings.profiles.models import Profile
from tidings.profiles.service import ingest, update_profile
from tidings.providers.base import InboundReply
from tidings.providers.pool import ProviderPool
from tidings.secrets import SecretBox
from tidings.templates.models import Template
from tidings.templates.service import create_template

LEASE = timedelta(seconds=60)


def _account(db: Database, account: NewAccount, *, timezone: str = "UTC", **settings: Any) -> None:
    with db.session() as session:
        row = session.get(Account, account.account_id)
        assert row is not None
        row.timezone = timezone
        row.settings = settings


def _campaign(db: Database, account: NewAccount, now: datetime, name: str = "c", **kw: Any) -> int:
    """A running one-time campaign planned at ``now`` over every profile of the account."""
    with db.session() as session:
        template = session.scalar(select(Template.id).where(Template.name == "a:b"))
        if template is None:
            template = create_template(
                session, account.account_id, name="a:b", body="Hi", category="UTILITY"
            ).id
        campaign_id = create_campaign(
            session,
            account.account_id,
            CampaignCreate(
                name=name,
                template_id=template,
                variables=[],
                target={"all": True},
                system_control_group=False,
                send_at=now,
                **kw,
            ),
        ).id
    with db.session() as session:
        assert start_campaign(session, campaign_id, now) is not None
    return campaign_id


def _users(db: Database, account: NewAccount, n: int, **props: Any) -> list[str]:
    phones = [phone(i) for i in range(n)]
    insert_profiles(
        db,
        account.account_id,
        [{"identity": f"u{i}", "phone": p, "properties": dict(props)} for i, p in enumerate(phones)],
    )
    return phones


def _rows(db: Database, campaign_id: int | None = None) -> list[Message]:
    with db.session() as session:
        query = select(Message).order_by(Message.id)
        if campaign_id is not None:
            query = query.where(Message.campaign_id == campaign_id)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def _claim(db: Database, now: datetime, token: str = "w1-1") -> list[Claimed]:
    with db.session() as session:
        return claim_batch(session, 100, LEASE, now, token=token)


def _mark(db: Database, account: NewAccount, claimed: list[Claimed], now: datetime) -> Dispatch:
    with db.session() as session:
        return mark_dispatched(
            session, account.account_id, [(c.id, c.token, c.to) for c in claimed], now, lease=LEASE
        )


# --- consent ------------------------------------------------------------------------------------------


def _unsent_kinds(db: Database, account: NewAccount) -> tuple[int, list[Claimed]]:
    """Four users with a row each, in every unsent shape: due, waiting for the pair rate (later), in
    retry backoff (later, attempted once), and claimed by a worker but not dispatched."""
    _users(db, account, 4)
    campaign_id = _campaign(db, account, utcnow())
    rows = _rows(db, campaign_id)
    with db.session() as session:
        later = utcnow() + timedelta(minutes=5)
        session.execute(update(Message).where(Message.id == rows[1].id).values(next_attempt_at=later))
        session.execute(
            update(Message).where(Message.id == rows[2].id).values(next_attempt_at=later, attempts=1)
        )
        session.execute(
            update(Message).where(Message.id.in_([rows[0].id, rows[3].id])).values(next_attempt_at=utcnow())
        )
    with db.session() as session:
        claimed = claim_batch(session, 1, LEASE, utcnow(), token="w9-1")  # rows[0]: claimed, in hand
    assert [c.id for c in claimed] == [rows[0].id]
    return campaign_id, claimed


def _assert_settled(db: Database, account: NewAccount, campaign_id: int, claimed: list[Claimed]) -> None:
    rows = _rows(db, campaign_id)
    assert [(r.state, r.reason) for r in rows] == [("skipped", "not_opted_in")] * 4
    assert all(r.claimed_by is None and r.dispatched_at is None for r in rows)
    # The worker holding the claimed row loses it at its mark: nothing is marked, nothing sent.
    decided = _mark(db, account, claimed, utcnow())
    assert decided.go == []
    assert _rows(db, campaign_id)[0].state == "skipped"
    # Nothing of the campaign is left to claim (a STOP by message queued its confirmation, which is not).
    left = _claim(db, utcnow() + timedelta(hours=1), token="w9-2")
    assert [c.campaign_id for c in left if c.campaign_id is not None] == []


def test_an_opt_out_by_upload_settles_every_unsent_row(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    campaign_id, claimed = _unsent_kinds(db, account)
    records = [
        {"type": "profile", "identity": f"u{i}", "profileData": {"MSG-whatsapp": False}} for i in range(4)
    ]
    r = client.post("/1/upload", json={"d": records}, headers=clevertap(account))
    assert r.status_code == 200 and r.json()["processed"] == 4, r.text
    _assert_settled(db, account, campaign_id, claimed)


def test_an_opt_out_through_the_profile_service_settles_every_unsent_row(
    db: Database, account: NewAccount
) -> None:
    campaign_id, claimed = _unsent_kinds(db, account)
    with db.session() as session:
        for i in range(4):
            update_profile(session, account.account_id, f"u{i}", {"MSG-whatsapp": "false"})
    _assert_settled(db, account, campaign_id, claimed)


def test_stop_settles_every_unsent_row(db: Database, account: NewAccount) -> None:
    campaign_id, claimed = _unsent_kinds(db, account)
    with db.session() as session:
        for i in range(4):
            reply = InboundReply(
                provider_message_id=f"in.{i}", from_phone=phone(i), timestamp=utcnow(), text="STOP"
            )
            assert record_inbound(session, account.account_id, "meta", reply)
    _assert_settled(db, account, campaign_id, claimed)


def test_an_upload_that_keeps_consent_settles_nothing(
    db: Database, account: NewAccount, client: TestClient
) -> None:
    campaign_id, _ = _unsent_kinds(db, account)
    records = [{"type": "profile", "identity": "u1", "profileData": {"MSG-whatsapp": True, "Name": "A"}}]
    assert client.post("/1/upload", json={"d": records}, headers=clevertap(account)).status_code == 200
    assert [r.state for r in _rows(db, campaign_id)] == ["sending", "queued", "queued", "queued"]


def test_the_mark_checks_consent_itself(db: Database, account: NewAccount) -> None:
    """An opt-out written by a path that settles nothing (here straight into the table) still wins at the
    mark: the row is skipped as not_opted_in, never dispatched."""
    _users(db, account, 2)
    campaign_id = _campaign(db, account, utcnow())
    claimed = _claim(db, utcnow())
    with db.session() as session:
        session.execute(update(Profile).where(Profile.identity == "u0").values(whatsapp_opt_in=False))
    decided = _mark(db, account, claimed, utcnow())
    rows = {r.profile_id: r for r in _rows(db, campaign_id)}
    with db.session() as session:
        u0 = session.scalar(select(Profile.id).where(Profile.identity == "u0"))
    assert decided.refused == {rows[u0].id: "not_opted_in"}
    assert len(decided.go) == 1 and rows[u0].id not in decided.go
    assert (rows[u0].state, rows[u0].reason, rows[u0].dispatched_at) == ("skipped", "not_opted_in", None)


def test_free_text_needs_consent_too(db: Database, account: NewAccount) -> None:
    """A business-initiated message outside any campaign follows the same rule."""
    _users(db, account, 1)
    with db.session() as session:
        profile_id = session.scalar(select(Profile.id).where(Profile.identity == "u0"))
        session.execute(update(Profile).where(Profile.id == profile_id).values(whatsapp_opt_in=False))
        session.add(
            Message(
                account_id=account.account_id,
                profile_id=profile_id,
                state="queued",
                to_phone=phone(0),
                text="hello",
                attempts=0,
                next_attempt_at=utcnow(),
            )
        )
    claimed = _claim(db, utcnow())
    decided = _mark(db, account, claimed, utcnow())
    assert decided.go == [] and list(decided.refused.values()) == ["not_opted_in"]


# --- DND ----------------------------------------------------------------------------------------------

# 2030-01-15 in Asia/Kolkata (UTC+5:30): 21:30 local is 16:00 UTC; 22:05 is 16:35 UTC; 08:00 next day is
# 02:30 UTC on the 16th.
PLANNED = datetime(2030, 1, 15, 16, 0, tzinfo=UTC)
SENDING = datetime(2030, 1, 15, 16, 35, tzinfo=UTC)
DND_END = datetime(2030, 1, 16, 2, 30, tzinfo=UTC)
DND = {"start": "22:00", "end": "08:00"}


@pytest.mark.parametrize("where", ["account", "user"])
def test_a_row_planned_before_dnd_waits_for_its_end_when_sent_inside(
    db: Database, account: NewAccount, where: str
) -> None:
    if where == "account":
        _account(db, account, timezone="Asia/Kolkata", dnd={**DND, "timezone": "account", "action": "delay"})
        _users(db, account, 2)
    else:  # the account is in UTC (no DND at 16:35 there); the users are in Kolkata
        _account(db, account, timezone="UTC", dnd={**DND, "timezone": "user", "action": "delay"})
        _users(db, account, 2, Tz="Asia/Kolkata")
    campaign_id = _campaign(db, account, PLANNED)
    assert {(r.state, r.next_attempt_at) for r in _rows(db, campaign_id)} == {("queued", PLANNED)}
    claimed = _claim(db, SENDING)
    decided = _mark(db, account, claimed, SENDING)
    assert decided.go == [] and decided.delayed == {c.id: DND_END for c in claimed}
    for row in _rows(db, campaign_id):
        assert (row.state, row.next_attempt_at, row.attempts, row.dispatched_at) == (
            "queued",
            DND_END,
            0,
            None,
        )
    assert _claim(db, DND_END - timedelta(minutes=1), token="w1-2") == []  # not before DND ends
    again = _claim(db, DND_END, token="w1-3")
    assert len(_mark(db, account, again, DND_END).go) == 2  # 08:00 local: sent


def test_dnd_in_the_users_zone_lets_other_zones_through(db: Database, account: NewAccount) -> None:
    _account(db, account, timezone="UTC", dnd={**DND, "timezone": "user", "action": "delay"})
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "kolkata", "phone": phone(1), "properties": {"Tz": "Asia/Kolkata"}},
            {"identity": "london", "phone": phone(2), "properties": {"Tz": "Europe/London"}},
        ],
    )
    _campaign(db, account, PLANNED)
    claimed = _claim(db, SENDING)
    decided = _mark(db, account, claimed, SENDING)
    by_phone = {c.to: c.id for c in claimed}
    assert decided.go == [by_phone[phone(2)]] and decided.delayed == {by_phone[phone(1)]: DND_END}


def test_dnd_drop_skips_at_the_mark(db: Database, account: NewAccount) -> None:
    _account(db, account, timezone="Asia/Kolkata", dnd={**DND, "timezone": "account", "action": "drop"})
    _users(db, account, 2)
    campaign_id = _campaign(db, account, PLANNED)
    decided = _mark(db, account, _claim(db, SENDING), SENDING)
    assert decided.go == [] and set(decided.refused.values()) == {"dnd"}
    assert {(r.state, r.reason) for r in _rows(db, campaign_id)} == {("skipped", "dnd")}


def test_a_retry_inside_dnd_waits_too(db: Database, account: NewAccount) -> None:
    """A row requeued by a retry-later answer comes back through the mark, which applies DND to it."""
    _account(db, account, timezone="Asia/Kolkata", dnd={**DND, "timezone": "account", "action": "delay"})
    _users(db, account, 1)
    campaign_id = _campaign(db, account, PLANNED)
    with db.session() as session:  # it was tried at 21:30 and answered "later": backoff until 22:05
        session.execute(
            update(Message)
            .where(Message.campaign_id == campaign_id)
            .values(attempts=1, next_attempt_at=SENDING)
        )
    decided = _mark(db, account, _claim(db, SENDING), SENDING)
    assert decided.go == [] and list(decided.delayed.values()) == [DND_END]
    [row] = _rows(db, campaign_id)
    assert (row.state, row.attempts, row.next_attempt_at) == ("queued", 1, DND_END)


def test_a_campaign_that_ignores_the_rules_sends_inside_dnd(db: Database, account: NewAccount) -> None:
    _account(db, account, timezone="Asia/Kolkata", dnd={**DND, "timezone": "account", "action": "drop"})
    _users(db, account, 1)
    _campaign(db, account, PLANNED, respect_rules=False)
    assert len(_mark(db, account, _claim(db, SENDING), SENDING).go) == 1


# --- frequency caps -----------------------------------------------------------------------------------


def test_the_global_cap_holds_for_campaigns_planned_before_either_sent(
    db: Database, account: NewAccount
) -> None:
    _users(db, account, 3)
    now = utcnow()
    first = _campaign(db, account, now, name="first")
    second = _campaign(db, account, now, name="second")
    # The cap is set after both were planned (planning could not see it): the mark enforces it.
    _account(db, account, frequency_cap={"max": 1, "hours": 24})
    claimed = _claim(db, now)
    assert len(claimed) == 6
    one = [c for c in claimed if c.campaign_id == first]
    two = [c for c in claimed if c.campaign_id == second]
    assert len(_mark(db, account, one, now).go) == 3
    decided = _mark(db, account, two, now)
    assert decided.go == [] and set(decided.refused.values()) == {"global_frequency_cap"}
    assert {(r.state, r.reason) for r in _rows(db, second)} == {("skipped", "global_frequency_cap")}


def test_the_global_cap_within_one_chunk(db: Database, account: NewAccount) -> None:
    _users(db, account, 2)
    now = utcnow()
    _campaign(db, account, now, name="first")
    _campaign(db, account, now, name="second")
    _account(db, account, frequency_cap={"max": 1, "hours": 24})
    decided = _mark(db, account, _claim(db, now), now)
    assert len(decided.go) == 2 and list(decided.refused.values()) == ["global_frequency_cap"] * 2


def test_the_cap_counts_only_what_was_sent_in_its_window(db: Database, account: NewAccount) -> None:
    _users(db, account, 1)
    now = utcnow()
    first = _campaign(db, account, now - timedelta(hours=30), name="old")
    second = _campaign(db, account, now, name="new")
    _account(db, account, frequency_cap={"max": 1, "hours": 24})
    claimed = _claim(db, now)
    old = [c for c in claimed if c.campaign_id == first]
    assert len(_mark(db, account, old, now - timedelta(hours=30)).go) == 1  # sent 30 h ago
    new = [c for c in claimed if c.campaign_id == second]
    assert len(_mark(db, account, new, now).go) == 1


def test_the_campaigns_own_rule_holds_at_the_mark(db: Database, account: NewAccount) -> None:
    """A campaign that sends once per user: two occurrences queued before either left send one."""
    _users(db, account, 1)
    now = utcnow()
    campaign_id = _campaign(db, account, now, frequency={"rule": "once"})
    [row] = _rows(db, campaign_id)
    with db.session() as session:  # a second occurrence for the same user, queued meanwhile
        session.add(
            Message(
                account_id=account.account_id,
                campaign_id=campaign_id,
                profile_id=row.profile_id,
                occurrence="2",
                state="queued",
                to_phone=row.to_phone,
                attempts=0,
                next_attempt_at=now,
            )
        )
    claimed = _claim(db, now)
    assert len(_mark(db, account, claimed[:1], now).go) == 1
    decided = _mark(db, account, claimed[1:], now)
    assert decided.go == [] and list(decided.refused.values()) == ["campaign_frequency_cap"]


# --- the chaos way: opt-outs while a real dispatcher sends ----------------------------------------------


def test_users_opted_out_while_a_worker_sends_get_nothing_afterwards(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, tmp_path: Path
) -> None:
    """A real dispatcher sends a 300-user campaign at 100/s to a stand-in provider on loopback while the
    test opts 200 users out — 100 by an upload, then 100 by STOP — mid-way. None of them gets a message
    whose dispatch mark came after their opt-out committed (the last look between the mark and the
    provider call is the dispatcher's own business), every message of theirs not sent is skipped
    ``not_opted_in``, and everyone else gets exactly one."""
    n = 300
    phones = _users(db, account, n)
    campaign_id = _campaign(db, account, utcnow())
    by_upload = [i for i in range(n) if i % 3 == 0]
    by_stop = [i for i in range(n) if i % 3 == 1]
    standin = start_standin(tmp_path / "standin.log")
    committed: dict[str, datetime] = {}  # phone → when its opt-out had committed

    def dispatched() -> int:
        with db.session() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        Message.campaign_id == campaign_id, Message.dispatched_at.is_not(None)
                    )
                )
                or 0
            )

    def upload_opt_out() -> None:
        records = [
            {"type": "profile", "identity": f"u{i}", "profileData": {"MSG-whatsapp": False}}
            for i in by_upload
        ]
        with db.session() as session:
            assert not ingest(session, account.account_id, records).unprocessed
        at = utcnow()
        committed.update((phones[i], at) for i in by_upload)

    def stop_opt_out() -> None:  # a batch of inbound webhooks, applied in one transaction
        with db.session() as session:
            for i in by_stop:
                reply = InboundReply(f"in.{i}", phones[i], utcnow(), text="stop please")
                record_inbound(session, account.account_id, "meta", reply)
        at = utcnow()
        committed.update((phones[i], at) for i in by_stop)

    def done() -> bool:
        with db.session() as session:
            return open_work(session, campaign_id) == 0

    async def run() -> None:
        dispatcher = Dispatcher(db, settings, ProviderPool(db, settings, box))
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        try:
            for threshold, opt_out in ((40, upload_opt_out), (120, stop_opt_out)):
                while await asyncio.to_thread(dispatched) < threshold:
                    assert loop.time() < deadline, "the dispatcher did not get there"
                    await asyncio.sleep(0.01)
                await asyncio.to_thread(opt_out)
            while not await asyncio.to_thread(done):
                assert loop.time() < deadline, "the campaign did not finish"
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await task
            await dispatcher.pool.aclose()

    try:
        _on_standin(db, box, account, standin.url, rate=100)
        asyncio.run(run())
    finally:
        standin.stop()
    rows = {r.to_phone: r for r in _rows(db, campaign_id)}
    # The campaign's sends (a STOP's confirmation is a message of its conversation, not of the campaign).
    ours = {str(r.id) for r in rows.values()}
    received = Counter(f"+{r.to.lstrip('+')}" for r in read_log(tmp_path / "standin.log") if r.ref in ours)
    settled = 0
    for i, to in enumerate(phones):
        row = rows[to]
        if to not in committed:
            assert received[to] == 1 and row.state == "sent", (i, row.state, received[to])
            continue
        if row.dispatched_at is not None:  # decided before the opt-out: sent once
            assert row.dispatched_at < committed[to], (i, row.dispatched_at, committed[to])
            # (sent, or read: a STOP answers the message it follows)
            assert received[to] == 1 and row.state in SENT_STATES, (i, row.state, row.reason)
        else:
            assert received[to] == 0 and (row.state, row.reason) == ("skipped", "not_opted_in"), i
            settled += 1
    assert settled >= 50  # many opted-out users had a message still to come, in hand or queued
