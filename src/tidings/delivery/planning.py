"""Planning: writing a campaign's recipients into the ledger, set-based.

Each recipient becomes one ``messages`` row: ``queued``, ``control``, or ``skipped`` with its reason,
decided in one ``INSERT … SELECT``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    case,
    cast,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign
from tidings.db import UTCDateTime, insert_ignoring_conflicts
from tidings.delivery.models import Message
from tidings.personalization.service import required_profile_properties
from tidings.profiles.models import Profile
from tidings.profiles.service import BUCKET_PRIME

# --- planning -----------------------------------------------------------------------------------------


def control_salts(account_id: str, campaign_id: int) -> tuple[int, int]:
    """The (a, b) of the campaign's hash ``(a * seed + b) mod p``: a fresh, stable draw per campaign."""
    digest = hashlib.sha256(f"control:{account_id}:{campaign_id}".encode()).digest()
    a = 1 + int.from_bytes(digest[:8], "big") % (BUCKET_PRIME - 1)
    b = int.from_bytes(digest[8:16], "big") % BUCKET_PRIME
    return a, b


def control_bucket(seed: Any, a: int, b: int) -> Any:
    """A number 0-99 per (profile, campaign); works on SQL columns and on plain ints alike."""
    return ((seed * a + b) % BUCKET_PRIME) % 100


def _missing(prop: str) -> ColumnElement[bool]:
    value = Profile.properties[prop].as_string()
    return or_(value.is_(None), value == "")


def plan_audience(session: Session, campaign: Campaign, audience: ColumnElement[bool], now: datetime) -> int:
    """Write one ledger row per profile in the audience: ``skipped`` with its reason, ``control``, or
    ``queued``. One ``INSERT … SELECT``; rerunning it adds nothing (the occurrence key is unique)."""
    a, b = control_salts(campaign.account_id, campaign.id)
    required = sorted(set().union(*(required_profile_properties(v) for v in campaign.variables)))
    missing_checks = [(_missing(p), f"Profile.{p} is missing and has no default") for p in required]
    missing_any = or_(*(m for m, _ in missing_checks)) if missing_checks else false()
    not_opted_in = Profile.whatsapp_opt_in.is_(False)
    no_phone = Profile.phone.is_(None)
    in_control = control_bucket(cast(Profile.seed, BigInteger), a, b) < campaign.control_group_pct
    state = case(
        (not_opted_in, "skipped"),
        (no_phone, "skipped"),
        (missing_any, "skipped"),
        (in_control, "control"),
        else_="queued",
    )
    reason = case(
        (not_opted_in, "not_opted_in"),
        (no_phone, "no_valid_phone"),
        (missing_any, "missing_personalization"),
        else_=None,
    )
    detail = case(*missing_checks, else_=None) if missing_checks else literal(None, String)
    query = select(
        Profile.account_id,
        Profile.id,
        Profile.phone,
        state,
        reason,
        detail,
        literal(campaign.id, Integer),
        literal("", String),
        literal(0, Integer),
        literal(now, UTCDateTime()),
        literal(now, UTCDateTime()),
    ).where(Profile.account_id == campaign.account_id, audience)
    columns = [
        "account_id",
        "profile_id",
        "to_phone",
        "state",
        "reason",
        "error_detail",
        "campaign_id",
        "occurrence",
        "attempts",
        "next_attempt_at",
        "created_at",
    ]
    stmt = insert_ignoring_conflicts(session, Message).from_select(columns, query)
    session.execute(stmt)
    return int(session.scalar(select(func.count()).where(Message.campaign_id == campaign.id)) or 0)
