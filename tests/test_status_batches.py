"""Status webhooks applied set-based (``apply_statuses``: one lookup, one executemany per status) move the
ledger as a plain model of the forward-only rules, written in this file, says they should, on SQLite and
PostgreSQL: the same rows, the same outcome for every status, the same statuses kept for later. Batches
mix repeats, out-of-order and contradictory statuses, both ways of naming a message, unknown messages,
another account's messages and test sends."""

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
from tidings.delivery.outcomes import Attempt, record_attempts
from tidings.delivery.statuses import apply_statuses
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


# The rules, written here from what the README and docs/architecture.md say rather than from the code: a
# status moves a message only forward, sending → sent → delivered → read; "failed" only from before
# delivered, and nothing moves a failed message. A batch decides as if its statuses came one at a time in
# the order sent, delivered, read, failed (keeping the order they came in within each). A status finds its
# message by our ledger id when it echoes one (digits), else by the provider's message id, and only among
# its own account's messages; test sends are ignored; a status that finds nothing is kept for later.
_RANK = {"queued": 0, "sending": 0, "sent": 1, "delivered": 2, "read": 3}
_TARGET = {Status.SENT: "sent", Status.DELIVERED: "delivered", Status.READ: "read", Status.FAILED: "failed"}
_BATCH_ORDER = [Status.SENT, Status.DELIVERED, Status.READ, Status.FAILED]


def _moves(state: str, status: Status) -> bool:
    if state not in _RANK:  # failed (or never sent at all): nothing moves it
        return False
    if status is Status.FAILED:
        return _RANK[state] < _RANK["delivered"]
    return _RANK[state] < _RANK[_TARGET[status]]


def _model(
    rows: dict[int, dict[str, Any]], items: list[tuple[str, str, StatusUpdate]]
) -> tuple[list[str], dict[int, dict[str, Any]], list[tuple[str, str, str, str, str]]]:
    """(outcome of each status, the rows after the batch, what is kept for later) for the rows before."""
    rows = {i: dict(row) for i, row in rows.items()}
    outcomes = ["ignored"] * len(items)
    pending = []
    for i in sorted(range(len(items)), key=lambda i: _BATCH_ORDER.index(items[i][2].status)):
        account_id, provider, update = items[i]
        ref, pid = update.client_ref or "", update.provider_message_id
        if ref.startswith("test-") or not (ref.isdigit() or pid):
            continue
        mine = [row for row in rows.values() if row["account_id"] == account_id]
        if ref.isdigit():
            row = next((row for row in mine if row["id"] == int(ref)), None)
        else:
            row = next((row for row in mine if row["provider_message_id"] == pid), None)
        if row is None:
            outcomes[i] = "unmatched"
            pending.append((account_id, pid or "", ref, update.status.value, update.timestamp.isoformat()))
            continue
        if not _moves(row["state"], update.status):
            continue
        outcomes[i] = "applied"
        at = update.timestamp
        row["state"] = _TARGET[update.status]
        row["provider_message_id"] = row["provider_message_id"] or pid
        row["sent_at"] = row["sent_at"] or at  # any status says it left
        if update.status in (Status.DELIVERED, Status.READ):
            row["delivered_at"] = row["delivered_at"] or at
        if update.status is Status.READ:
            row["read_at"] = row["read_at"] or at
        if update.status is Status.FAILED:
            row["failed_at"] = at
            row["reason"] = f"{provider}:{update.error_code or 'failed'}"
            row["error_detail"] = update.error_detail or ""
    return outcomes, rows, sorted(pending)


def _snapshot(session: Session) -> tuple[dict[int, dict[str, Any]], list[tuple[str, str, str, str, str]]]:
    columns = (Message.id, Message.account_id, Message.state, Message.provider_message_id)
    columns += (Message.sent_at, Message.delivered_at, Message.read_at, Message.failed_at)
    columns += (Message.reason, Message.error_detail)
    rows = {row.id: dict(row._mapping) for row in session.execute(select(*columns))}
    pending = sorted(
        (
            p.account_id,
            p.provider_message_id or "",
            p.client_ref or "",
            p.status["status"],
            p.status["timestamp"],
        )
        for p in session.scalars(select(PendingStatus))
    )
    return rows, pending


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(_STATUS, min_size=1, max_size=25))
def test_a_batch_follows_the_forward_only_rules(
    db: Database, account: NewAccount, ledger: tuple[list[int], str], raw: list[Any]
) -> None:
    ids, other = ledger
    items = [
        (account.account_id if whose == "own" else other, "meta", _update(ids, which, naming, status, s))
        for which, naming, status, s, whose in raw
    ]
    session = db.sessions()
    try:
        before, nothing_kept = _snapshot(session)
        assert nothing_kept == []
        outcomes = apply_statuses(session, items)
        after, pending = _snapshot(session)
    finally:
        session.rollback()
        session.close()
    assert (outcomes, after, pending) == _model(before, items)


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
