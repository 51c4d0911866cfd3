"""Recording outcomes: what each provider call answered, written to the ledger in one executemany per
kind of outcome (``record_attempts``): sent, queued again after a backoff, failed, skipped, or left
``sending`` when the outcome is unknown (``delivery.reconciliation`` settles those from the status
webhooks). Statuses that arrived before their send was recorded are applied right after it."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, select, update
from sqlalchemy.orm import Session

from tidings.db import cast_table
from tidings.delivery import system_events
from tidings.delivery.claims import Claimed
from tidings.delivery.models import Message, PendingStatus
from tidings.delivery.statuses import apply_statuses, status_from_json
from tidings.personalization.service import PersonalizationError
from tidings.providers.base import Outcome, SendResult

# Retry-later answers given after the request may have reached the provider (a read time-out, a
# connection lost mid-way, a provider that raised): the outcome is unknown, so they are reconciled from
# the status webhooks like a crash, never resent blindly.
UNCERTAIN_CODES = frozenset({"timeout", "network_error", "connection_error", "exception"})


@dataclass(frozen=True)
class Attempt:
    """What happened to one claimed row: a provider answer, or a personalization refusal."""

    claimed: Claimed
    provider: str
    result: SendResult | None = None
    refusal: PersonalizationError | None = None
    params: list[str] | None = None

    @property
    def kind(self) -> str:
        """accepted, retry, failed, uncertain (reconciled later) or skipped (personalization)."""
        if self.refusal is not None or self.result is None:
            return "skipped"
        if self.result.outcome is Outcome.RETRY and self.result.error_code in UNCERTAIN_CODES:
            return "uncertain"
        return self.result.outcome.value


def backoff(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with full jitter over the upper half, capped, and never sooner than the
    provider's ``Retry-After`` (which may exceed the cap: the provider knows best)."""
    delay = min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


def record_attempts(
    session: Session,
    attempts: Sequence[Attempt],
    now: datetime,
    *,
    max_attempts: int,
    retry_base: float,
    retry_cap: float,
) -> None:
    """Write the outcomes of a batch: one executemany per kind of outcome, guarded by ``state = 'sending'``
    (a webhook that got there first keeps its later state). A retry-later answer is queued again after
    its backoff until ``max_attempts``, then failed with the reason; an uncertain one (the request may
    have reached the provider) stays ``sending`` for ``delivery.reconciliation`` to settle."""
    table = cast_table(Message.__table__)
    sent, retry, failed, skipped, uncertain = [], [], [], [], []
    for att in attempts:
        row: dict[str, Any] = {"_id": att.claimed.id, "_provider": att.provider}
        if att.refusal is not None:
            skipped.append({**row, "_reason": att.refusal.reason, "_detail": att.refusal.detail[:500]})
            continue
        result = att.result
        assert result is not None
        if result.outcome is Outcome.ACCEPTED:
            sent.append({**row, "_pid": result.provider_message_id, "_params": att.params})
            continue
        reason = f"{att.provider}:{result.error_code or 'error'}"[:64]
        detail = (result.error_detail or "")[:500]
        if att.kind == "uncertain":
            uncertain.append({**row, "_detail": f"outcome unknown, reconciling: {detail}"[:500]})
        elif result.outcome is Outcome.RETRY and att.claimed.attempts < max_attempts:
            delay = backoff(att.claimed.attempts, result.retry_after, retry_base, retry_cap)
            retry.append({**row, "_next": now + timedelta(seconds=delay), "_detail": detail})
        else:
            if result.outcome is Outcome.RETRY:
                detail = f"gave up after {att.claimed.attempts} attempts: {detail}"[:500]
            failed.append({**row, "_reason": reason, "_detail": detail})
    guard = and_(table.c.id == bindparam("_id"), table.c.state == "sending")
    if sent:
        _record_sent(session, [a for a in attempts if a.kind == "accepted"], now)
        session.execute(
            update(table)
            .where(table.c.id == bindparam("_id"))
            .values(
                state=case((table.c.state == "sending", "sent"), else_=table.c.state),
                provider=bindparam("_provider"),
                provider_message_id=func.coalesce(table.c.provider_message_id, bindparam("_pid")),
                params=bindparam("_params", type_=table.c.params.type),
                sent_at=func.coalesce(table.c.sent_at, now),
                lease_until=None,
                claimed_by=None,
            ),
            sent,
        )
    if retry:
        session.execute(
            update(table)
            .where(guard)
            .values(
                state="queued",
                provider=bindparam("_provider"),
                next_attempt_at=bindparam("_next", type_=table.c.next_attempt_at.type),
                error_detail=bindparam("_detail"),
                lease_until=None,
                claimed_by=None,
                dispatched_at=None,
            ),
            retry,
        )
    if uncertain:
        session.execute(
            update(table)
            .where(guard)
            .values(
                provider=bindparam("_provider"),
                error_detail=bindparam("_detail"),
                lease_until=None,
                claimed_by=None,
            ),
            uncertain,
        )
    if failed:
        session.execute(
            update(table)
            .where(guard)
            .values(
                state="failed",
                provider=bindparam("_provider"),
                reason=bindparam("_reason"),
                error_detail=bindparam("_detail"),
                failed_at=now,
                lease_until=None,
                claimed_by=None,
            ),
            failed,
        )
    if skipped:
        session.execute(
            update(table)
            .where(guard)
            .values(
                state="skipped",
                reason=bindparam("_reason"),
                error_detail=bindparam("_detail"),
                lease_until=None,
                claimed_by=None,
            ),
            skipped,
        )
    if sent:
        _apply_pending(session, [(a.claimed.account_id, a.provider, a.result) for a in attempts if a.result])


def _record_sent(session: Session, attempts: Sequence[Attempt], now: datetime) -> None:
    """``Notification Sent`` for the campaign rows the provider accepted that are still ``sending`` (a
    row a status webhook moved first recorded it then): one ``INSERT … SELECT`` guarded by the state,
    before the UPDATE moves them."""
    moves = [(a.claimed.id, a.claimed.campaign_id, (system_events.SENT,)) for a in attempts]
    system_events.record(session, moves, guard="sending", now=now)


def _apply_pending(session: Session, sent: Iterable[tuple[str, str, SendResult]]) -> None:
    """Statuses that arrived before the send was recorded are applied now."""
    ids = [
        r.provider_message_id for _, _, r in sent if r.outcome is Outcome.ACCEPTED and r.provider_message_id
    ]
    if not ids:
        return
    pending = list(
        session.scalars(
            select(PendingStatus).where(PendingStatus.provider_message_id.in_(ids)).order_by(PendingStatus.id)
        )
    )
    outcomes = apply_statuses(
        session,
        [(item.account_id, item.provider, status_from_json(item.status)) for item in pending],
        keep_unmatched=False,
    )
    for item, outcome in zip(pending, outcomes, strict=True):
        if outcome != "unmatched":
            session.delete(item)
