"""Reconciliation: recovering the rows a worker lost (it died, or handed over an uncertain answer),
without ever sending one twice blindly. Run by every worker's tick and by the scheduler."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from tidings.db import cast_table
from tidings.delivery.models import Message


def reconcile(
    session: Session,
    now: datetime,
    window: timedelta,
    *,
    unknown_outcome: str = "requeue",
    max_attempts: int = 5,
) -> dict[str, int]:
    """Recover rows a worker lost (it died, or handed over an uncertain answer); safe in any number of
    processes at once (guarded UPDATEs):

    * claimed, lease expired, never dispatched: no provider call happened, so it is queued again at
      once, the attempt not counted;
    * dispatched, no answer recorded, no lease, and no status webhook within ``window`` of the dispatch:
      a status would have moved it (providers echo our ledger id) — if the webhook path works. So with
      ``unknown_outcome="requeue"`` it is queued again (until ``max_attempts``, then failed as
      ``outcome_unknown``) only with that proof: a message of the same sender dispatched after it has
      received a status since (``delivered_at``, which only a webhook sets). Without proof — our webhook
      endpoint may have been unreachable, and the message delivered — it keeps waiting (counted by
      ``waiting_for_proof``), never sent twice blindly. ``"fail"`` fails it as ``outcome_unknown`` at
      once (DESIGN invariant 3: the account prefers a lost message to a possible duplicate)."""
    table = cast_table(Message.__table__)
    never_sent = session.execute(
        update(table)
        .where(table.c.state == "sending", table.c.dispatched_at.is_(None), table.c.lease_until < now)
        .values(
            state="queued",
            attempts=table.c.attempts - 1,
            claimed_by=None,
            lease_until=None,
            next_attempt_at=now,
        )
    )
    stale = _stale(table, now, window)
    unknown = {
        "state": "failed",
        "reason": "outcome_unknown",
        "error_detail": "the provider call's outcome is unknown and no status arrived",
        "failed_at": now,
        "claimed_by": None,
        "lease_until": None,
    }
    failed = 0
    requeued = 0
    if unknown_outcome == "fail":
        failed = int(session.execute(update(table).where(stale).values(**unknown)).rowcount or 0)  # type: ignore[attr-defined]
    else:
        oldest = session.execute(
            select(table.c.account_id, func.min(table.c.dispatched_at))
            .where(stale)
            .group_by(table.c.account_id)
        ).all()
        for account_id, since in oldest:
            # The newest message of this sender, dispatched after its oldest stale one, that a status
            # reached: every stale row dispatched before it has its proof (read from the newest end of
            # the (account, dispatched_at) index, where a working webhook path answers first).
            horizon = session.scalar(
                select(table.c.dispatched_at)
                .where(
                    table.c.account_id == account_id,
                    table.c.dispatched_at > since,
                    table.c.delivered_at.is_not(None),
                )
                .order_by(table.c.dispatched_at.desc())
                .limit(1)
            )
            if horizon is None:
                continue
            proven = and_(stale, table.c.account_id == account_id, table.c.dispatched_at < horizon)
            failed += int(
                session.execute(
                    update(table).where(proven, table.c.attempts >= max_attempts).values(**unknown)
                ).rowcount  # type: ignore[attr-defined]
                or 0
            )
            requeued += int(
                session.execute(
                    update(table)
                    .where(proven)
                    .values(
                        state="queued",
                        dispatched_at=None,
                        claimed_by=None,
                        lease_until=None,
                        next_attempt_at=now,
                        error_detail="no answer and no status webhook, while later messages got theirs: "
                        "sent again",
                    )
                ).rowcount  # type: ignore[attr-defined]
                or 0
            )
    return {
        "requeued_undispatched": int(never_sent.rowcount or 0),  # type: ignore[attr-defined]
        "requeued_unknown": requeued,
        "failed_unknown": failed,
    }


def _stale(table: Any, now: datetime, window: timedelta) -> ColumnElement[bool]:
    """Dispatched, no answer recorded, no live lease, and no status within ``window`` of the dispatch."""
    return and_(
        table.c.state == "sending",
        table.c.dispatched_at < now - window,
        or_(table.c.lease_until.is_(None), table.c.lease_until < now),
    )


def waiting_for_proof(
    session: Session, now: datetime, window: timedelta, *, campaign_id: int | None = None
) -> int:
    """Dispatched rows past the reconcile ``window`` with no status, which ``reconcile`` keeps because
    no later message of their sender got a status yet (after a reconcile, every such row is one)."""
    table = cast_table(Message.__table__)
    where = [_stale(table, now, window)]
    if campaign_id is not None:
        where.append(table.c.campaign_id == campaign_id)
    return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def expire_leases(
    session: Session,
    now: datetime,
    grace: timedelta,
    *,
    unknown_outcome: str = "requeue",
    max_attempts: int = 5,
) -> int:
    """Called by every scheduler tick: ``reconcile`` with a window of ``grace`` and the configured
    ``unknown_outcome`` and ``max_attempts`` (the worker passes its settings; it runs its own
    ``reconcile`` first, so this fallback only catches what a tick elsewhere left)."""
    return sum(
        reconcile(session, now, grace, unknown_outcome=unknown_outcome, max_attempts=max_attempts).values()
    )
