"""Planning: writing a campaign's recipients into the ledger, set-based.

Each recipient becomes one ``messages`` row, decided in one ``INSERT … SELECT`` (no per-profile loop):
``skipped`` with its reason, ``control``, or ``queued`` (with its variant, and the time to send, which
Do-Not-Disturb may push back). The checks run in this order, the first that applies decides:

1. ``not_opted_in`` — ``MSG-whatsapp`` is not true;
2. ``no_valid_phone``;
3. ``global_frequency_cap`` — the account's cap of WhatsApp messages a user per period is reached;
4. ``campaign_frequency_cap`` — the campaign's own rule (once per user, or a minimum gap);
5. ``missing_personalization`` — a ``{{ Profile.X }}`` without a default has no value;
6. control: ``system_control_group`` (the account's 2-5 %), then ``campaign_control_group``;
7. ``dnd`` — inside Do-Not-Disturb hours with the action "drop" (with "delay", queued for the end).

Control groups are users who would have been messaged: only reachable users are counted there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.rules import Rules
from tidings.db import UTCDateTime, insert_ignoring_conflicts
from tidings.delivery.models import Message
from tidings.personalization.service import required_profile_properties
from tidings.profiles.models import Profile
from tidings.profiles.service import BUCKET_PRIME
from tidings.types import Json

LIVE_STATES = ("queued", "sending", "sent", "delivered", "read")  # messages that count against caps
CONTROL_REASONS = ("system_control_group", "campaign_control_group")


def salts(*parts: object) -> tuple[int, int]:
    """The (a, b) of a hash ``(a * seed + b) mod p``: a fresh, stable draw per purpose and campaign."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    a = 1 + int.from_bytes(digest[:8], "big") % (BUCKET_PRIME - 1)
    b = int.from_bytes(digest[8:16], "big") % BUCKET_PRIME
    return a, b


def control_salts(account_id: str, campaign_id: int) -> tuple[int, int]:
    return salts("control", account_id, campaign_id)


def system_salts(account_id: str) -> tuple[int, int]:
    """The account's system control group: the same users for every campaign."""
    return salts("system-control", account_id)


def control_bucket(seed: Any, a: int, b: int) -> Any:
    """A number 0-99 per (profile, purpose); works on SQL columns and on plain ints alike."""
    return ((seed * a + b) % BUCKET_PRIME) % 100


def _bucket(a: int, b: int) -> ColumnElement[int]:
    result: ColumnElement[int] = control_bucket(cast(Profile.seed, BigInteger), a, b)
    return result


def _missing(prop: str) -> ColumnElement[bool]:
    value = Profile.properties[prop].as_string()
    return or_(value.is_(None), value == "")


@dataclass(frozen=True)
class Choice:
    """What a recipient may be sent: one variant (id None for a single-message campaign)."""

    variant_id: int | None
    variables: Sequence[str]


def _variant_of(
    campaign: Campaign, variants: Sequence[CampaignVariant]
) -> tuple[ColumnElement[Any], list[Choice]]:
    """The SQL that picks each profile's variant, deterministic per user."""
    if not variants or not campaign.split:
        return cast(null(), Integer), [Choice(None, campaign.variables)]
    choices = [Choice(v.id, v.variables) for v in variants]
    if campaign.split.get("by") == "property":
        value = Profile.properties[campaign.split["property"]].as_string()
        default = next(v.id for v in variants if v.match_value is None)
        whens = [(value == v.match_value, v.id) for v in variants if v.match_value is not None]
        return case(*whens, else_=default), choices
    bucket = _bucket(*salts("variant", campaign.account_id, campaign.id))
    whens, upto = [], 0
    for v in variants:
        upto += v.weight or 0
        whens.append((bucket < upto, v.id))
    return case(*whens[:-1], else_=variants[-1].id), choices


