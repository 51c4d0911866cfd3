"""Campaigns: creation, the lifecycle (changed only through atomic claims), and the scheduler's tick.

Four kinds and no others: ``one_time`` (the segment is evaluated once, at the start), ``single_action``,
``inaction`` and ``on_date`` (live; see ``campaigns.triggers``). WhatsApp forbids recurring and
multi-date campaigns, so the campaign model refuses them (``campaigns.schemas``, which checks everything a
campaign says on its own; what needs the database is checked here). A draft may be rewritten or deleted;
nothing else is. States: draft → scheduled → running → completed | stopped
(``paused`` by the delivery engine when errors pile up, and by the scheduler when a campaign cannot be
started or planned: one campaign's failure never stops the others — see :func:`scheduler_tick`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from tidings.campaigns.lifecycle import resume_campaign
from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.schemas import CampaignCreate, CampaignOut, Trigger
from tidings.campaigns.triggers import (
    engagement_context,
    isolated,
    plan_due_inaction,
    plan_on_date,
    set_aside,
)
from tidings.db import Database, utcnow
from tidings.delivery import planning
from tidings.delivery.claims import in_hand
from tidings.delivery.models import OPEN_STATES, Message
from tidings.delivery.reconciliation import expire_leases
from tidings.errors import Conflict, Invalid, NotFound
from tidings.personalization.service import check_sources
from tidings.profiles.models import Event
from tidings.segments.compiler import properties_condition
from tidings.segments.service import profile_condition, resolve_target, validate_target
from tidings.templates.service import get_template, template_by_ref

log = logging.getLogger(__name__)
STOP_WAIT = 10.0  # seconds a stop waits at most for the workers to let go of the campaign
STOP_POLL = 0.02


def _check_values(
    session: Session, account_id: str, template: int | str, variables: list[str], where: str
) -> int:
    """The template's id, once its variables are checked against the values given."""
    found = template_by_ref(session, account_id, template)
    if len(variables) != found.variable_count:
        raise Invalid(
            f"{where}: template {found.name} has {found.variable_count} variable(s); "
            f"{len(variables)} value(s) given",
            code="variables_mismatch",
        )
    problems = check_sources(variables)
    if problems:
        raise Invalid(f"{where}: " + "; ".join(problems), code="invalid_liquid")
    return found.id


def _check_where(trigger: Trigger | None) -> None:
    """The trigger's conditions on event properties, in the segment language (``Invalid`` names the part)."""
    for key in ("where", "absent_where"):
        where = getattr(trigger, key, None)
        if where is not None:
            properties_condition(where, Event.__table__.c.properties, utcnow(), root=f"trigger.{key}")


def _columns(
    session: Session, account_id: str, spec: CampaignCreate, draft_step: str | None
) -> tuple[dict[str, Any], list[CampaignVariant]]:
    """The campaign's columns and its variants (without ``campaign_id``), from a checked ``spec``: what the
    model could not check alone (templates and their variables, the target's saved segments) is checked
    here; ``Invalid`` names what is wrong. ``draft_step``: where the dashboard's guided flow reopens a
    draft."""
    variants = []
    for i, v in enumerate(spec.variants):
        template_id = _check_values(session, account_id, v.template_id, v.variables, f"variants[{i}]")
        variants.append(
            CampaignVariant(
                key=v.key or (chr(ord("A") + i) if i < 26 else f"V{i + 1}"),
                template_id=template_id,
                variables=list(v.variables),
                weight=v.weight,
                match_value=v.match_value,
            )
        )
    if variants:
        template_id = variants[0].template_id
    else:
        assert spec.template_id is not None  # the model requires it without variants
        template_id = _check_values(session, account_id, spec.template_id, spec.variables, "variables")
    target = spec.raw_target()
    resolve_target(session, account_id, target)
    validate_target(target)
    _check_where(spec.trigger)
    start = spec.send_at or utcnow()
    if spec.ends_at is not None and spec.ends_at <= start:
        raise Invalid("ends_at must be after the start")

    def dump(model: BaseModel | None) -> dict[str, Any] | None:
        return model.model_dump(mode="json") if model is not None else None

    columns = {
        "name": spec.name,
        "kind": spec.kind,
        "state": "draft" if spec.draft else "scheduled",
        "template_id": template_id,
        "variables": list(spec.variables),
        "target": target,
        "control_group_pct": spec.control_group_pct,
        "scheduled_at": start,
        "ends_at": spec.ends_at,
        "trigger": dump(spec.trigger),
        "frequency": dump(spec.frequency),
        "split": dump(spec.split),
        "system_control_group": spec.system_control_group,
        "respect_rules": spec.respect_rules,
        "conversion_event": spec.conversion.event if spec.conversion else None,
        "conversion_window_hours": spec.conversion.within_hours if spec.conversion else None,
        "draft_step": draft_step if spec.draft else None,
    }
    return columns, variants


