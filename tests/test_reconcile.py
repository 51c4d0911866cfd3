"""Resend only with proof: a dispatched message with no status after the reconcile window is sent again
only when the webhook path demonstrably works (a later message of the same sender got its status);
otherwise it waits, and progress and /metrics say so. The scheduler tick's fallback uses the configured
settings. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from tests.conftest import new_account
from tests.helpers import insert_profiles, phone
from tidings.accounts.service import NewAccount
from tidings.campaigns.progress import campaign_progress
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, scheduler_tick, start_campaign
from tidings.config import Settings
from tidings.conversations.attribution import mark_replied
from tidings.db import Database, utcnow
from tidings.delivery.claims import claim_batch
from tidings.delivery.models import Message
from tidings.delivery.reconciliation import expire_leases, reconcile, waiting_for_proof
from tidings.delivery.send_rules import mark_dispatched
from tidings.delivery.statuses import apply_status
from tidings.providers.base import Status, StatusUpdate
from tidings.secrets import SecretBox
from tidings.templates.service import create_template
from tidings.worker import Worker

LEASE = timedelta(seconds=60)
WINDOW = timedelta(seconds=300)


def _dispatched(
    db: Database, account: NewAccount, n: int, at: datetime, first: int = 0
) -> tuple[int, list[int]]:
    """A running campaign of ``n`` users whose rows were claimed and marked dispatched at ``at``, one
    after the other (a microsecond apart), and never answered (the worker died)."""
    insert_profiles(
        db,
        account.account_id,
        [{"identity": f"{account.account_id}-{i}", "phone": phone(first + i)} for i in range(n)],
    )
    with db.session() as session:
        template = create_template(session, account.account_id, name="a:b", body="Hi", category="UTILITY")
        campaign_id = create_campaign(
            session,
            account.account_id,
            CampaignCreate(
                name="c",
                template_id=template.id,
                variables=[],
                target={"all": True},
                system_control_group=False,
                send_at=at,
            ),
        ).id
    with db.session() as session:
        start_campaign(session, campaign_id, at)
    with db.session() as session:
        claimed = claim_batch(session, n, LEASE, at, token=f"w-{account.account_id}")
    ids = []
    for i, c in enumerate(claimed):
        with db.session() as session:
            moment = at + timedelta(microseconds=i)
            ids += mark_dispatched(
                session, account.account_id, [(c.id, c.token, c.to)], moment, lease=LEASE
            ).go
    assert len(ids) == n
    return campaign_id, ids


def _status(db: Database, account: NewAccount, message_id: int, status: Status) -> None:
    with db.session() as session:
        update_ = StatusUpdate(
            status, utcnow(), provider_message_id=f"w.{message_id}", client_ref=str(message_id)
        )
        assert apply_status(session, account.account_id, "meta", update_) == "applied"


def _state(db: Database, message_id: int) -> tuple[str, str | None]:
    with db.session() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row.state, row.reason


def _reconcile(db: Database, now: datetime, **kw: object) -> dict[str, int]:
    with db.session() as session:
        return reconcile(session, now, WINDOW, **kw)  # type: ignore[arg-type]


def test_no_status_and_no_proof_keeps_waiting(db: Database, account: NewAccount) -> None:
    at = utcnow()
    campaign_id, [lost, later] = _dispatched(db, account, 2, at)
    _status(db, account, later, Status.SENT)  # a later message was accepted, but no delivery came
    past = at + timedelta(hours=1)
    assert _reconcile(db, past) == {"requeued_undispatched": 0, "requeued_unknown": 0, "failed_unknown": 0}
    assert _state(db, lost) == ("sending", None)  # not sent again: the webhook path is not shown to work
    with db.session() as session:
        assert waiting_for_proof(session, past, WINDOW) == 1
        progress = campaign_progress(session, campaign_id, past, reconcile_window=WINDOW)
    assert progress["waiting_for_proof"] == 1 and progress["remaining"] == 1


def test_a_later_status_of_the_same_sender_is_the_proof(db: Database, account: NewAccount) -> None:
    at = utcnow()
    _, [lost, later] = _dispatched(db, account, 2, at)
    _status(db, account, later, Status.DELIVERED)  # the webhook path works: the lost one was never taken
    past = at + timedelta(hours=1)
    assert _reconcile(db, past)["requeued_unknown"] == 1
    assert _state(db, lost) == ("queued", None)
    with db.session() as session:
        assert waiting_for_proof(session, past, WINDOW) == 0


def test_a_status_of_an_earlier_message_or_another_sender_is_no_proof(
    db: Database, account: NewAccount, box: SecretBox
) -> None:
    at = utcnow()
    _, [earlier, lost] = _dispatched(db, account, 2, at)
    other = new_account(db, box, "Other")
    _, [theirs] = _dispatched(db, other, 1, at + timedelta(seconds=1), first=10)
    _status(db, account, earlier, Status.DELIVERED)  # dispatched before the lost one: proves nothing
    _status(db, other, theirs, Status.READ)  # another sender's webhooks work: proves nothing for ours
    assert _reconcile(db, at + timedelta(hours=1))["requeued_unknown"] == 0
    assert _state(db, lost) == ("sending", None)


def test_a_reply_is_proof_too(db: Database, account: NewAccount) -> None:
    at = utcnow()
    _, [lost, later] = _dispatched(db, account, 2, at)
    assert _state(db, lost) == ("sending", None)
    with db.session() as session:
        assert mark_replied(session, later, utcnow())
    assert _reconcile(db, at + timedelta(hours=1))["requeued_unknown"] == 1
    assert _state(db, lost) == ("queued", None)


def test_with_proof_max_attempts_still_ends_in_outcome_unknown(db: Database, account: NewAccount) -> None:
    at = utcnow()
    _, [lost, later] = _dispatched(db, account, 2, at)
    _status(db, account, later, Status.DELIVERED)
    assert _reconcile(db, at + timedelta(hours=1), max_attempts=1)["failed_unknown"] == 1
    assert _state(db, lost) == ("failed", "outcome_unknown")


def test_fail_mode_needs_no_proof(db: Database, account: NewAccount) -> None:
    """TIDINGS_UNKNOWN_OUTCOME=fail: the account prefers a lost message to a possible duplicate."""
    at = utcnow()
    _, [lost] = _dispatched(db, account, 1, at)
    assert _reconcile(db, at + timedelta(hours=1), unknown_outcome="fail")["failed_unknown"] == 1
    assert _state(db, lost) == ("failed", "outcome_unknown")


def test_expire_leases_uses_the_settings_it_is_given(db: Database, account: NewAccount) -> None:
    at = utcnow()
    _, [a, b, later] = _dispatched(db, account, 3, at)
    _status(db, account, later, Status.DELIVERED)
    with db.session() as session:
        session.execute(update(Message).where(Message.id == a).values(attempts=3))
    with db.session() as session:
        assert expire_leases(session, at + timedelta(hours=1), WINDOW, max_attempts=3) == 2
    assert _state(db, a) == ("failed", "outcome_unknown")  # the default (5) would have requeued it
    assert _state(db, b) == ("queued", None)


def test_the_scheduler_tick_passes_the_configured_outcome(db: Database, account: NewAccount) -> None:
    at = utcnow() - timedelta(hours=1)
    _, [lost] = _dispatched(db, account, 1, at)
    scheduler_tick(db, WINDOW, now=utcnow(), unknown_outcome="fail", max_attempts=5)
    assert _state(db, lost) == ("failed", "outcome_unknown")


def test_the_worker_reconciles_with_its_settings_and_reports_the_waiting(
    db: Database, account: NewAccount, settings: Settings, box: SecretBox
) -> None:
    at = utcnow() - timedelta(hours=1)
    _, [lost] = _dispatched(db, account, 1, at)
    worker = Worker(db, settings.model_copy(update={"reconcile_seconds": 300}), box)
    worker.tick()
    assert _state(db, lost) == ("sending", None)  # no proof: kept
    assert REGISTRY.get_sample_value("tidings_reconcile_waiting_for_proof") == 1
    strict = Worker(
        db, settings.model_copy(update={"reconcile_seconds": 300, "unknown_outcome": "fail"}), box
    )
    strict.tick()
    assert _state(db, lost) == ("failed", "outcome_unknown")
    worker.tick()
    assert REGISTRY.get_sample_value("tidings_reconcile_waiting_for_proof") == 0


def test_progress_shows_the_rows_waiting_for_proof(
    db: Database, account: NewAccount, client: TestClient, auth: dict[str, str]
) -> None:
    at = utcnow() - timedelta(hours=1)
    campaign_id, _ = _dispatched(db, account, 2, at)
    r = client.get(f"/api/v1/campaigns/{campaign_id}/progress", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["waiting_for_proof"] == 2 and r.json()["remaining"] == 2
    with db.session() as session:
        assert session.scalar(select(Message.state).where(Message.campaign_id == campaign_id)) == "sending"
