"""Status webhooks applied set-based (``apply_statuses``: one lookup, one executemany per status) give what
applying them one at a time gives, on SQLite and PostgreSQL: the same rows, the same outcome for every
status, the same statuses kept for later. Batches mix repeats, out-of-order and contradictory statuses,
both ways of naming a message, unknown messages, another account's messages and test sends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.conftest import new_account
from tests.test_dispatcher import _campaign, _claim
from tidings.accounts.service import NewAccount
from tidings.db import Database, utcnow
from tidings.delivery.models import Message, PendingStatus
from tidings.delivery.service import Attempt, apply_status, apply_statuses, record_attempts
from tidings.providers.base import SendResult, Status, StatusUpdate
from tidings.secrets import SecretBox

BASE = utcnow().replace(microsecond=0)


@pytest.fixture
def ledger(db: Database, box: SecretBox, account: NewAccount) -> tuple[list[int], str]:
    """Five messages of ``account``: four recorded as sent (provider id ``w.<id>``), one still sending
    (no provider id yet); and another account's id."""
    _campaign(db, account, [f"+9198100000{i:02d}" for i in range(5)])
    claimed = _claim(db, 5)
    with db.session() as session:
        record_attempts(
            session,
            [Attempt(c, "meta", result=SendResult.accepted(f"w.{c.id}")) for c in claimed[:4]],
            utcnow(),
            max_attempts=5,
            retry_base=1,
            retry_cap=1,
        )
    return [c.id for c in claimed], new_account(db, box, "Other").account_id


# (which message: 0-4, or 5 for one that does not exist), how it is named, status, seconds, whose account
_STATUS = st.tuples(
    st.integers(0, 5),
    st.sampled_from(["ref", "pid", "both", "test"]),
    st.sampled_from(list(Status)),
    st.integers(0, 100),
    st.sampled_from(["own", "own", "own", "other"]),
)


def _update(ids: list[int], which: int, naming: str, status: Status, seconds: int) -> StatusUpdate:
    message_id = ids[which] if which < len(ids) else 10**9
    failed = status is Status.FAILED
    return StatusUpdate(
        status,
        BASE + timedelta(seconds=seconds),
        provider_message_id=None if naming == "ref" else f"w.{message_id}",
        client_ref={"ref": str(message_id), "both": str(message_id), "pid": None}.get(naming, "test-1"),
        error_code="131026" if failed else None,
        error_detail="undeliverable" if failed else None,
    )


def _snapshot(session: Session) -> tuple[list[Any], list[Any]]:
    columns = (Message.id, Message.state, Message.provider_message_id, Message.sent_at, Message.delivered_at)
    columns += (Message.read_at, Message.failed_at, Message.reason, Message.error_detail)
    rows = [tuple(r) for r in session.execute(select(*columns).order_by(Message.id))]
    pending = sorted(
        (p.account_id, p.provider_message_id or "", p.client_ref or "", str(p.status))
        for p in session.scalars(select(PendingStatus))
    )
    return rows, pending


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(_STATUS, min_size=1, max_size=25))
def test_a_batch_matches_one_status_at_a_time(
    db: Database, account: NewAccount, ledger: tuple[list[int], str], raw: list[Any]
) -> None:
    ids, other = ledger
    items = [
        (account.account_id if whose == "own" else other, "meta", _update(ids, which, naming, status, s))
        for which, naming, status, s, whose in raw
    ]
    # One at a time, in the order a batch applies them: sent, delivered, read, failed.
    order = sorted(range(len(items)), key=lambda i: list(Status).index(items[i][2].status))
    results = []
    for one_by_one in (False, True):
        session = db.sessions()
        try:
            if one_by_one:
                outcomes = [""] * len(items)
                for i in order:
                    outcomes[i] = apply_status(session, *items[i])
            else:
                outcomes = apply_statuses(session, items)
            results.append((outcomes, *_snapshot(session)))
        finally:
            session.rollback()
            session.close()
    assert results[0] == results[1]
    batch_outcomes, _, pending = results[0]
    assert set(batch_outcomes) <= {"applied", "ignored", "unmatched"}
    assert len(pending) == batch_outcomes.count("unmatched")


def test_a_batch_moves_many_rows_and_keeps_the_unknown(
    db: Database, account: NewAccount, ledger: Any
) -> None:
    ids, _ = ledger
    a = account.account_id
    at = utcnow()
    items = [(a, "meta", StatusUpdate(Status.DELIVERED, at, client_ref=str(i))) for i in ids[:4]]
    items += [(a, "meta", StatusUpdate(Status.READ, at, provider_message_id=f"w.{i}")) for i in ids[:2]]
    items += [(a, "meta", StatusUpdate(Status.READ, at, provider_message_id="w.unknown"))]
    with db.session() as session:
        outcomes = apply_statuses(session, items)
    assert outcomes == ["applied"] * 6 + ["unmatched"]
    with db.session() as session:
        states = dict(session.execute(select(Message.id, Message.state)).all())
        assert [states[i] for i in ids] == ["read", "read", "delivered", "delivered", "sending"]
        assert session.scalars(select(PendingStatus.provider_message_id)).all() == ["w.unknown"]
    with db.session() as session:  # the same batch again (the provider retried it): nothing changes
        assert apply_statuses(session, items[:6]) == ["ignored"] * 6