def plan_audience(
    session: Session,
    campaign: Campaign,
    audience: ColumnElement[bool],
    now: datetime,
    *,
    rules: Rules,
    account_tz: ZoneInfo,
    variants: Sequence[CampaignVariant] = (),
    join: tuple[Any, ColumnElement[bool]] | None = None,
    occurrence: Any = None,
    context: Any = None,
) -> int:
    """Write one ledger row per profile in the audience (and per row of ``join`` when given, which
    supplies the ``occurrence`` and the event ``context``). Rerunning adds nothing: the key
    (campaign, profile, occurrence) is unique. Returns how many rows were written.

    One person is one phone number: of the profiles that share a number, one per campaign occurrence is
    planned (the lowest profile id among those that pass the checks before it), the others are
    ``skipped`` as ``duplicate_phone`` — also when the number was planned by an earlier statement. The
    frequency caps count what the number received, whichever profile it was planned for."""
    variant, choices = _variant_of(campaign, variants)
    occ = occurrence if occurrence is not None else literal("", String)
    # What the person got: the ledger rows of every profile that has this profile's phone (itself
    # included). The profiles are found first (``ix_profiles_account_phone``), then each one's rows by the
    # ledger's keys, in a scalar subquery per profile that the database cannot turn around: a plan that
    # scanned the campaign's rows for each profile instead would make planning quadratic.
    same = aliased(Profile, name="same_phone")
    same_phone = (same.account_id == campaign.account_id, same.phone == Profile.phone)

    def person_has(*conditions: ColumnElement[bool], others_only: bool = False) -> ColumnElement[bool]:
        row = (
            select(literal(1))
            .where(Message.profile_id == same.id, *conditions)
            .correlate_except(Message)
            .limit(1)
            .scalar_subquery()
        )
        whose = (*same_phone, same.id != Profile.id) if others_only else same_phone
        return select(literal(1)).select_from(same).where(*whose, row.is_not(None)).exists()

    checks: list[tuple[ColumnElement[bool], str]] = [
        (Profile.whatsapp_opt_in.is_(False), "not_opted_in"),
        (Profile.phone.is_(None), "no_valid_phone"),
    ]
    if campaign.respect_rules and rules.cap_max and rules.cap_hours:
        each_lately = (
            select(func.count())
            .where(
                Message.profile_id == same.id,
                Message.state.in_(LIVE_STATES),
                Message.created_at >= now - timedelta(hours=rules.cap_hours),
            )
            .scalar_subquery()
        )
        sent_lately = select(func.sum(each_lately)).select_from(same).where(*same_phone).scalar_subquery()
        checks.append((sent_lately >= rules.cap_max, "global_frequency_cap"))
    frequency = campaign.frequency or {"rule": "every_time"}
    once_per_person = frequency["rule"] in ("once", "min_gap")
    if once_per_person:
        earlier = [Message.campaign_id == campaign.id, Message.state != "skipped"]
        if frequency["rule"] == "min_gap":
            earlier.append(Message.created_at >= now - timedelta(hours=frequency["hours"]))
        checks.append((person_has(*earlier), "campaign_frequency_cap"))
    details: list[tuple[ColumnElement[bool], str]] = []
    for choice in choices:
        required = sorted(set().union(*(required_profile_properties(v) for v in choice.variables)))
        for prop in required:
            missing = _missing(prop)
            if choice.variant_id is not None:
                missing = and_(variant == choice.variant_id, missing)
            details.append((missing, f"Profile.{prop} is missing and has no default"))
    if details:
        checks.append((or_(*(m for m, _ in details)), "missing_personalization"))
    # The number was already planned for this occurrence by an earlier statement, for another profile
    # (not asked when the campaign has no rows yet, as on a one-time campaign's only planning).
    if session.scalar(select(Message.id).where(Message.campaign_id == campaign.id).limit(1)) is not None:
        planned_before = person_has(
            Message.campaign_id == campaign.id,
            Message.occurrence == occ,
            Message.to_phone == same.phone,
            Message.state != "skipped",
            others_only=True,
        )
        checks.append((planned_before, "duplicate_phone"))
    controls: list[tuple[ColumnElement[bool], str]] = []
    if campaign.system_control_group and rules.system_control_group_pct:
        in_system = _bucket(*system_salts(campaign.account_id)) < rules.system_control_group_pct
        controls.append((in_system, "system_control_group"))
    if campaign.control_group_pct:
        controls.append(
            (
                _bucket(*control_salts(campaign.account_id, campaign.id)) < campaign.control_group_pct,
                "campaign_control_group",
            )
        )
    send_at: Any = literal(now, UTCDateTime())
    dnd = rules.dnd if campaign.respect_rules and rules.dnd and rules.dnd.timezone == "account" else None
    dnd_end = dnd.window_end(now, account_tz) if dnd else None
    dnd_drop = dnd is not None and dnd_end is not None and dnd.action == "drop"
    if dnd is not None and dnd_end is not None and not dnd_drop:
        send_at = literal(dnd_end, UTCDateTime())

    # Per profile (and joined row): the first skip reason of checks 1-5, the control group it falls in.
    detail: Any = case(*details, else_=None) if details else literal(None, String)
    each = select(
        Profile.account_id.label("account_id"),
        Profile.id.label("profile_id"),
        Profile.phone.label("to_phone"),
        case(*checks, else_=None).label("skip"),
        (case(*controls, else_=None) if controls else literal(None, String)).label("control"),
        detail.label("error_detail"),
        occ.label("occurrence"),
        variant.label("variant_id"),
        (context if context is not None else cast(null(), Json)).label("context"),
    )
    each_q = (each.select_from(Profile).join(join[0], join[1]) if join else each).where(
        Profile.account_id == campaign.account_id, audience
    )
    # OFFSET 0: computed once per row, not copied into each use below (PostgreSQL would inline it).
    row = each_q.offset(0).subquery("planned")
    # Then, among the profiles that passed those checks, one per phone number and occurrence (and, for a
    # campaign sent once per person or with a minimum gap, one per phone number in this statement).
    passed = row.c.skip.is_(None)
    # dense_rank: the rows of one profile (two joined rows of one occurrence, which the key reduces to
    # one) rank alike, so one of them never makes the other a duplicate.
    first_of_phone = func.dense_rank().over(
        partition_by=(row.c.to_phone, row.c.occurrence, passed), order_by=row.c.profile_id
    )
    whens: list[tuple[ColumnElement[bool], Any]] = [
        (row.c.skip.is_not(None), row.c.skip),
        (first_of_phone > 1, "duplicate_phone"),
    ]
    if once_per_person:
        first_of_person = func.dense_rank().over(
            partition_by=(row.c.to_phone, passed), order_by=(row.c.profile_id, row.c.occurrence)
        )
        whens.append((first_of_person > 1, "campaign_frequency_cap"))
    whens.append((row.c.control.is_not(None), row.c.control))
    if dnd_drop:
        whens.append((literal(True), "dnd"))
    # The reason once (each window function once), then the state that goes with it.
    decided = (
        select(
            *(c for c in row.c if c.name not in ("skip", "control")), case(*whens, else_=None).label("reason")
        )
        .offset(0)
        .subquery("decided")
    )
    state = case(
        (decided.c.reason.is_(None), "queued"),
        (decided.c.reason.in_(CONTROL_REASONS), "control"),
        else_="skipped",
    )
    query = select(
        decided.c.account_id,
        decided.c.profile_id,
        decided.c.to_phone,
        state,
        decided.c.reason,
        decided.c.error_detail,
        literal(campaign.id, Integer),
        decided.c.occurrence,
        decided.c.variant_id,
        decided.c.context,
        literal(0, Integer),
        send_at,
        literal(now, UTCDateTime()),
    ).where(decided.c.profile_id.is_not(None))  # a WHERE keeps SQLite's INSERT … SELECT … ON CONFLICT plain
    columns = [
        "account_id",
        "profile_id",
        "to_phone",
        "state",
        "reason",
        "error_detail",
        "campaign_id",
        "occurrence",
        "variant_id",
        "context",
        "attempts",
        "next_attempt_at",
        "created_at",
    ]
    result = session.execute(
        insert_ignoring_conflicts(session, Message).from_select(columns, query),
        execution_options={"preserve_rowcount": True},
    )
    written = int(result.rowcount)  # type: ignore[attr-defined]
    if written < 0:  # the driver did not say: count them (rows of this campaign written at ``now``)
        written = int(
            session.scalar(
                select(func.count()).where(Message.campaign_id == campaign.id, Message.created_at == now)
            )
            or 0
        )
    if written and campaign.respect_rules and rules.dnd and rules.dnd.timezone == "user":
        _dnd_in_user_zones(session, campaign, rules, account_tz, now)
    return written


