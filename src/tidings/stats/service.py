"""The six campaign stats, read from the ledger in grouped queries: in total, per variant, the funnel,
the errors in two groups (users not reached, messages the provider refused or failed) with what each
reason means, the conversion of the messaged users against the control group, and the timeline of sends,
deliveries, reads and replies per hour or day in the account's time zone."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Integer, case, cast, exists, func, literal, select, text, union_all
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.db import is_postgres
from tidings.delivery.models import SENT_STATES, Message
from tidings.profiles.models import Event
from tidings.stats.reasons import explain, split


def _counts(rows: list[tuple[str, str | None, int]], replied: int = 0) -> dict[str, Any]:
    """Sent, Errors, Delivered, Read, Control group from (state, reason, count) rows, and Replied as
    given (the users who replied: ``_replied``). Every ledger row is in exactly one of sent / errors /
    control_group / pending."""
    by_state: dict[str, int] = {}
    errors_by_reason: dict[str, int] = {}
    for state, reason, count in rows:
        by_state[state] = by_state.get(state, 0) + count
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


def _funnel(counts: dict[str, Any]) -> list[dict[str, Any]]:
    """Audience → sent → delivered → read → replied, each with its share of the audience and of the step
    before it."""
    steps = [(name, counts[name]) for name in ("audience", "sent", "delivered", "read", "replied")]
    audience = counts["audience"]
    return [
        {
            "step": name,
            "count": count,
            "of_audience": count / audience if audience else None,
            "of_previous": (count / steps[i - 1][1] if steps[i - 1][1] else None) if i else None,
        }
        for i, (name, count) in enumerate(steps)
    ]


def _error_groups(rows: list[tuple[str, str | None, int]]) -> dict[str, list[dict[str, Any]]]:
    """Errors in two groups from (state, reason, count) rows: ``unreached`` (skipped: the campaign could
    not reach the user) and ``failed`` (the provider refused or failed the message, with its code), each
    reason with its count and meaning, the largest first."""
    groups: dict[str, Counter[str]] = {"skipped": Counter(), "failed": Counter()}
    for state, reason, count in rows:
        if state in groups:
            groups[state][reason or state] += count

    def listed(counter: Counter[str]) -> list[dict[str, Any]]:
        items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        return [
            {
                "reason": reason,
                "provider": split(reason)[0],
                "code": split(reason)[1],
                "count": count,
                "explanation": explain(reason),
            }
            for reason, count in items
        ]

    return {"unreached": listed(groups["skipped"]), "failed": listed(groups["failed"])}


def _replied(session: Session, campaign_id: int) -> tuple[int, dict[int | None, int]]:
    """Replied: the users who replied to the campaign, each once however many times they wrote and
    however many of its messages (a triggered campaign's occurrences) they answered — in total and per
    variant. A replied message is ``read`` (``conversations.attribution.mark_replied``), so both counts
    read only the campaign's read rows, from its (campaign, state) index."""
    replied = (Message.campaign_id == campaign_id, Message.state == "read", Message.replied_at.is_not(None))
    total = session.scalar(select(func.count(func.distinct(Message.profile_id))).where(*replied))
    per_variant = session.execute(
        select(Message.variant_id, func.count(func.distinct(Message.profile_id)))
        .where(*replied)
        .group_by(Message.variant_id)
    ).all()
    return int(total or 0), {variant_id: int(count) for variant_id, count in per_variant}


def campaign_stats(session: Session, campaign_id: int) -> dict[str, Any]:
    rows = session.execute(
        select(Message.variant_id, Message.state, Message.reason, func.count())
        .where(Message.campaign_id == campaign_id)
        .group_by(Message.variant_id, Message.state, Message.reason)
    ).all()
    replied, replied_by_variant = _replied(session, campaign_id)
    result = _counts([(state, reason, count) for _v, state, reason, count in rows], replied)
    result["funnel"] = _funnel(result)
    result["errors_grouped"] = _error_groups([(state, reason, count) for _v, state, reason, count in rows])
    keys = dict(
        session.execute(
            select(CampaignVariant.id, CampaignVariant.key).where(CampaignVariant.campaign_id == campaign_id)
        ).all()
    )
    result["variants"] = {
        key: _counts(
            [(s, r, c) for v, s, r, c in rows if v == variant_id], replied_by_variant.get(variant_id, 0)
        )
        for variant_id, key in sorted(keys.items(), key=lambda kv: kv[1])
    }
    campaign = session.get(Campaign, campaign_id)
    result["conversion"] = _conversion(session, campaign) if campaign else None
    return result


Bucket = Literal["hour", "day"]
SLOT_SECONDS = 900  # every time zone's offset from UTC is a whole number of quarter hours
# The timeline's series: the ledger column each counts.
SERIES = {
    "sent": Message.sent_at,
    "delivered": Message.delivered_at,
    "read": Message.read_at,
    "replied": Message.replied_at,
}


def _slot(session: Session, column: Any) -> ColumnElement[Any]:
    """The UTC quarter hour of a (naive UTC) time column, as a number, on either database."""
    if is_postgres(session):
        return cast(func.floor(func.extract("epoch", column) / SLOT_SECONDS), Integer)
    return cast(func.strftime("%s", column), Integer) / SLOT_SECONDS


def campaign_timeline(
    session: Session, campaign_id: int, bucket: Bucket, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """Sends, deliveries, reads and replies per hour or per day in the zone ``tz`` (the account's), the
    oldest first; buckets with nothing are left out. Replies count users, each at their first reply
    (the timeline's replies add up to the stats' Replied).

    One aggregate query over the campaign's rows counts each series per UTC quarter hour (grouped in SQL,
    the same on SQLite and PostgreSQL); the few quarter hours are then put in the zone's hours or days here,
    which is exact for every zone, with its summer time, as no zone is offset by less than a quarter hour."""
    parts = []
    for name, column in SERIES.items():
        if name == "replied":
            continue
        slot = _slot(session, column).label("slot")
        parts.append(
            select(literal(name).label("series"), slot, func.count())
            .where(Message.campaign_id == campaign_id, column.is_not(None))
            .group_by(slot)
        )
    # Replied counts users, as in the stats: each user once, at their first reply to the campaign.
    first = (
        select(func.min(Message.replied_at).label("at"))
        .where(Message.campaign_id == campaign_id, Message.state == "read", Message.replied_at.is_not(None))
        .group_by(Message.profile_id)
        .subquery()
    )
    slot = _slot(session, first.c.at).label("slot")
    parts.append(select(literal("replied").label("series"), slot, func.count()).group_by(slot))
    totals: dict[datetime, dict[str, int]] = {}
    for series, slot, count in session.execute(union_all(*parts)).all():
        local = datetime.fromtimestamp(int(slot) * SLOT_SECONDS, UTC).astimezone(tz)
        start = local.replace(minute=0, second=0, microsecond=0)
        if bucket == "day":
            start = start.replace(hour=0)
        figures = totals.setdefault(start, dict.fromkeys(SERIES, 0))
        figures[series] += int(count)
    return [{"start": start, **figures} for start, figures in sorted(totals.items())]


def list_figures(session: Session, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Sent, Delivered and Read of each of these campaigns (a page of the campaign list), in one query
    grouped by campaign and state that the ledger's (campaign_id, state) index answers; a campaign with no
    rows has none."""
    if not campaign_ids:
        return {}
    rows = session.execute(
        select(Message.campaign_id, Message.state, func.count())
        .where(Message.campaign_id.in_(campaign_ids))
        .group_by(Message.campaign_id, Message.state)
    ).all()
    by_campaign: dict[int | None, list[tuple[str, str | None, int]]] = {}
    for campaign_id, state, count in rows:
        by_campaign.setdefault(campaign_id, []).append((state, None, count))
    figures = {}
    for campaign_id in campaign_ids:
        if campaign_id in by_campaign:
            counts = _counts(by_campaign[campaign_id])
            figures[campaign_id] = {name: counts[name] for name in ("audience", "sent", "delivered", "read")}
    return figures
