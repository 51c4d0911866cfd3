"""The six campaign stats, read from the ledger in one grouped query."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tidings.delivery.models import Message


def campaign_stats(session: Session, campaign_id: int) -> dict[str, Any]:
    """Sent (accepted by the provider), Errors (skipped or failed, by reason), Delivered, Read,
    Control group, Replied — plus the audience and what is still pending.
    Every ledger row is in exactly one of sent / errors / control_group / pending."""
    by_state: dict[str, int] = {}
    errors_by_reason: dict[str, int] = {}
    replied = 0
    rows = session.execute(
        select(Message.state, Message.reason, func.count(), func.count(Message.replied_at))
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.state, Message.reason)
    )
    for state, reason, count, replies in rows:
        by_state[state] = by_state.get(state, 0) + count
        replied += replies
        if state in ("skipped", "failed"):
            key = reason or state
            errors_by_reason[key] = errors_by_reason.get(key, 0) + count
    get = by_state.get
    return {
        "sent": get("sent", 0) + get("delivered", 0) + get("read", 0),
        "errors": get("skipped", 0) + get("failed", 0),
        "delivered": get("delivered", 0) + get("read", 0),
        "read": get("read", 0),
        "control_group": get("control", 0),
        "replied": replied,
        "audience": sum(by_state.values()),
        "pending": get("queued", 0) + get("sending", 0),
        "errors_by_reason": dict(sorted(errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
    }