def _dnd_in_user_zones(
    session: Session, campaign: Campaign, rules: Rules, account_tz: ZoneInfo, now: datetime
) -> None:
    """DND in each user's time zone (profile property ``Tz``): one UPDATE per zone among the rows just
    planned (set-based; there are few distinct zones)."""
    from tidings.campaigns.rules import zone

    assert rules.dnd is not None
    tz_of = Profile.properties["Tz"].as_string()
    planned = and_(Message.campaign_id == campaign.id, Message.state == "queued", Message.created_at == now)
    zones = session.scalars(
        select(tz_of)
        .select_from(Message)
        .join(Profile, Profile.id == Message.profile_id)
        .where(planned)
        .distinct()
    ).all()
    for name in zones:
        tz = zone(name, account_tz.key)
        end = rules.dnd.window_end(now, tz)
        if end is None:
            continue
        in_zone = select(Profile.id).where(
            Profile.account_id == campaign.account_id, tz_of.is_(None) if name is None else tz_of == name
        )
        values: dict[str, Any] = (
            {"state": "skipped", "reason": "dnd"} if rules.dnd.action == "drop" else {"next_attempt_at": end}
        )
        session.execute(
            update(Message)
            .where(planned, Message.profile_id.in_(in_zone))
            .values(**values)
            .execution_options(synchronize_session=False)
        )


def json_literal(value: dict[str, Any]) -> ColumnElement[Any]:
    return literal(value, Json)
