"""Campaigns: creation, the lifecycle (changed only through atomic claims), and the scheduler's tick.

Four kinds and no others: ``one_time`` (the segment is evaluated once, at the start), ``single_action``,
``inaction`` and ``on_date`` (live; see ``campaigns.triggers``). WhatsApp forbids recurring and
multi-date campaigns, so they are refused. States: draft → scheduled → running → completed | stopped
(``paused`` by the delivery engine when errors pile up, and by the scheduler when a campaign cannot be
started or planned: one campaign's failure never stops the others — see :func:`scheduler_tick`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.triggers import (
    LIVE_KINDS,
    engagement_context,
    isolated,
    plan_due_inaction,
    plan_on_date,
    set_aside,
    validate_trigger,
)
from tidings.db import Database, utcnow
from tidings.delivery import planning
from tidings.delivery import service as delivery
from tidings.delivery.models import Message
from tidings.errors import ApiError, Conflict, Invalid, NotFound
from tidings.personalization.service import check_sources
from tidings.segments.service import profile_condition, resolve_target, validate_target
from tidings.templates.service import get_template

log = logging.getLogger(__name__)

KINDS = ("one_time", *LIVE_KINDS)
MAX_VARIANTS = 50  # CleverTap: up to 50 variants by property value, plus the default
NOT_ON_WHATSAPP = ApiError(
    422,
    "not_allowed_on_whatsapp",
    "WhatsApp does not allow recurring or multi-date campaigns (to prevent spam): use one time, single "
    "action, inaction within time, or on a date/time",
)


@dataclass
class VariantIn:
    template_id: int
    variables: list[str] = field(default_factory=list)
    key: str | None = None
    weight: int | None = None
    match_value: str | None = None


def _check_values(
    session: Session, account_id: str, template_id: int, variables: list[str], where: str
) -> None:
    template = get_template(session, account_id, template_id)
    if len(variables) != template.variable_count:
        raise Invalid(
            f"{where}: template {template.name} has {template.variable_count} variable(s); "
            f"{len(variables)} value(s) given",
            code="variables_mismatch",
        )
    problems = check_sources(variables)
    if problems:
        raise Invalid(f"{where}: " + "; ".join(problems), code="invalid_liquid")


def _check_variants(split: dict[str, Any] | None, variants: list[VariantIn]) -> None:
    if not isinstance(split, dict) or split.get("by") not in ("percentage", "property"):
        raise Invalid('split must be {"by": "percentage"} or {"by": "property", "property": "…"}')
    if len(variants) < 2:
        raise Invalid("a multivariate campaign needs at least two variants")
    if split["by"] == "percentage":
        if set(split) != {"by"}:
            raise Invalid('split: {"by": "percentage"} takes no other key')
        if (
            any(v.weight is None or v.weight < 1 for v in variants)
            or sum(v.weight or 0 for v in variants) != 100
        ):
            raise Invalid("variants: each weight must be at least 1 and the weights must add up to 100")
        if any(v.match_value is not None for v in variants):
            raise Invalid("variants: match_value is for a split by property")
        if len(variants) > MAX_VARIANTS:
            raise Invalid(f"at most {MAX_VARIANTS} variants")
        return
    if (
        not isinstance(split.get("property"), str)
        or not split["property"]
        or set(split) != {"by", "property"}
    ):
        raise Invalid('split: {"by": "property"} needs "property", the profile property to split on')
    defaults = [v for v in variants if v.match_value is None]
    if len(defaults) != 1:
        raise Invalid("variants: exactly one variant must be the default (no match_value)")
    values = [v.match_value for v in variants if v.match_value is not None]
    if len(set(values)) != len(values):
        raise Invalid("variants: each match_value must be different")
    if len(values) > MAX_VARIANTS:
        raise Invalid(f"at most {MAX_VARIANTS} variants by property value, plus the default")
    if any(v.weight is not None for v in variants):
        raise Invalid("variants: weight is for a split by percentage")


def _check_frequency(frequency: dict[str, Any] | None) -> None:
    if frequency is None:
        return
    rule = frequency.get("rule")
    if rule in ("every_time", "once") and set(frequency) == {"rule"}:
        return
    if rule == "min_gap" and set(frequency) == {"rule", "hours"}:
        hours = frequency["hours"]
        if isinstance(hours, int | float) and not isinstance(hours, bool) and 5 / 60 <= hours <= 720:
            return
        raise Invalid("frequency.hours must be between 0.083 (5 minutes) and 720 (30 days)")
    raise Invalid(
        'frequency must be {"rule": "every_time"}, {"rule": "once"} or {"rule": "min_gap", "hours": N}'
    )


def _check_conversion(conversion: dict[str, Any] | None) -> tuple[str | None, int | None]:
    if conversion is None:
        return None, None
    event, hours = conversion.get("event"), conversion.get("within_hours")
    if set(conversion) != {"event", "within_hours"} or not isinstance(event, str) or not event:
        raise Invalid('conversion must be {"event": "Charged", "within_hours": 168}')
    if not isinstance(hours, int) or isinstance(hours, bool) or not 1 <= hours <= 2160:
        raise Invalid("conversion.within_hours must be a whole number of hours from 1 to 2160 (90 days)")
    return event, hours


def create_campaign(
    session: Session,
    account_id: str,
    *,
    name: str,
    template_id: int | None = None,
    variables: list[str] | None = None,
    target: dict[str, Any] | None = None,
    control_group_pct: int = 0,
    send_at: datetime | None = None,
    kind: str = "one_time",
    variants: list[VariantIn] | None = None,
    split: dict[str, Any] | None = None,
    trigger: dict[str, Any] | None = None,
    ends_at: datetime | None = None,
    frequency: dict[str, Any] | None = None,
    conversion: dict[str, Any] | None = None,
    system_control_group: bool = True,
    respect_rules: bool = True,
    draft: bool = False,
    schedule: Any = None,
) -> Campaign:
    """A campaign of one of the four kinds; ``Invalid`` names what is wrong."""
    if schedule is not None or kind not in KINDS:
        if schedule is not None or any(w in kind.lower() for w in ("recur", "repeat", "multi", "dates")):
            raise NOT_ON_WHATSAPP
        raise Invalid(f"kind must be one of {', '.join(KINDS)}")
    variants = variants or []
    variables = list(variables or [])
    if variants:
        _check_variants(split, variants)
        for i, v in enumerate(variants):
            _check_values(session, account_id, v.template_id, v.variables, f"variants[{i}]")
        template_id = template_id or variants[0].template_id
        if template_id != variants[0].template_id or variables:
            raise Invalid("a multivariate campaign sets template_id and variables per variant only")
    else:
        if split is not None:
            raise Invalid("split needs variants")
        if template_id is None:
            raise Invalid("template_id is required (or variants, for a multivariate campaign)")
        _check_values(session, account_id, template_id, variables, "variables")
    target = target or {"all": True}
    resolve_target(session, account_id, target)
    validate_target(target)
    if not 0 <= control_group_pct <= 99:
        raise Invalid("control_group_pct must be between 0 and 99")
    if kind == "one_time":
        if trigger is not None:
            raise Invalid("a one_time campaign has no trigger")
    else:
        validate_trigger(kind, trigger)
    _check_frequency(frequency)
    conversion_event, conversion_hours = _check_conversion(conversion)
    start = send_at or utcnow()
    if ends_at is not None and ends_at <= start:
        raise Invalid("ends_at must be after the start")
    campaign = Campaign(
        account_id=account_id,
        name=name,
        kind=kind,
        state="draft" if draft else "scheduled",
        template_id=template_id,
        variables=variables,
        target=target,
        control_group_pct=control_group_pct,
        scheduled_at=start,
        ends_at=ends_at,
        trigger=trigger,
        frequency=frequency,
        split=split if variants else None,
        system_control_group=system_control_group,
        respect_rules=respect_rules,
        conversion_event=conversion_event,
        conversion_window_hours=conversion_hours,
    )
    session.add(campaign)
    session.flush()
    for i, v in enumerate(variants):
        session.add(
            CampaignVariant(
                campaign_id=campaign.id,
                key=v.key or (chr(ord("A") + i) if i < 26 else f"V{i + 1}"),
                template_id=v.template_id,
                variables=list(v.variables),
                weight=v.weight,
                match_value=v.match_value,
            )
        )
    session.flush()
    return campaign


def get_campaign(session: Session, account_id: str, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id) if 0 < campaign_id < 2**31 else None
    if campaign is None or campaign.account_id != account_id:
        raise NotFound("campaign")
    return campaign


def variants_of(session: Session, campaign_id: int) -> list[CampaignVariant]:
    return list(
        session.scalars(
            select(CampaignVariant)
            .where(CampaignVariant.campaign_id == campaign_id)
            .order_by(CampaignVariant.key)
        )
    )


def list_campaigns(session: Session, account_id: str) -> list[Campaign]:
    return list(
        session.scalars(
            select(Campaign).where(Campaign.account_id == account_id).order_by(Campaign.id.desc())
        )
    )


def _transition(
    session: Session, account_id: str, campaign_id: int, sources: tuple[str, ...], target: str, **values: Any
) -> Campaign:
    """Move a campaign from one of ``sources`` to ``target`` in one guarded UPDATE."""
    campaign = get_campaign(session, account_id, campaign_id)
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state.in_(sources))
        .values(state=target, **values)
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise Conflict(f"campaign is {campaign.state}; it can become {target} only from {', '.join(sources)}")
    session.refresh(campaign)
    return campaign


def schedule_campaign(session: Session, account_id: str, campaign_id: int) -> Campaign:
    """A draft is scheduled: it starts at its start time."""
    return _transition(session, account_id, campaign_id, ("draft",), "scheduled")


def stop_campaign(session: Session, account_id: str, campaign_id: int) -> Campaign:
    """Stop sending: rows not yet sent stay queued and are not sent. Once this commits, workers no longer
    claim or mark the campaign's rows, and those they hold are given back unsent at their last look before
    the provider call (``delivery.dispatcher``); ``POST …/stop`` waits for that
    (``delivery.service.in_hand``)."""
    return _transition(
        session,
        account_id,
        campaign_id,
        ("draft", "scheduled", "running", "paused"),
        "stopped",
        completed_at=utcnow(),
        note="stopped by a user",
    )


def _templates_approved(session: Session, campaign: Campaign) -> str | None:
    """Why the campaign must wait, when one of its templates is not approved."""
    ids = {campaign.template_id} | {v.template_id for v in variants_of(session, campaign.id)}
    for template_id in sorted(ids):
        template = get_template(session, campaign.account_id, template_id)
        if template.status != "APPROVED":
            return f"waiting: template {template.name} is {template.status}, not APPROVED"
    return None


def start_campaign(session: Session, campaign_id: int, now: datetime) -> int | None:
    """Claim one due campaign (scheduled → running). A one-time campaign's audience is planned in the same
    transaction. Returns the audience planned (0 for a live campaign), or None when another process got it
    first or it must wait.

    A one-time campaign that was paused because it could not start (its audience never planned) and was
    then resumed is running with no audience yet: it is claimed here the same way (audience_size stays
    NULL until planned), and planned."""
    campaign = session.get(Campaign, campaign_id)
    resumed = campaign is not None and _unplanned(campaign)
    if campaign is None or (campaign.state != "scheduled" and not resumed):
        return None
    waiting = _templates_approved(session, campaign)
    if waiting:
        if campaign.note != waiting:
            campaign.note = waiting
        return None
    if resumed:
        guard = and_(Campaign.state == "running", Campaign.audience_size.is_(None))
        started = func.coalesce(Campaign.started_at, now)
        values: dict[str, Any] = {"audience_size": 0, "note": None, "started_at": started}
    else:
        guard = and_(Campaign.state == "scheduled", Campaign.scheduled_at <= now)
        values = {"state": "running", "started_at": now, "checked_until": now, "note": None}
    claimed = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, guard)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        return None
    session.refresh(campaign)
    if campaign.kind != "one_time":
        return 0
    context = engagement_context(session, campaign.account_id)
    audience = profile_condition(resolve_target(session, campaign.account_id, campaign.target), now=now)
    size = planning.plan_audience(
        session,
        campaign,
        audience,
        now,
        rules=context.rules,
        account_tz=context.tz,
        variants=variants_of(session, campaign.id),
    )
    session.execute(update(Campaign).where(Campaign.id == campaign_id).values(audience_size=size))
    return size


def _unplanned(campaign: Campaign) -> bool:
    """A one-time campaign running without an audience: paused before it could start, then resumed."""
    return campaign.kind == "one_time" and campaign.state == "running" and campaign.audience_size is None


def due_campaigns(session: Session, now: datetime) -> list[int]:
    """Scheduled campaigns whose time came, and resumed one-time campaigns whose audience is not planned."""
    unplanned = and_(
        Campaign.state == "running", Campaign.kind == "one_time", Campaign.audience_size.is_(None)
    )
    return list(
        session.scalars(
            select(Campaign.id)
            .where(or_(and_(Campaign.state == "scheduled", Campaign.scheduled_at <= now), unplanned))
            .order_by(Campaign.scheduled_at)
        )
    )


def complete_finished(session: Session, now: datetime) -> int:
    """One-time campaigns with nothing left to send, and live campaigns past their end, are completed."""
    open_rows = exists().where(Message.campaign_id == Campaign.id, Message.state.in_(("queued", "sending")))
    result = session.execute(
        update(Campaign)
        .where(
            Campaign.state == "running",
            or_(
                (Campaign.kind == "one_time") & Campaign.audience_size.is_not(None) & ~open_rows,
                (Campaign.kind != "one_time") & (Campaign.ends_at <= now) & ~open_rows,
            ),
        )
        .values(state="completed", completed_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def run_live(session: Session, now: datetime) -> int:
    """Inaction candidates whose time came, and on-date sweeps, for every running live campaign — each in
    a savepoint: one that fails is paused with a note, and the others are planned."""
    written = 0
    campaigns = session.scalars(
        select(Campaign).where(Campaign.state == "running", Campaign.kind.in_(("inaction", "on_date")))
    ).all()
    for campaign in campaigns:
        campaign_id = campaign.id
        try:
            with session.begin_nested():
                until = min(now, campaign.ends_at) if campaign.ends_at else now
                context = engagement_context(session, campaign.account_id)
                if campaign.kind == "inaction":
                    written += plan_due_inaction(session, campaign, until, context)
                else:
                    written += plan_on_date(session, campaign, until, context)
        except Exception as exc:
            if not isolated(exc):
                raise
            set_aside(session, campaign_id, exc, "planning this live campaign")
    return written


def start_due(db: Database, now: datetime) -> None:
    """Start every due campaign, each in its own transaction: one that cannot start — its segment is gone,
    its target is more than the database can run, any error — is paused with a note, and the others
    start. A passing database condition (a lock, a lost connection) pauses nothing: that campaign is tried
    again at the next tick."""
    with db.session() as session:
        due = due_campaigns(session, now)
    for campaign_id in due:
        try:
            with db.session() as session:
                size = start_campaign(session, campaign_id, now)
        except Exception as exc:
            if not isolated(exc):
                log.warning("campaign %s: could not start now (%s); trying again", campaign_id, exc)
                continue
            with db.session() as session:
                set_aside(session, campaign_id, exc, "starting this campaign", ("scheduled", "running"))
            continue
        if size is not None:
            log.info("campaign %s started; planned %s", campaign_id, size)


def scheduler_tick(
    db: Database,
    lease_grace: timedelta,
    now: datetime | None = None,
    *,
    unknown_outcome: str = "requeue",
    max_attempts: int = 5,
) -> None:
    """Start what is due, plan live work, fail lost sends, complete what is done. Safe to run in many
    processes at once: every step is a guarded UPDATE or an insert that ignores conflicts. Lost sends
    are reconciled with ``lease_grace`` as the window and the configured ``unknown_outcome`` and
    ``max_attempts`` (``TIDINGS_UNKNOWN_OUTCOME``, ``TIDINGS_MAX_ATTEMPTS``: the worker passes them)."""
    now = now or utcnow()
    start_due(db, now)  # each campaign in its own transaction; one that fails is paused, not the tick
    with db.session() as session:
        run_live(session, now)  # each live campaign in a savepoint, likewise
    with db.session() as session:
        delivery.expire_leases(
            session, now, lease_grace, unknown_outcome=unknown_outcome, max_attempts=max_attempts
        )
        complete_finished(session, now)
