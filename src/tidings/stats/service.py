"""The six campaign stats, read from the ledger in grouped queries: in total, per variant, and the
conversion of the messaged users against the control group."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, exists, func, select, text
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.db import is_postgres
from tidings.delivery.models import SENT_STATES, Message
from tidings.profiles.models import Event


def _counts(rows: list[tuple[str, str | None, int, int]]) -> dict[str, Any]:
    """Sent, Errors, Delivered, Read, Control group, Replied from (state, reason, count, replies) rows.
    Every ledger row is in exactly one of sent / errors / control_group / pending."""
    by_state: dict[str, int] = {}
    errors_by_reason: dict[str, int] = {}
    replied = 0
    for state, reason, count, replies in rows:
        by_state[state] = by_state.get(state, 0) + count
        replied += replies
        if state in ("skipped", "failed"):
            key = reason or state
            errors_by_reason[key] = errors_by_reason.get(key, 0) + count
    get = by_state.get
    return {
        "sent": sum(get(s, 0) for s in SENT_STATES),
        "errors": get("skipped", 0) + get("failed", 0),
        "delivered": get("delivered", 0) + get("read", 0),
        "read": get("read", 0),
        "control_group": get("control", 0),
        "replied": replied,
        "audience": sum(by_state.values()),
        "pending": get("queued", 0) + get("sending", 0),
        "errors_by_reason": dict(sorted(errors_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _plus_hours(session: Session, column: Any, hours: int) -> ColumnElement[Any]:
    if is_postgres(session):
        return column + text(f"interval '{int(hours)} hours'")
    return func.datetime(column, f"+{int(hours)} hours")


def _conversion(session: Session, campaign: Campaign) -> dict[str, Any] | None:
    if not campaign.conversion_event or not campaign.conversion_window_hours:
        return None
    hours = campaign.conversion_window_hours

    def group(states: tuple[str, ...], since: Any) -> tuple[int, int]:
        converted = exists().where(
            Event.profile_id == Message.profile_id,
            Event.name == campaign.conversion_event,
            Event.ts >= since,
            Event.ts <= _plus_hours(session, since, hours),
        )
        row = session.execute(
            select(func.count(), func.count(case((converted, 1)))).where(
                Message.campaign_id == campaign.id, Message.state.in_(states)
            )
        ).one()
        return int(row[0]), int(row[1])

    messaged, messaged_converted = group(SENT_STATES, Message.sent_at)
    control, control_converted = group(("control",), Message.created_at)
    messaged_rate = messaged_converted / messaged if messaged else None
    control_rate = control_converted / control if control else None
    lift = (
        (messaged_rate - control_rate) / control_rate if messaged_rate is not None and control_rate else None
    )
    return {
        "event": campaign.conversion_event,
        "within_hours": hours,
        "messaged": messaged,
        "messaged_converted": messaged_converted,
        "messaged_rate": messaged_rate,
        "control": control,
        "control_converted": control_converted,
        "control_rate": control_rate,
        "lift": lift,
    }


def campaign_stats(session: Session, campaign_id: int) -> dict[str, Any]:
    rows = session.execute(
        select(
            Message.variant_id, Message.state, Message.reason, func.count(), func.count(Message.replied_at)
        )
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.variant_id, Message.state, Message.reason)
    ).all()
    result = _counts([(state, reason, count, replies) for _v, state, reason, count, replies in rows])
    keys = dict(
        session.execute(
            select(CampaignVariant.id, CampaignVariant.key).where(CampaignVariant.campaign_id == campaign_id)
        ).all()
    )
    result["variants"] = {
        key: _counts([(s, r, c, rp) for v, s, r, c, rp in rows if v == variant_id])
        for variant_id, key in sorted(keys.items(), key=lambda kv: kv[1])
    }
    campaign = session.get(Campaign, campaign_id)
    result["conversion"] = _conversion(session, campaign) if campaign else None
    return result
