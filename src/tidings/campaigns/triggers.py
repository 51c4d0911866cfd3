"""What makes a user qualify for a live campaign, and when.

- ``single_action``: ``{"event": "Charged", "where": <conditions on the event's properties>}``. Planned in
  the same transaction as the ingested event, so no trigger is lost or doubled. Events older than two
  hours, or more than two minutes ahead, do not trigger (CleverTap's rule).
- ``inaction``: ``{"event": "Added To Cart", "where": …, "absent_event": "Charged", "absent_where": …,
  "within_minutes": 30}``: event A happened and B did not follow within the time; sent at A + T.
- ``on_date``: ``{"property": "Flight Date", "event": null, "offset_minutes": -1440, "at_time": "09:00",
  "timezone": "account" | "user"}``: relative to a date property of the profile (or of event ``event``),
  N minutes before (negative) or after, optionally at a time of day; once per user and date.

``where`` and ``absent_where`` use the segment language's property tests (docs/segments.md).

One campaign's failure stays its own: each campaign is planned in a savepoint, and one that cannot be
planned (its segment was deleted, its target is more than the database can run, any error that is not a
passing database condition) is paused with a note saying why (:func:`set_aside`) while the others — and the
upload that carried the event — go on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, String, and_, cast, exists, func, literal, select, update
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.campaigns.models import Campaign, CampaignTrigger, CampaignVariant
from tidings.campaigns.rules import Rules, zone
from tidings.campaigns.schemas import InactionTrigger, OnDateTrigger, Trigger, trigger_of
from tidings.db import insert_ignoring_conflicts, transient
from tidings.delivery.planning import plan_audience
from tidings.errors import ApiError
from tidings.profiles.models import Event, Profile
from tidings.segments.compiler import iso, properties_condition
from tidings.segments.service import profile_condition, resolve_target

log = logging.getLogger(__name__)

MAX_EVENT_AGE = timedelta(hours=2)
MAX_EVENT_LEAD = timedelta(minutes=2)


def _trigger(campaign: Campaign) -> Trigger:
    """The live campaign's trigger, as the model of its kind."""
    trigger = trigger_of(campaign.kind, campaign.trigger)
    if trigger is None:
        raise ValueError(f"this {campaign.kind} campaign has no trigger")
    return trigger


def _audience(session: Session, campaign: Campaign, now: datetime) -> ColumnElement[bool]:
    return profile_condition(
        resolve_target(session, campaign.account_id, campaign.target), account_id=campaign.account_id, now=now
    )


def _variants(session: Session, campaign: Campaign) -> list[CampaignVariant]:
    return list(
        session.scalars(
            select(CampaignVariant)
            .where(CampaignVariant.campaign_id == campaign.id)
            .order_by(CampaignVariant.key)
        )
    )


@dataclass(frozen=True)
class Context:
    """What planning needs besides the campaign: the account's rules and time zone."""

    rules: Rules
    tz: ZoneInfo


def engagement_context(session: Session, account_id: str) -> Context:
    account = session.get(Account, account_id)
    assert account is not None
    return Context(rules=Rules.model_validate(account.settings or {}), tz=zone(account.timezone))


# --- one campaign's failure stays its own ------------------------------------------------------------


def why(exc: BaseException) -> str:
    """A short, human reason for a campaign's note."""
    if isinstance(exc, ApiError):
        return exc.message
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(getattr(exc, 'orig', None) or exc).__name__}: {text}"


def set_aside(
    session: Session, campaign_id: int, exc: BaseException, doing: str, states: tuple[str, ...] = ("running",)
) -> bool:
    """Pause a campaign that failed (one guarded UPDATE, in the caller's transaction), with a note that
    says what failed and how to go on. False when it was no longer in one of ``states``."""
    note = f"paused: {doing} failed: {why(exc)}"[:240] + " — fix it, then resume"
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.state.in_(states))
        .values(state="paused", note=note[:300])
        .execution_options(synchronize_session=False)
    )
    log.warning("campaign %s paused: %s", campaign_id, note)
    return bool(result.rowcount)  # type: ignore[attr-defined]


def isolated(exc: BaseException) -> bool:
    """Whether a failure while planning one campaign is that campaign's own (it is paused and the others go
    on) rather than a passing database condition (which fails the whole unit of work, to be tried again)."""
    return isinstance(exc, Exception) and not transient(exc)


# --- live: at ingest -----------------------------------------------------------------------------------


