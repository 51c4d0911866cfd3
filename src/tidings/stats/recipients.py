"""Per-recipient results of a campaign: who, which variant, the rendered values, each state with its time
and the reason — read from the ledger a page at a time, filtered, and as CSV streamed in pages of
``CSV_PAGE`` rows: never the whole campaign at once.

Pages are a keyset on the ledger's unique index (campaign, profile, occurrence), the one index that holds
a campaign's rows in an order, so that a page costs the same on the first and the thousandth page of a
campaign of any size; the cursor handed out is the last row's ledger id (whose profile and occurrence say
where the next page starts)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select, tuple_
from sqlalchemy.orm import Session

from tidings.campaigns.models import CampaignVariant
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.stats.reasons import explain

MAX_PAGE = 500
CSV_PAGE = 2000
MAX_Q_PROFILES = 1000  # profiles a search names by id; past this, a join
TIMES = ("created_at", "sent_at", "delivered_at", "read_at", "replied_at", "failed_at")
CSV_COLUMNS = (
    "id",
    "identity",
    "phone",
    "variant",
    "params",
    "state",
    "reason",
    "explanation",
    "error_detail",
    *TIMES,
)
_TOP = "\U0010ffff"  # sorts after every character: ``q <= x < q + _TOP`` is "x starts with q"


@dataclass(frozen=True)
class Filters:
    """Which rows: any of ``states``, the variant with key ``variant``, the exact ``reason``, and ``q``: the
    start of the profile's identity or phone (``9198…`` matches ``+9198…``)."""

    states: tuple[str, ...] = ()
    variant: str | None = None
    reason: str | None = None
    q: str | None = None


def _prefix(column: Any, start: str) -> ColumnElement[bool]:
    """``column`` starts with ``start``, as a range the column's index serves (exact under a binary
    collation, as SQLite's and a ``C`` PostgreSQL database's)."""
    return (column >= start) & (column < start + _TOP)


def _conditions(session: Session, account_id: str, campaign_id: int, filters: Filters) -> list[Any]:
    where: list[Any] = [Message.campaign_id == campaign_id]
    if filters.states:
        where.append(Message.state.in_(filters.states))
    if filters.reason:
        where.append(Message.reason == filters.reason)
    if filters.variant:
        variant_id = session.scalar(
            select(CampaignVariant.id).where(
                CampaignVariant.campaign_id == campaign_id, CampaignVariant.key == filters.variant
            )
        )
        where.append(Message.variant_id == variant_id if variant_id is not None else false())
    q = (filters.q or "").strip()
    if q:
        phone = q if q.startswith("+") else f"+{q}"
        profiles = select(Profile.id).where(
            Profile.account_id == account_id,
            or_(_prefix(Profile.identity, q), _prefix(Profile.phone, phone)),
        )
        # The matching profiles first (their own indexes), then their rows by the ledger's unique index.
        ids = list(session.scalars(profiles.limit(MAX_Q_PROFILES + 1)))
        where.append(Message.profile_id.in_(ids if len(ids) <= MAX_Q_PROFILES else profiles))
    return where


def _after(session: Session, campaign_id: int, after: int) -> list[ColumnElement[bool]]:
    """The rows after the ledger row ``after`` in the index's order (none when it is not the campaign's)."""
    if not after:
        return []
    last = session.execute(
        select(Message.profile_id, Message.occurrence).where(
            Message.id == after, Message.campaign_id == campaign_id
        )
    ).one_or_none()
    if last is None:
        return [false()]
    return [tuple_(Message.profile_id, Message.occurrence) > tuple_(last.profile_id, last.occurrence)]


def _page(
    session: Session, account_id: str, campaign_id: int, filters: Filters, after: int, limit: int
) -> list[dict[str, Any]]:
    keys = dict(
        session.execute(
            select(CampaignVariant.id, CampaignVariant.key).where(CampaignVariant.campaign_id == campaign_id)
        ).all()
    )
    rows = session.execute(
        select(
            Message.id,
            Message.profile_id,
            Message.to_phone,
            Message.variant_id,
            Message.params,
            Message.state,
            Message.reason,
            Message.error_detail,
            *(getattr(Message, name) for name in TIMES),
        )
        .where(*_conditions(session, account_id, campaign_id, filters), *_after(session, campaign_id, after))
        .order_by(Message.profile_id, Message.occurrence)
        .limit(limit)
    ).all()
    # The page's profiles by their ids afterwards: a join would make the database walk the profiles too.
    people = {
        row.id: row
        for row in session.execute(
            select(Profile.id, Profile.identity, Profile.phone).where(
                Profile.id.in_({row.profile_id for row in rows})
            )
        )
    }
    return [
        {
            "id": row.id,
            "identity": people[row.profile_id].identity,
            "phone": row.to_phone or people[row.profile_id].phone,
            "variant": keys.get(row.variant_id),
            "params": row.params,
            "state": row.state,
            "reason": row.reason,
            "explanation": explain(row.reason),
            "error_detail": row.error_detail,
            **{name: getattr(row, name) for name in TIMES},
        }
        for row in rows
    ]


def campaign_messages(
    session: Session, account_id: str, campaign_id: int, filters: Filters, *, after: int = 0, limit: int = 100
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of the campaign's recipients after the ledger row ``after`` (0: from the start), and the
    ``after`` of the next page (None on the last)."""
    limit = max(1, min(limit, MAX_PAGE))
    rows = _page(session, account_id, campaign_id, filters, after, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["id"] if more else None)


def _cell(value: Any) -> str:
    """A CSV cell: times in ISO 8601, the values as a JSON list, and text that a spreadsheet would run as a
    formula (``=…``, ``@…``, ``+``/``-`` not followed by a number) prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        value = json.dumps(value, ensure_ascii=False)
    text = str(value)
    if text[:1] in ("=", "@", "\t", "\r") or (text[:1] in ("+", "-") and not text[1:].isdigit()):
        return "'" + text
    return text


def messages_csv(db: Database, account_id: str, campaign_id: int, filters: Filters) -> Iterator[str]:
    """The campaign's recipients as CSV, a header row then one chunk per ``CSV_PAGE`` rows, each page read
    in its own short transaction (keyset on the ledger id): any size, never the whole campaign in memory."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    after = 0
    while True:
        with db.read() as session:
            rows = _page(session, account_id, campaign_id, filters, after, CSV_PAGE)
        for row in rows:
            writer.writerow([_cell(row[name]) for name in CSV_COLUMNS])
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if len(rows) < CSV_PAGE:
            return
        after = rows[-1]["id"]
