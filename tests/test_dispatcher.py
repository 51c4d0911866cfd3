"""The ledger's dispatch steps, on SQLite and PostgreSQL: dispatch marks with WhatsApp's pair rate and
messaging-limit tier, claims that only their holder may send, reconciliation of lost claims, uncertain
answers, Retry-After, the error-rate brake, and the progress and resume endpoints."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from tests.cluster import start_standin
from tests.conftest import basic
from tests.helpers import insert_profiles, phone, running_campaign
from tidings.accounts import integrations
from tidings.accounts.service import NewAccount
from tidings.campaigns.lifecycle import pause_campaign, resume_campaign
from tidings.campaigns.models import Campaign
from tidings.campaigns.progress import open_work
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.config import Settings
from tidings.db import Database, utcnow
from tidings.delivery.claims import Claimed, claim_batch, renew_leases
from tidings.delivery.dispatcher import Dispatcher
from tidings.delivery.models import Message
from tidings.delivery.outcomes import Attempt, record_attempts
from tidings.delivery.reconciliation import reconcile
from tidings.delivery.send_rules import Dispatch, mark_dispatched
from tidings.delivery.statuses import apply_status
from tidings.providers.base import SendResult, Status, StatusUpdate
from tidings.providers.pool import ProviderPool
from tidings.secrets import SecretBox

LEASE = timedelta(seconds=60)


def _campaign(db: Database, account: NewAccount, phones: list[str]) -> int:
    """A running one-time campaign whose recipients are queued, one per phone (numbers may repeat)."""
    return running_campaign(db, account.account_id, phones)


def _claim(db: Database, n: int = 100, token: str = "w1-1") -> list[Claimed]:
    with db.session() as session:
        return claim_batch(session, n, LEASE, utcnow(), token=token)


def _mark(
    db: Database,
    account: NewAccount,
    claimed: list[Claimed],
    now: datetime | None = None,
    **kw: object,
) -> Dispatch:
    with db.session() as session:
        return mark_dispatched(
            session,
            account.account_id,
            [(c.id, c.token, c.to) for c in claimed],
            now or utcnow(),
            lease=LEASE,
            **kw,  # type: ignore[arg-type]
        )


def _row(db: Database, message_id: int) -> Message:
    with db.session() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row


def _prove_webhooks(db: Database, account: NewAccount) -> int:
    """A message of the account dispatched now that then got its delivered status: the proof that
    ``reconcile`` needs before it sends again a message that got no status."""
    insert_profiles(db, account.account_id, [{"identity": "proof", "phone": "+14155550100"}])
    with db.session() as session:
        profile_id = session.scalar(text("SELECT id FROM profiles WHERE identity = 'proof'"))
        row = Message(
            account_id=account.account_id,
            profile_id=profile_id,
            state="sending",
            to_phone="+14155550100",
            text="proof",
            attempts=1,
            dispatched_at=utcnow(),
        )
        session.add(row)
        session.flush()
        apply_status(
            session,
            account.account_id,
            "meta",
            StatusUpdate(Status.DELIVERED, utcnow(), provider_message_id="w.proof", client_ref=str(row.id)),
        )
        return row.id


def _record(
    db: Database, attempts: list[Attempt], max_attempts: int = 5, now: datetime | None = None
) -> None:
    with db.session() as session:
        record_attempts(
            session, attempts, now or utcnow(), max_attempts=max_attempts, retry_base=1, retry_cap=60
        )


def test_only_the_claims_holder_can_dispatch_and_only_once(db: Database, account: NewAccount) -> None:
    _campaign(db, account, [phone(i) for i in range(3)])
    claimed = _claim(db)
    stolen = [replace(c, token="someone-else") for c in claimed[:1]]
    assert _mark(db, account, stolen).lost == [claimed[0].id]
    first = _mark(db, account, claimed)
    assert first.go == [c.id for c in claimed]
    assert _mark(db, account, claimed).lost == [c.id for c in claimed]  # a second mark sends nothing
    assert all(_row(db, c.id).dispatched_at is not None for c in claimed)


def test_the_pair_rate_holds_back_a_user_just_messaged(db: Database, account: NewAccount) -> None:
    same = phone(7)
    first = _campaign(db, account, [same, phone(8)])
    with db.session() as session:  # a second campaign reaches the same user (one message per campaign each)
        template_id = session.get(Campaign, first).template_id
        second = create_campaign(
            session,
            account.account_id,
            CampaignCreate(
                name="d",
                template_id=template_id,
                variables=[],
                target={"conditions": [{"property": "Phone", "op": "equals", "value": same}]},
                system_control_group=False,
            ),
        ).id
    with db.session() as session:
        start_campaign(session, second, utcnow())
    claimed = _claim(db)
    assert len(claimed) == 3
    at = utcnow()
    decided = _mark(db, account, claimed, at, pair_interval=6.0)
    assert len(decided.go) == 2 and len(decided.waiting) == 1  # the second message to the same user waits
    [(waiting_id, until)] = decided.waiting.items()
    row = _row(db, waiting_id)
    assert row.state == "queued" and row.attempts == 0  # not an attempt
    assert row.next_attempt_at is not None and row.next_attempt_at == until
    assert until == at + timedelta(seconds=6)  # six seconds after the first message to that user


def test_the_messaging_limit_tier_skips_new_users_beyond_it(db: Database, account: NewAccount) -> None:
    _campaign(db, account, [phone(i) for i in range(5)])
    claimed = _claim(db)
    first = _mark(db, account, claimed[:2], messaging_limit=3)
    assert len(first.go) == 2
    second = _mark(db, account, claimed[2:], messaging_limit=3)
    assert len(second.go) == 1 and len(second.skipped) == 2
    for message_id in second.skipped:
        row = _row(db, message_id)
        assert row.state == "skipped" and row.reason == "messaging_limit"


def test_a_paused_campaign_gets_its_claimed_rows_back_unsent(db: Database, account: NewAccount) -> None:
    campaign_id = _campaign(db, account, [phone(i) for i in range(3)])
    claimed = _claim(db)
    with db.session() as session:
        assert pause_campaign(session, campaign_id, "paused: test")
    decided = _mark(db, account, claimed)
    assert decided.go == [] and sorted(decided.released) == sorted(c.id for c in claimed)
    assert {_row(db, c.id).state for c in claimed} == {"queued"}
    with db.session() as session:
        assert claim_batch(session, 10, LEASE, utcnow()) == []  # paused: not claimed
        assert resume_campaign(session, account.account_id, campaign_id)
        assert not resume_campaign(session, account.account_id, campaign_id)  # not paused now
    assert len(_claim(db, token="w2-1")) == 3


def test_reconcile_requeues_lost_claims_and_waits_for_dispatched_ones(
    db: Database, account: NewAccount
) -> None:
    _campaign(db, account, [phone(i) for i in range(4)])
    claimed = _claim(db)
    never, dispatched, answered, unknown = claimed
    _mark(db, account, [dispatched, answered, unknown])
    with db.session() as session:  # a status webhook arrived for one of them
        assert (
            apply_status(
                session,
                account.account_id,
                "meta",
                StatusUpdate(
                    Status.SENT, utcnow(), provider_message_id="wamid.1", client_ref=str(answered.id)
                ),
            )
            == "applied"
        )
    later = utcnow() + timedelta(seconds=120)  # leases (60 s) are over; the 300 s window is not
    with db.session() as session:
        counts = reconcile(session, later, timedelta(seconds=300))
    assert counts == {"requeued_undispatched": 1, "requeued_unknown": 0, "failed_unknown": 0}
    assert _row(db, never.id).state == "queued" and _row(db, never.id).attempts == 0
    assert _row(db, dispatched.id).state == "sending"  # still waiting for its status
    assert _row(db, answered.id).state == "sent"
    _prove_webhooks(db, account)  # a later message got its status: the webhook path works
    with db.session() as session:  # past the window: no status came, the provider never took it
        counts = reconcile(session, utcnow() + timedelta(seconds=400), timedelta(seconds=300))
    assert counts["requeued_unknown"] == 2
    row = _row(db, unknown.id)
    assert row.state == "queued" and row.dispatched_at is None and row.attempts == 1


def test_reconcile_can_fail_unknown_outcomes_instead(db: Database, account: NewAccount) -> None:
    _campaign(db, account, [phone(1)])
    claimed = _claim(db)
    _mark(db, account, claimed)
    with db.session() as session:
        counts = reconcile(
            session, utcnow() + timedelta(hours=1), timedelta(seconds=300), unknown_outcome="fail"
        )
    assert counts["failed_unknown"] == 1
    row = _row(db, claimed[0].id)
    assert row.state == "failed" and row.reason == "outcome_unknown"


def test_an_uncertain_answer_is_reconciled_never_resent_blindly(db: Database, account: NewAccount) -> None:
    _campaign(db, account, [phone(1), phone(2)])
    claimed = _claim(db)
    _mark(db, account, claimed)
    timeout = SendResult.retry("timeout", "ReadTimeout")
    refused = SendResult.retry("130429", "throughput", retry_after=30)
    at = utcnow()
    _record(
        db, [Attempt(claimed[0], "meta", result=timeout), Attempt(claimed[1], "meta", result=refused)], now=at
    )
    uncertain = _row(db, claimed[0].id)
    assert (
        uncertain.state == "sending" and uncertain.lease_until is None and uncertain.dispatched_at is not None
    )
    retried = _row(db, claimed[1].id)
    assert retried.state == "queued" and retried.dispatched_at is None
    assert retried.next_attempt_at is not None and retried.next_attempt_at >= at + timedelta(seconds=30)
    # A late status for the uncertain one (it did reach the provider) settles it; nothing is resent.
    with db.session() as session:
        apply_status(
            session,
            account.account_id,
            "meta",
            StatusUpdate(
                Status.DELIVERED, utcnow(), provider_message_id="w.9", client_ref=str(claimed[0].id)
            ),
        )
        assert (
            reconcile(session, utcnow() + timedelta(hours=1), timedelta(seconds=1))["requeued_unknown"] == 0
        )
    assert _row(db, claimed[0].id).state == "delivered"


def test_retry_later_gives_up_after_the_limit(db: Database, account: NewAccount) -> None:
    _campaign(db, account, [phone(1)])
    for attempt in range(1, 4):
        with db.session() as session:
            session.execute(update(Message).values(next_attempt_at=utcnow()))
        [claimed] = _claim(db, token=f"w-{attempt}")
        assert claimed.attempts == attempt
        _mark(db, account, [claimed])
        _record(db, [Attempt(claimed, "meta", result=SendResult.retry("http_500", "boom"))], max_attempts=3)
    row = _row(db, claimed.id)
    assert row.state == "failed" and row.reason == "meta:http_500"
    assert row.error_detail is not None and row.error_detail.startswith("gave up after 3 attempts")


def test_a_status_for_a_requeued_row_settles_it(db: Database, account: NewAccount) -> None:
    """The provider did take it after all: the row is sent, and will not be claimed again."""
    _campaign(db, account, [phone(1)])
    [claimed] = _claim(db)
    _mark(db, account, [claimed])
    _prove_webhooks(db, account)
    with db.session() as session:
        reconcile(session, utcnow() + timedelta(hours=1), timedelta(seconds=300))
        assert session.get(Message, claimed.id).state == "queued"  # type: ignore[union-attr]
        apply_status(
            session,
            account.account_id,
            "meta",
            StatusUpdate(Status.SENT, utcnow(), provider_message_id="w.1", client_ref=str(claimed.id)),
        )
    assert _row(db, claimed.id).state == "sent"
    assert _claim(db, token="w-2") == []


def _on_standin(db: Database, box: SecretBox, account: NewAccount, url: str, rate: float | None) -> None:
    with db.session() as session:
        integration = integrations.configure(
            session,
            box,
            account.account_id,
            kind="meta",
            settings={"phone_number_id": "1555000", "waba_id": "42", "base_url": url},
            secrets={"access_token": "t", "app_secret": "s"},
        )
        integration.rate_limit = rate


async def _dispatch_until(dispatcher: Dispatcher, done: object, timeout: float = 60) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not await asyncio.to_thread(done):  # type: ignore[arg-type]
            assert loop.time() < deadline, "the dispatcher did not get there"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
        await dispatcher.pool.aclose()


def test_the_dispatcher_sends_a_campaign_once_each(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, tmp_path: Path
) -> None:
    phones = [phone(i) for i in range(300)]
    campaign_id = _campaign(db, account, phones)
    standin = start_standin(tmp_path / "standin.log")
    try:
        _on_standin(db, box, account, standin.url, rate=None)

        def done() -> bool:
            with db.session() as session:
                return open_work(session, campaign_id) == 0

        dispatcher = Dispatcher(db, settings, ProviderPool(db, settings, box))
        asyncio.run(_dispatch_until(dispatcher, done))
    finally:
        standin.stop()
    lines = (tmp_path / "standin.log").read_text().splitlines()
    assert len(lines) == 300 and len({line.split()[3] for line in lines}) == 300
    with db.session() as session:
        states = set(session.scalars(select(Message.state).where(Message.campaign_id == campaign_id)))
    assert states == {"sent"}


def test_a_campaign_pauses_itself_when_most_sends_fail_and_resumes(
    db: Database, box: SecretBox, account: NewAccount, settings: Settings, tmp_path: Path, client: TestClient
) -> None:
    campaign_id = _campaign(db, account, [phone(i) for i in range(200)])
    standin = start_standin(tmp_path / "standin.log", "--fail", "1.0", "--retry-after", "0")
    settings = settings.model_copy(
        update={"pause_min_attempts": 30, "retry_base": 0.01, "retry_cap": 0.05, "max_attempts": 50}
    )
    try:
        _on_standin(db, box, account, standin.url, rate=None)

        def paused() -> bool:
            with db.session() as session:
                return session.scalar(select(Campaign.state).where(Campaign.id == campaign_id)) == "paused"

        asyncio.run(_dispatch_until(Dispatcher(db, settings, ProviderPool(db, settings, box)), paused))
    finally:
        standin.stop()
    shown = client.get(f"/api/v1/campaigns/{campaign_id}/progress", headers=basic(account))
    assert shown.status_code == 200, shown.text
    progress = shown.json()
    assert progress["state"] == "paused" and "% of the last" in progress["note"]
    assert progress["planned"] == 200 and progress["sent"] == 0 and progress["remaining"] > 0
    resumed = client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=basic(account))
    assert resumed.status_code == 200 and resumed.json()["state"] == "running"
    again = client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=basic(account))
    assert again.status_code == 409 and again.json()["code"] == "not_paused"


def test_progress_and_resume_are_per_account(client: TestClient, db: Database, box: SecretBox) -> None:
    from tests.conftest import new_account

    owner, other = new_account(db, box, "A"), new_account(db, box, "B")
    campaign_id = _campaign(db, owner, [phone(1)])
    assert client.get(f"/api/v1/campaigns/{campaign_id}/progress", headers=basic(other)).status_code == 404
    assert client.post(f"/api/v1/campaigns/{campaign_id}/resume", headers=basic(other)).status_code == 404
    mine = client.get(f"/api/v1/campaigns/{campaign_id}/progress", headers=basic(owner)).json()
    assert mine["planned"] == 1 and mine["remaining"] == 1 and mine["eta_seconds"] is None


def test_metrics_are_served(client: TestClient, db: Database, account: NewAccount) -> None:
    _campaign(db, account, [phone(1), phone(2)])
    client.post("/webhooks/meta/TID-NOPE", content=b"{}")
    body = client.get("/metrics").text
    assert 'tidings_queue_depth{state="queued"} 2.0' in body
    assert "tidings_webhooks_total" in body and "tidings_sends_total" in body


@pytest.mark.parametrize("raw, expected", [(None, None), ("unlimited", None), (250, 250), ("2000", 2000)])
def test_the_messaging_limit_setting(raw: object, expected: int | None) -> None:
    from tidings.accounts.models import Integration
    from tidings.delivery.dispatcher import sender_of

    integration = Integration(
        account_id="A", kind="meta", settings={"phone_number_id": "1", "messaging_limit": raw}, rate_limit=80
    )
    sender = sender_of(integration)
    assert sender.messaging_limit == expected and sender.key == "meta:1" and sender.rate == 80


def test_lease_renewal_moves_its_own_claims_and_never_waits_for_a_busy_row(
    db: Database, account: NewAccount
) -> None:
    _campaign(db, account, [phone(i) for i in range(3)])
    mine, theirs = _claim(db, 2, token="w-a"), _claim(db, 1, token="w-b")
    assert (len(mine), len(theirs)) == (2, 1)  # a claim takes no more rows than asked for
    before = _row(db, theirs[0].id).lease_until
    at = utcnow()
    with db.session() as session:
        assert renew_leases(session, ["w-a"], at, timedelta(minutes=10)) == 2
    assert all(_row(db, c.id).lease_until == at + timedelta(minutes=10) for c in mine)
    assert _row(db, theirs[0].id).lease_until == before
    if db.engine.dialect.name != "postgresql":
        return  # SQLite has one writer at a time: no other transaction can hold a row
    # Another transaction of the same worker is writing one of the rows (recording its result): the
    # renewal skips it rather than wait (waiting, in another order than that writer, deadlocked).
    writer = db.sessions()
    try:
        writer.execute(update(Message).where(Message.id == mine[0].id).values(error_detail="recording"))
        with db.session() as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert renew_leases(session, ["w-a"], utcnow(), LEASE) == 1
    finally:
        writer.rollback()
        writer.close()
