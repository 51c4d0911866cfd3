"""Claims and leases: a worker takes queued rows for sending (``claim_batch``), keeps them alive while it
holds them (``renew_leases``), and gives back what it never handed to the provider (``release``,
``give_back``). A claim's token (``claimed_by``) says whose rows they are; its lease says the holder is
alive (``in_hand``); a lease that runs out is recovered by ``delivery.reconciliation``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.db import cast_table, is_postgres
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.templates.models import Template


@dataclass(frozen=True)
class Claimed:
    """A ledger row taken for sending, with what is needed to render and send it."""

    id: int
    account_id: str
    to: str
    attempts: int
    text: str | None
    template_name: str | None
    language: str
    variables: tuple[str, ...]
    profile: dict[str, Any]
    event: dict[str, Any] | None = None  # the triggering event's properties (Event.* in Liquid)
    campaign_id: int | None = None
    token: str = ""  # the claim's token (``claimed_by``)
    # An agent's template reply carries its values as written (never rendered as Liquid); a file reply
    # its ``{"kind", "url", "filename"}``.
    fixed_params: list[str] | None = None
    media: dict[str, Any] | None = None


def claim_batch(
    session: Session,
    limit: int,
    lease: timedelta,
    now: datetime,
    *,
    token: str = "",
    skip_accounts: Sequence[str] = (),
) -> list[Claimed]:
    """Take up to ``limit`` due queued rows of running campaigns (or of no campaign) in one statement;
    ``FOR UPDATE SKIP LOCKED`` lets any number of workers claim side by side on PostgreSQL. ``token``
    marks the claim (only its holder may dispatch the rows); ``skip_accounts`` are senders whose
    queue in this worker is full."""
    running = select(Campaign.id).where(Campaign.state == "running")
    conditions = [
        Message.state == "queued",
        Message.next_attempt_at <= now,
        or_(Message.campaign_id.is_(None), Message.campaign_id.in_(running)),
    ]
    if skip_accounts:
        conditions.append(Message.account_id.not_in(list(skip_accounts)))
    due = select(Message.id).where(*conditions).order_by(Message.next_attempt_at, Message.id).limit(limit)
    claim = (
        update(Message)
        .values(
            state="sending",
            lease_until=now + lease,
            attempts=Message.attempts + 1,
            claimed_by=token or None,
            dispatched_at=None,
        )
        .returning(Message.id)
        .execution_options(synchronize_session=False)
    )
    if is_postgres(session):
        # A ``LIMIT … FOR UPDATE SKIP LOCKED`` sub-select inside ``IN (…)`` may be run more than once by
        # PostgreSQL, claiming more rows than asked for; a materialized CTE runs once.
        picked = due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
        claim = claim.where(Message.id == picked.c.id, Message.state == "queued")
    else:
        claim = claim.where(Message.id.in_(due.scalar_subquery()), Message.state == "queued")
    claimed_ids = list(session.scalars(claim))
    if not claimed_ids:
        return []
    rows = session.execute(
        select(
            Message.id,
            Message.account_id,
            Message.to_phone,
            Message.attempts,
            Message.text,
            Template.name,
            Template.language,
            Campaign.variables,
            Profile.properties,
            CampaignVariant.variables,
            Message.context,
            Message.campaign_id,
            Message.conversation_id,
            Message.params,
            Message.media,
        )
        .join(Profile, Profile.id == Message.profile_id)
        .outerjoin(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(CampaignVariant, CampaignVariant.id == Message.variant_id)
        .outerjoin(
            Template,
            Template.id
            == func.coalesce(Message.template_id, CampaignVariant.template_id, Campaign.template_id),
        )
        .where(Message.id.in_(claimed_ids))
        .order_by(Message.id)
    )
    return [
        Claimed(
            id=r[0],
            account_id=r[1],
            to=r[2] or "",
            attempts=r[3],
            text=r[4],
            template_name=r[5],
            language=r[6] or "en",
            variables=tuple((r[9] if r[9] is not None else r[7]) or ()),
            profile=dict(r[8] or {}),
            event=dict(r[10]) if r[10] is not None else None,
            campaign_id=r[11],
            token=token,
            fixed_params=list(r[13] or []) if r[12] is not None else None,
            media=r[14],
        )
        for r in rows
    ]


def release(session: Session, rows: Sequence[tuple[int, str]], now: datetime) -> int:
    """Give back claimed rows that were never dispatched (a paused campaign, a worker shutting down):
    queued again, their attempt not counted."""
    table = cast_table(Message.__table__)
    return _requeue(session, rows, table.c.dispatched_at.is_(None))


def renew_leases(session: Session, tokens: Sequence[str], now: datetime, lease: timedelta) -> int:
    """The worker holding these claims is alive: push their leases forward (one UPDATE)."""
    if not tokens:
        return 0
    held = select(Message.id).where(Message.claimed_by.in_(list(tokens)), Message.state == "sending")
    if is_postgres(session):
        # Never wait for a row that this worker's other transactions are writing (recording a result,
        # marking a dispatch): taking the same rows in another order deadlocked them, and PostgreSQL
        # took a second to notice. A row skipped now is renewed next time (leases outlive many renewals).
        held = held.with_for_update(skip_locked=True)
    result = session.execute(
        update(Message)
        .where(Message.id.in_(held.scalar_subquery()), Message.state == "sending")
        .values(lease_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def give_back(session: Session, rows: Sequence[tuple[int, str]]) -> int:
    """Give back rows (id, claim token) this worker claimed — marked dispatched or not — whose provider
    call never started (their campaign was stopped or paused meanwhile): queued again, the dispatch mark
    cleared and the attempt not counted. Only a row still held by its token is touched, and the caller
    guarantees that no provider call was made for it."""
    return _requeue(session, rows)


def _requeue(session: Session, rows: Sequence[tuple[int, str]], *also: ColumnElement[bool]) -> int:
    """Rows (id, claim token) still held by their token back to ``queued``, unclaimed and undispatched,
    their attempt not counted (one executemany); ``also``: further conditions a row must meet."""
    if not rows:
        return 0
    table = cast_table(Message.__table__)
    result = session.execute(
        update(table)
        .where(
            table.c.id == bindparam("_id"),
            table.c.state == "sending",
            table.c.claimed_by == bindparam("_token"),
            *also,
        )
        .values(
            state="queued",
            attempts=table.c.attempts - 1,
            claimed_by=None,
            lease_until=None,
            dispatched_at=None,
        ),
        [{"_id": i, "_token": token} for i, token in rows],
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def in_hand(session: Session, campaign_id: int, now: datetime) -> int:
    """Rows of this campaign that a live worker holds (claimed, marked dispatched, or being sent: state
    ``sending`` under a lease not yet run out). A stopped campaign's rows leave this set when they are given
    back unsent or their provider call is recorded; once none is left, nothing more of it can be sent
    (rows whose lease ran out belong to a worker that is gone)."""
    return int(
        session.scalar(
            select(func.count()).where(
                Message.campaign_id == campaign_id,
                Message.state == "sending",
                Message.lease_until >= now,
            )
        )
        or 0
    )