def _add_variants(session: Session, campaign_id: int, variants: list[CampaignVariant]) -> None:
    for variant in variants:
        variant.campaign_id = campaign_id
        session.add(variant)
    session.flush()


def create_campaign(
    session: Session, account_id: str, spec: CampaignCreate, *, draft_step: str | None = None
) -> Campaign:
    """A campaign of one of the four kinds, scheduled for ``spec.send_at`` or saved as a draft (which the
    dashboard reopens at ``draft_step``)."""
    columns, variants = _columns(session, account_id, spec, draft_step)
    campaign = Campaign(account_id=account_id, **columns)
    session.add(campaign)
    session.flush()
    _add_variants(session, campaign.id, variants)
    return campaign


COPIED = (
    "kind",
    "template_id",
    "variables",
    "target",
    "control_group_pct",
    "trigger",
    "frequency",
    "split",
    "system_control_group",
    "respect_rules",
    "conversion_event",
    "conversion_window_hours",
)


def duplicate_campaign(session: Session, account_id: str, campaign_id: int) -> Campaign:
    """A draft copy of a campaign in any state, named "<name> (copy)": the same kind, audience, variants,
    control group, rules and goal; not its schedule (it starts now unless the draft is given a time, and a
    live campaign's end is left to set again), nor its messages or figures."""
    source = get_campaign(session, account_id, campaign_id)
    suffix = " (copy)"
    copy = Campaign(
        account_id=account_id,
        name=source.name[: 200 - len(suffix)] + suffix,
        state="draft",
        scheduled_at=utcnow(),
        **{column: getattr(source, column) for column in COPIED},
    )
    session.add(copy)
    session.flush()
    variants = [
        CampaignVariant(
            key=v.key,
            template_id=v.template_id,
            variables=v.variables,
            weight=v.weight,
            match_value=v.match_value,
        )
        for v in variants_of(session, source.id)
    ]
    _add_variants(session, copy.id, variants)
    return copy


def _not_draft(campaign: Campaign, doing: str) -> Conflict:
    return Conflict(f"campaign is {campaign.state}; only a draft can be {doing}")


def update_draft(
    session: Session,
    account_id: str,
    campaign_id: int,
    spec: CampaignCreate,
    *,
    draft_step: str | None = None,
) -> Campaign:
    """Rewrite a draft with ``spec``, checked as at creation (``spec.draft`` false schedules it). 409 once
    it is no longer a draft: the change is one guarded UPDATE, so it cannot reach a campaign that a
    concurrent request scheduled."""
    campaign = get_campaign(session, account_id, campaign_id)
    columns, variants = _columns(session, account_id, spec, draft_step)
    changed = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state == "draft")
        .values(**columns)
        .execution_options(synchronize_session=False)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        raise _not_draft(campaign, "changed")
    session.execute(delete(CampaignVariant).where(CampaignVariant.campaign_id == campaign.id))
    _add_variants(session, campaign.id, variants)
    session.refresh(campaign)
    return campaign