def on_events(
    session: Session,
    account_id: str,
    event_ids: Sequence[int],
    now: datetime,
) -> int:
    """Called in the ingest transaction with the ids of the events just stored: plans single-action
    messages and records inaction candidates, set-based (a few statements per matching campaign, however
    many events). Each campaign is planned in a savepoint: one that fails is paused with a note and the
    upload goes on. Returns how many ledger rows and candidates were written."""
    if not event_ids:
        return 0
    campaigns = session.scalars(
        select(Campaign).where(
            Campaign.account_id == account_id,
            Campaign.state == "running",
            Campaign.kind.in_(("single_action", "inaction")),
        )
    ).all()
    if not campaigns:
        return 0
    names = set(session.scalars(select(Event.name).where(Event.id.in_(event_ids)).distinct()))
    written = 0
    context = engagement_context(session, account_id)
    for campaign in campaigns:
        if campaign.ends_at is not None and campaign.ends_at <= now:
            continue
        if (campaign.trigger or {}).get("event") not in names:  # (read as stored: a cheap first look)
            continue  # no event of this upload can trigger it
        campaign_id = campaign.id
        try:
            with session.begin_nested():
                written += _on_events_of(session, campaign, event_ids, now, context)
        except Exception as exc:
            if not isolated(exc):
                raise
            set_aside(session, campaign_id, exc, "planning the trigger events of this upload")
    return written


def _on_events_of(
    session: Session, campaign: Campaign, event_ids: Sequence[int], now: datetime, context: Context
) -> int:
    trigger = _trigger(campaign)
    assert not isinstance(trigger, OnDateTrigger)  # (on_date campaigns are not planned at ingest)
    conditions = [
        Event.id.in_(event_ids),
        Event.name == trigger.event,
        Event.ts >= now - MAX_EVENT_AGE,
        Event.ts <= now + MAX_EVENT_LEAD,
    ]
    if trigger.where is not None:
        conditions.append(properties_condition(trigger.where, Event.__table__.c.properties, now))
    if not isinstance(trigger, InactionTrigger):
        return _plan_single_action(session, campaign, conditions, now, context)
    matching = session.execute(
        select(Event.id, Event.profile_id, Event.ts, Event.properties).where(*conditions).order_by(Event.id)
    ).all()
    if not matching:
        return 0
    wait = timedelta(minutes=trigger.within_minutes)
    rows = [
        {
            "account_id": campaign.account_id,
            "campaign_id": campaign.id,
            "profile_id": profile_id,
            "occurrence": f"e{event_id}",
            "event_ts": ts,
            "due_at": ts + wait,
            "context": dict(properties or {}),
            "state": "waiting",
        }
        for event_id, profile_id, ts, properties in matching
    ]
    session.execute(insert_ignoring_conflicts(session, CampaignTrigger), rows)
    return len(rows)  # candidates seen (a repeat of the same event is ignored by the key)


def _plan_single_action(
    session: Session,
    campaign: Campaign,
    conditions: list[ColumnElement[bool]],
    now: datetime,
    context: Context,
) -> int:
    """The batch's matching events planned in one ``INSERT … SELECT`` (joined to the events), giving the
    same result as planning them one at a time in order: when a cap counts the messages a person (a phone
    number) got, their n-th event of the batch must see the earlier ones, so the events are planned in
    rounds by their rank among the events of the same number — the first of each, then the second… — and
    only as many rounds as the cap can tell apart (the rest together). Without caps, one round."""
    person = func.coalesce(Profile.phone, literal("#", String) + cast(Profile.id, String))
    people = session.scalars(
        select(person).select_from(Event).join(Profile, Profile.id == Event.profile_id).where(*conditions)
    ).all()
    if not people:
        return 0
    deepest = max(Counter(people).values())
    rules = context.rules
    frequency = (campaign.frequency or {"rule": "every_time"})["rule"]
    if frequency in ("once", "min_gap"):
        rounds = 1  # after a profile's first, the others all meet the campaign's own cap
    elif campaign.respect_rules and rules.cap_max and rules.cap_hours:
        rounds = int(rules.cap_max)  # the account's cap is reached after at most cap_max of them
    else:
        rounds = 0  # nothing counts earlier messages: all at once
    rounds = min(rounds, deepest - 1)
    ranked = (
        select(
            Event.id,
            Event.profile_id,
            Event.properties,
            func.row_number().over(partition_by=person, order_by=Event.id).label("nth"),
        )
        .select_from(Event)
        .join(Profile, Profile.id == Event.profile_id)
        .where(*conditions)
        .subquery("triggered")
    )
    audience = _audience(session, campaign, now)
    variants = _variants(session, campaign)
    written = 0
    for nth in [*range(1, rounds + 1), None]:
        rank = ranked.c.nth == nth if nth is not None else ranked.c.nth > rounds
        written += plan_audience(
            session,
            campaign,
            audience,
            now,
            rules=rules,
            account_tz=context.tz,
            variants=variants,
            join=(ranked, and_(ranked.c.profile_id == Profile.id, rank)),
            occurrence=literal("e", String) + cast(ranked.c.id, String),
            context=ranked.c.properties,
        )
    return written


# --- live: on the scheduler's tick ---------------------------------------------------------------------


