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
    exists,
    func,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.rules import Rules
from tidings.db import UTCDateTime, insert_ignoring_conflicts
from tidings.delivery.models import Message
from tidings.personalization.service import required_profile_properties
from tidings.profiles.models import Profile
from tidings.profiles.service import BUCKET_PRIME
from tidings.types import Json

LIVE_STATES = ("queued", "sending", "sent", "delivered", "read")  # messages that count against caps


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
        return null(), [Choice(None, campaign.variables)]
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
    (campaign, profile, occurrence) is unique. Returns how many rows were written."""
    variant, choices = _variant_of(campaign, variants)
    checks: list[tuple[ColumnElement[bool], str, str]] = [
        (Profile.whatsapp_opt_in.is_(False), "skipped", "not_opted_in"),
        (Profile.phone.is_(None), "skipped", "no_valid_phone"),
    ]
    if campaign.respect_rules and rules.cap_max and rules.cap_hours:
        sent_lately = (
            select(func.count())
            .where(
                Message.profile_id == Profile.id,
                Message.state.in_(LIVE_STATES),
                Message.created_at >= now - timedelta(hours=rules.cap_hours),
            )
            .scalar_subquery()
        )
        checks.append((sent_lately >= rules.cap_max, "skipped", "global_frequency_cap"))
    frequency = campaign.frequency or {"rule": "every_time"}
    if frequency["rule"] in ("once", "min_gap"):
        earlier = [
            Message.campaign_id == campaign.id,
            Message.profile_id == Profile.id,
            Message.state != "skipped",
        ]
        if frequency["rule"] == "min_gap":
            earlier.append(Message.created_at >= now - timedelta(hours=frequency["hours"]))
        checks.append((exists().where(*earlier), "skipped", "campaign_frequency_cap"))
    details: list[tuple[ColumnElement[bool], str]] = []
    for choice in choices:
        required = sorted(set().union(*(required_profile_properties(v) for v in choice.variables)))
        for prop in required:
            missing = _missing(prop)
            if choice.variant_id is not None:
                missing = and_(variant == choice.variant_id, missing)
            details.append((missing, f"Profile.{prop} is missing and has no default"))
    if details:
        checks.append((or_(*(m for m, _ in details)), "skipped", "missing_personalization"))
    if campaign.system_control_group and rules.system_control_group_pct:
        in_system = _bucket(*system_salts(campaign.account_id)) < rules.system_control_group_pct
        checks.append((in_system, "control", "system_control_group"))
    if campaign.control_group_pct:
        checks.append(
            (
                _bucket(*control_salts(campaign.account_id, campaign.id)) < campaign.control_group_pct,
                "control",
                "campaign_control_group",
            )
        )
    send_at: Any = literal(now, UTCDateTime())
    dnd = rules.dnd if campaign.respect_rules and rules.dnd and rules.dnd.timezone == "account" else None
    dnd_end = dnd.window_end(now, account_tz) if dnd else None
    if dnd is not None and dnd_end is not None:
        if dnd.action == "drop":
            checks.append((literal(True), "skipped", "dnd"))
        else:
            send_at = literal(dnd_end, UTCDateTime())

    state = case(*((cond, st) for cond, st, _ in checks), else_="queued")
    reason = case(*((cond, why) for cond, _, why in checks), else_=None)
    detail: Any = case(*details, else_=None) if details else literal(None, String)
    query = select(
        Profile.account_id,
        Profile.id,
        Profile.phone,
        state,
        reason,
        detail,
        literal(campaign.id, Integer),
        occurrence if occurrence is not None else literal("", String),
        variant,
        context if context is not None else null(),
        literal(0, Integer),
        send_at,
        literal(now, UTCDateTime()),
    )
    query = (query.select_from(Profile).join(join[0], join[1]) if join else query).where(
        Profile.account_id == campaign.account_id, audience
    )
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
    result = session.execute(insert_ignoring_conflicts(session, Message).from_select(columns, query))
    written = int(result.rowcount)  # type: ignore[attr-defined]
    if written < 0:  # the driver did not say (SQLite for INSERT … SELECT … ON CONFLICT): count them
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