def delete_draft(session: Session, account_id: str, campaign_id: int) -> None:
    """Delete a draft (it has sent nothing); 409 for any other state (stop a campaign instead)."""
    campaign = get_campaign(session, account_id, campaign_id)
    deleted = session.execute(
        delete(Campaign)
        .where(Campaign.id == campaign.id, Campaign.state == "draft")
        .execution_options(synchronize_session=False)
    )
    if not deleted.rowcount:  # type: ignore[attr-defined]
        raise _not_draft(campaign, "deleted")
    # (PostgreSQL deletes them with the campaign; SQLite when it enforces foreign keys)
    session.execute(delete(CampaignVariant).where(CampaignVariant.campaign_id == campaign.id))
    session.expunge(campaign)


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


def list_campaigns(
    session: Session,
    account_id: str,
    *,
    name: str | None = None,
    kind: str | None = None,
    state: str | None = None,
    before: int | None = None,
    limit: int | None = None,
) -> list[Campaign]:
    """The account's campaigns, the newest first: optionally those whose name contains ``name`` (any
    case), of one kind, in one state, and (keyset paging) with an id below ``before``, ``limit`` at most."""
    query = select(Campaign).where(Campaign.account_id == account_id)
    if name:
        query = query.where(func.lower(Campaign.name).contains(name.lower(), autoescape=True))
    if kind:
        query = query.where(Campaign.kind == kind)
    if state:
        query = query.where(Campaign.state == state)
    if before is not None:
        query = query.where(Campaign.id < before)
    return list(session.scalars(query.order_by(Campaign.id.desc()).limit(limit)))


def resume(session: Session, account_id: str, campaign_id: int) -> Campaign:
    """A paused campaign runs again (``campaigns.lifecycle``); 409 ``not_paused`` when it is not paused."""
    campaign = get_campaign(session, account_id, campaign_id)
    if not resume_campaign(session, account_id, campaign_id):
        raise Conflict(
            f"campaign is {campaign.state}; only a paused campaign can be resumed", code="not_paused"
        )
    session.refresh(campaign)
    return campaign


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
    (``delivery.claims.in_hand``)."""
    return _transition(
        session,
        account_id,
        campaign_id,
        ("draft", "scheduled", "running", "paused"),
        "stopped",
        completed_at=utcnow(),
        note="stopped by a user",
    )


def stop_and_wait(db: Database, account_id: str, campaign_id: int) -> CampaignOut:
    """Stop the campaign, then wait (at most ``STOP_WAIT`` seconds) until none of its messages is in a
    worker's hands: workers see the stop within a few milliseconds and give back what they have not
    sent, and the provider calls already started are answered and recorded. A worker that hangs is not
    waited for (its lease will run out)."""
    with db.session() as session:
        stop_campaign(session, account_id, campaign_id)
    deadline = time.monotonic() + STOP_WAIT
    while True:
        with db.read() as session:
            if not in_hand(session, campaign_id, utcnow()):
                break
        if time.monotonic() >= deadline:
            log.warning("campaign %s stopped with messages still in a worker's hands", campaign_id)
            break
        time.sleep(STOP_POLL)
    with db.read() as session:
        return described(session, get_campaign(session, account_id, campaign_id))


def described(session: Session, campaign: Campaign) -> CampaignOut:
    """The campaign as the API shows it, with its variants."""
    return CampaignOut.of(campaign, variants_of(session, campaign.id))


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
    audience = profile_condition(
        resolve_target(session, campaign.account_id, campaign.target), account_id=campaign.account_id, now=now
    )
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
    open_rows = exists().where(Message.campaign_id == Campaign.id, Message.state.in_(OPEN_STATES))
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
        expire_leases(session, now, lease_grace, unknown_outcome=unknown_outcome, max_attempts=max_attempts)
        complete_finished(session, now)