def plan_due_inaction(session: Session, campaign: Campaign, now: datetime, context: Context) -> int:
    """Candidates whose time has come: messaged only if B did not follow A within the time.

    The due candidates are claimed in one step (``waiting`` → ``planning``, one UPDATE), then exactly the
    claimed ones are planned and marked ``done``: a candidate committed by an upload in between is left
    waiting for the next tick, never marked done without being planned. (``planning`` is never seen by
    another transaction: the three statements commit together.)"""
    trigger = _trigger(campaign)
    assert isinstance(trigger, InactionTrigger)
    session.execute(
        update(CampaignTrigger)
        .where(
            CampaignTrigger.campaign_id == campaign.id,
            CampaignTrigger.state == "waiting",
            CampaignTrigger.due_at <= now,
        )
        .values(state="planning")
        .execution_options(synchronize_session=False)
    )
    due = and_(CampaignTrigger.campaign_id == campaign.id, CampaignTrigger.state == "planning")
    followed_by = [
        Event.profile_id == CampaignTrigger.profile_id,
        Event.name == trigger.absent_event,
        Event.ts > CampaignTrigger.event_ts,
        Event.ts <= CampaignTrigger.due_at,
    ]
    if trigger.absent_where is not None:
        followed_by.append(properties_condition(trigger.absent_where, Event.__table__.c.properties, now))
    did_b = exists().where(*followed_by)
    written = plan_audience(
        session,
        campaign,
        and_(_audience(session, campaign, now), ~did_b),
        now,
        rules=context.rules,
        account_tz=context.tz,
        variants=_variants(session, campaign),
        join=(CampaignTrigger.__table__, and_(CampaignTrigger.profile_id == Profile.id, due)),
        occurrence=CampaignTrigger.occurrence,
        context=CampaignTrigger.context,
    )
    session.execute(
        update(CampaignTrigger).where(due).values(state="done").execution_options(synchronize_session=False)
    )
    return written


def _due(value: str, trigger: OnDateTrigger, tz: ZoneInfo) -> datetime | None:
    """When a date value's message is due (UTC)."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    due = moment + timedelta(minutes=trigger.offset_minutes)
    if trigger.at_time is not None:
        due = datetime.combine(due.astimezone(tz).date(), trigger.at_time, tzinfo=tz)
    return due.astimezone(UTC)


def plan_on_date(session: Session, campaign: Campaign, now: datetime, context: Context) -> int:
    """Users whose date (+ offset, at the time of day) fell in (last sweep, now]: planned once per user and
    date (the date is the occurrence). Candidates are narrowed in SQL to dates within a day of the window,
    then the exact time is computed per user (time zones), and the chosen are planned set-based."""
    trigger = _trigger(campaign)
    assert isinstance(trigger, OnDateTrigger)
    since = campaign.checked_until or campaign.started_at or now
    if since >= now:
        return 0
    offset = timedelta(minutes=trigger.offset_minutes)
    low, high = iso(since - offset - timedelta(days=1)), iso(now - offset + timedelta(days=1))
    prop = trigger.property
    by_user_zone = trigger.timezone == "user"
    if trigger.event:
        value = Event.properties[prop].as_string()
        rows = session.execute(
            select(Event.id, value, Profile.properties["Tz"].as_string())
            .join(Profile, Profile.id == Event.profile_id)
            .where(
                Event.account_id == campaign.account_id,
                Event.name == trigger.event,
                value >= low,
                value <= high,
            )
        ).all()
    else:
        value = Profile.properties[prop].as_string()
        rows = session.execute(
            select(Profile.id, value, Profile.properties["Tz"].as_string()).where(
                Profile.account_id == campaign.account_id, value >= low, value <= high
            )
        ).all()
    chosen = [
        row_id
        for row_id, date_value, tz_name in rows
        if (due := _due(date_value, trigger, zone(tz_name, context.tz.key) if by_user_zone else context.tz))
        and since < due <= now
    ]
    written = 0
    audience = _audience(session, campaign, now)
    variants = _variants(session, campaign)
    for start in range(0, len(chosen), 1000):
        ids = chosen[start : start + 1000]
        if trigger.event:
            written += plan_audience(
                session,
                campaign,
                audience,
                now,
                rules=context.rules,
                account_tz=context.tz,
                variants=variants,
                join=(Event.__table__, and_(Event.profile_id == Profile.id, Event.id.in_(ids))),
                occurrence=Event.properties[prop].as_string(),
                context=Event.properties,
            )
        else:
            written += plan_audience(
                session,
                campaign,
                and_(audience, Profile.id.in_(ids)),
                now,
                rules=context.rules,
                account_tz=context.tz,
                variants=variants,
                occurrence=value,
            )
    session.execute(
        update(Campaign)
        .where(Campaign.id == campaign.id)
        .values(checked_until=now)
        .execution_options(synchronize_session=False)
    )
    return written
