"""A campaign's sending progress, from its ledger rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidings.delivery.models import OPEN_STATES, SENT_STATES, Message
from tidings.delivery.reconciliation import waiting_for_proof


def campaign_progress(
    session: Session,
    campaign_id: int,
    now: datetime,
    window: float = 30.0,
    *,
    reconcile_window: timedelta = timedelta(seconds=300),
) -> dict[str, Any]:
    """Planned, sent, remaining, the current sending rate and the estimated time left; and how many
    dispatched rows wait for proof before they may be sent again (``delivery.reconciliation``;
    ``reconcile_window`` is ``TIDINGS_RECONCILE_SECONDS``)."""
    counts = dict(
        session.execute(
            select(Message.state, func.count())
            .where(Message.campaign_id == campaign_id)
            .group_by(Message.state)
        ).all()
    )
    recent = int(
        session.scalar(
            select(func.count()).where(
                Message.campaign_id == campaign_id,
                Message.state.in_((*SENT_STATES, "failed")),
                Message.dispatched_at >= now - timedelta(seconds=window),
            )
        )
        or 0
    )
    sent = sum(counts.get(s, 0) for s in SENT_STATES)
    remaining = counts.get("queued", 0) + counts.get("sending", 0)
    rate = recent / window
    return {
        "planned": sum(counts.values()) - counts.get("control", 0),
        "sent": sent,
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "control": counts.get("control", 0),
        "remaining": remaining,
        "rate": round(rate, 2),
        "eta_seconds": round(remaining / rate, 1) if rate > 0 else None,
        "waiting_for_proof": waiting_for_proof(session, now, reconcile_window, campaign_id=campaign_id),
    }


def open_work(session: Session, campaign_id: int) -> int:
    """Rows of this campaign still waiting to be sent or being sent."""
    return int(
        session.scalar(
            select(func.count()).where(Message.campaign_id == campaign_id, Message.state.in_(OPEN_STATES))
        )
        or 0
    )
