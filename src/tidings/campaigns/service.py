"""Campaigns: creation, the lifecycle (changed only through atomic claims), and starting them."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign
from tidings.db import Database, utcnow
from tidings.delivery import planning
from tidings.delivery import service as delivery
from tidings.delivery.models import Message
from tidings.errors import Conflict, Invalid, NotFound
from tidings.personalization.service import check_sources
from tidings.segments.service import profile_condition, resolve_target, validate_target
from tidings.templates.service import get_template

log = logging.getLogger(__name__)


def create_campaign(
    session: Session,
    account_id: str,
    *,
    name: str,
    template_id: int,
    variables: list[str],
    target: dict[str, Any],
    control_group_pct: int = 0,
    send_at: datetime | None = None,
) -> Campaign:
    """A one-time campaign, scheduled for ``send_at`` (now when None)."""
    template = get_template(session, account_id, template_id)
    if len(variables) != template.variable_count:
        raise Invalid(
            f"template {template.name} has {template.variable_count} variable(s); "
            f"{len(variables)} value(s) given",
            code="variables_mismatch",
        )
    problems = check_sources(variables)
    if problems:
        raise Invalid("; ".join(problems), code="invalid_liquid")
    resolve_target(session, account_id, target)
    validate_target(target)
    if not 0 <= control_group_pct <= 99:
        raise Invalid("control_group_pct must be between 0 and 99")
    campaign = Campaign(
        account_id=account_id,
        name=name,
        kind="one_time",
        state="scheduled",
        template_id=template.id,
        variables=list(variables),
        target=target or {"all": True},
        control_group_pct=control_group_pct,
        scheduled_at=send_at or utcnow(),
    )
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, account_id: str, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.account_id != account_id:
        raise NotFound("campaign")
    return campaign


def list_campaigns(session: Session, account_id: str) -> list[Campaign]:
    return list(
        session.scalars(
            select(Campaign).where(Campaign.account_id == account_id).order_by(Campaign.id.desc())
        )
    )


def stop_campaign(session: Session, account_id: str, campaign_id: int) -> Campaign:
    """Stop sending: rows not yet sent are left queued and counted as not sent."""
    campaign = get_campaign(session, account_id, campaign_id)
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state.in_(("draft", "scheduled", "running")))
        .values(state="stopped", completed_at=utcnow(), note="stopped by a user")
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise Conflict(f"campaign is {campaign.state}; only a draft, scheduled or running one can stop")
    session.refresh(campaign)
    return campaign


def start_campaign(session: Session, campaign_id: int, now: datetime) -> int | None:
    """Claim one due campaign (scheduled → running) and plan its audience in the same transaction.
    Returns the audience size, or None when another process got it first or it must wait."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.state != "scheduled":
        return None
    template = get_template(session, campaign.account_id, campaign.template_id)
    if template.status != "APPROVED":
        note = f"waiting: template {template.name} is {template.status}, not APPROVED"
        if campaign.note != note:
            campaign.note = note
        return None
    claimed = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.state == "scheduled", Campaign.scheduled_at <= now)
        .values(state="running", started_at=now, note=None)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return None
    audience = profile_condition(resolve_target(session, campaign.account_id, campaign.target), now=now)
    size = planning.plan_audience(session, campaign, audience, now)
    session.execute(update(Campaign).where(Campaign.id == campaign_id).values(audience_size=size))
    return size


def due_campaigns(session: Session, now: datetime) -> list[int]:
    return list(
        session.scalars(
            select(Campaign.id)
            .where(Campaign.state == "scheduled", Campaign.scheduled_at <= now)
            .order_by(Campaign.scheduled_at)
        )
    )


def complete_finished(session: Session, now: datetime) -> int:
    """One-time campaigns with nothing left to send are completed."""
    open_rows = exists().where(Message.campaign_id == Campaign.id, Message.state.in_(("queued", "sending")))
    result = session.execute(
        update(Campaign)
        .where(Campaign.state == "running", Campaign.kind == "one_time", ~open_rows)
        .values(state="completed", completed_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def scheduler_tick(db: Database, lease_grace: timedelta) -> None:
    """Start what is due, fail lost sends, complete what is done. Safe to run in many processes."""
    now = utcnow()
    with db.session() as session:
        due = due_campaigns(session, now)
    for campaign_id in due:
        with db.session() as session:
            size = start_campaign(session, campaign_id, now)
        if size is not None:
            log.info("campaign %s started with an audience of %s", campaign_id, size)
    with db.session() as session:
        delivery.expire_leases(session, now, lease_grace)
        complete_finished(session, now)
