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

A user is a phone number: the caps (3, 4) count the messages of every profile with the user's number,
and right after the INSERT one UPDATE keeps one row per number and occurrence (``_one_per_phone``): of
the rows that passed, the other profiles' become ``skipped`` ``duplicate_phone`` (or, for a campaign sent
once per user, ``campaign_frequency_cap``). Every profile in the audience still has its row, so Sent +
Errors + Control group is the audience.
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
from tidings.campaigns.rules import Rules, zone
from tidings.db import UTCDateTime, insert_ignoring_conflicts
from tidings.delivery.models import LIVE_STATES, Message
from tidings.personalization.service import required_profile_properties
from tidings.profiles.models import Profile
from tidings.profiles.service import BUCKET_PRIME
from tidings.types import Json

MANY = 5_000  # rows planned at once above which the account's shared numbers are listed first


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
    planned, the others are ``skipped`` as ``duplicate_phone`` (see ``_one_per_phone``); the frequency
    caps count what the number received, whichever of its profiles it was planned for."""
    variant, choices = _variant_of(campaign, variants)
    # What the person got: the ledger rows of every profile that has this profile's phone (itself
    # included). The profiles are found first (``ix_profiles_account_phone``), then each one's rows by the
    # ledger's own indexes, in a scalar subquery per profile that the database cannot turn around.
    same = aliased(Profile, name="same_phone")
    same_phone = (same.account_id == campaign.account_id, same.phone == Profile.phone)
    checks: list[tuple[ColumnElement[bool], str, str]] = [
        (Profile.whatsapp_opt_in.is_(False), "skipped", "not_opted_in"),
        (Profile.phone.is_(None), "skipped", "no_valid_phone"),
    ]
    if campaign.respect_rules and rules.cap_max and rules.cap_hours:
        each_lately = (
            select(func.count())
            .where(
                Message.profile_id == same.id,
                Message.state.in_(LIVE_STATES),
                Message.created_at >= now - timedelta(hours=rules.cap_hours),
            )
            .correlate_except(Message)
            .scalar_subquery()
        )
        sent_lately = select(func.sum(each_lately)).select_from(same).where(*same_phone).scalar_subquery()
        checks.append((sent_lately >= rules.cap_max, "skipped", "global_frequency_cap"))
    frequency = campaign.frequency or {"rule": "every_time"}
    once_per_person = frequency["rule"] in ("once", "min_gap")
    if once_per_person:
        earlier = [Message.campaign_id == campaign.id, Message.state != "skipped"]
        if frequency["rule"] == "min_gap":
            earlier.append(Message.created_at >= now - timedelta(hours=frequency["hours"]))
        got = (
            select(literal(1))
            .where(Message.profile_id == same.id, *earlier)
            .correlate_except(Message)
            .limit(1)
            .scalar_subquery()
        )
        person_got = select(literal(1)).select_from(same).where(*same_phone, got.is_not(None)).exists()
        checks.append((person_got, "skipped", "campaign_frequency_cap"))
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
    before = int(session.scalar(select(func.coalesce(func.max(Message.id), 0))) or 0)
    result = session.execute(
        insert_ignoring_conflicts(session, Message).from_select(columns, query),
        execution_options={"preserve_rowcount": True},
    )
    written = int(result.rowcount)  # type: ignore[attr-defined]
    if written < 0:  # the driver did not say: count them
        written = int(
            session.scalar(
                select(func.count()).where(Message.campaign_id == campaign.id, Message.id > before)
            )
            or 0
        )
    if written:
        _one_per_phone(session, campaign, before, once_per_person, many=written > MANY)
    if written and campaign.respect_rules and rules.dnd and rules.dnd.timezone == "user":
        _dnd_in_user_zones(session, campaign, rules, account_tz, now)
    return written


def _one_per_phone(
    session: Session, campaign: Campaign, before: int, once_per_person: bool, *, many: bool = False
) -> None:
    """One message per phone number and campaign occurrence, among the rows just written (ids above
    ``before``): a row that would be sent or held in a control group gives way, as ``duplicate_phone``,
    when another profile with the same number has one for the same occurrence that was written by an
    earlier statement, or by this one for a lower profile id. The number is thus planned for the
    lowest-id profile among those that passed every check, and each profile's control group is still
    the one its hash gives. For a campaign sent once per user (or with a minimum gap), one row per
    number in the statement: the first by (profile id, occurrence); the others ``campaign_frequency_cap``.

    Set-based and cheap when numbers are not shared: each row looks up the profiles of its number
    (``ix_profiles_account_phone``, usually only its own), then their rows by the ledger's key; for
    ``many`` rows, the account's shared numbers are listed first (one pass over that index) and only
    their rows are looked at. No sort of the whole audience (a window function over a million rows
    spilled to disk on SQLite). Rows of this campaign written concurrently by another transaction are
    not seen (PostgreSQL): two uploads at the same instant for two profiles of one number may still each
    plan one."""
    same = aliased(Profile, name="same_phone")
    prior = aliased(Message, name="prior")
    mine = and_(
        Message.campaign_id == campaign.id,
        Message.id > before,
        Message.state.in_(("queued", "control")),
    )
    shared: ColumnElement[bool] | None = None
    if many:
        phones = (
            select(Profile.phone)
            .where(Profile.account_id == campaign.account_id, Profile.phone.is_not(None))
            .group_by(Profile.phone)
            .having(func.count() > 1)
        )
        shared = Message.to_phone.in_(phones)

    def only_shared(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        # In a CASE, so that the database tests each row against the list (hashed once) before looking
        # further, whatever it believes about the rows just written (no statistics on them yet).
        if shared is None:
            return condition
        result: ColumnElement[bool] = case((shared, condition), else_=literal(False))
        return result

    def number_has(*conditions: ColumnElement[bool], others_only: bool) -> ColumnElement[bool]:
        row = (
            select(literal(1))
            .select_from(prior)
            .where(
                prior.profile_id == same.id,
                prior.campaign_id == campaign.id,
                prior.state != "skipped",
                *conditions,
            )
            .correlate_except(prior)
            .limit(1)
            .scalar_subquery()
        )
        whose = [same.account_id == campaign.account_id, same.phone == Message.to_phone]
        if others_only:
            whose.append(same.id != Message.profile_id)
        return select(literal(1)).select_from(same).where(*whose, row.is_not(None)).exists()

    duplicate = number_has(
        prior.occurrence == Message.occurrence,
        prior.to_phone == Message.to_phone,
        or_(prior.id <= before, prior.profile_id < Message.profile_id),
        others_only=True,
    )
    session.execute(
        update(Message)
        .where(mine, only_shared(duplicate))
        .values(state="skipped", reason="duplicate_phone")
        .execution_options(synchronize_session=False)
    )
    if once_per_person:
        first = number_has(
            prior.id > before,
            or_(
                prior.profile_id < Message.profile_id,
                and_(prior.profile_id == Message.profile_id, prior.occurrence < Message.occurrence),
            ),
            others_only=False,
        )
        session.execute(
            update(Message)
            .where(mine, first)  # per row always: one profile's two occurrences share no number with another
            .values(state="skipped", reason="campaign_frequency_cap")
            .execution_options(synchronize_session=False)
        )


def _dnd_in_user_zones(
    session: Session, campaign: Campaign, rules: Rules, account_tz: ZoneInfo, now: datetime
) -> None:
    """DND in each user's time zone (profile property ``Tz``): one UPDATE per zone among the rows just
    planned (set-based; there are few distinct zones)."""
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
