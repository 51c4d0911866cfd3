"""The ledger's operations: the only code that writes ``messages``.

Every hot path is set-based: planning is one ``INSERT … SELECT``, a claim is one
``UPDATE … RETURNING``, results are recorded with one executemany per outcome.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Row,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.campaigns.rules import Rules, account_rules, zone
from tidings.db import cast_table, is_postgres, utcnow
from tidings.delivery.models import Message, PendingStatus
from tidings.metrics import OPT_OUT_SETTLED
from tidings.personalization.service import PersonalizationError
from tidings.profiles.models import Profile
from tidings.providers.base import Outcome, SendResult, Status, StatusUpdate
from tidings.templates.models import Template

# Where each status may come from: states only move forward, ``failed`` is final.
# ``queued`` is a source too: a row queued again after an unknown outcome (or a retry-later answer) whose
# status then proves the provider took it is Sent, and is not sent again.
_FORWARD: dict[Status, tuple[tuple[str, ...], str]] = {
    Status.SENT: (("queued", "sending"), "sent"),
    Status.DELIVERED: (("queued", "sending", "sent"), "delivered"),
    Status.READ: (("queued", "sending", "sent", "delivered"), "read"),
    Status.FAILED: (("queued", "sending", "sent"), "failed"),
}
SENT_STATES = ("sent", "delivered", "read")
REPLY_ATTRIBUTION = timedelta(hours=72)  # a reply without context counts for the last message this long
TEST_REF_PREFIX = "test-"  # client_ref of ``tidings send-test`` messages: not in the ledger, never pending


# --- dispatching --------------------------------------------------------------------------------------
#
# A row's way through a worker, each step one set-based statement (see docs/architecture.md):
#   queued ──claim_batch──▶ sending (claimed_by = the claim's token, lease_until)
#          ──mark_dispatched──▶ sending + dispatched_at, committed just before the provider calls; or
#                               skipped (consent, DND drop, caps, tier) | queued (DND delay, pair rate)
#          ──record_attempts──▶ sent | queued (retry later) | failed | skipped
# and when a worker dies: a claim never dispatched is requeued at once (no provider call happened);
# a dispatched one waits ``reconcile`` for its status webhook (found by our ledger id, echoed by the
# provider), then — once a later message of its sender got a status, proof that the webhook path works —
# is requeued, or failed as ``outcome_unknown`` (``TIDINGS_UNKNOWN_OUTCOME=fail``, no proof needed).
# An opt-out settles the user's unsent rows (``skip_not_opted_in``) in its own transaction.

# Retry-later answers given after the request may have reached the provider (a read time-out, a
# connection lost mid-way, a provider that raised): the outcome is unknown, so they are reconciled from
# the status webhooks like a crash, never resent blindly.
UNCERTAIN_CODES = frozenset({"timeout", "network_error", "connection_error", "exception"})
LIVE_STATES = ("sending", *SENT_STATES)
MESSAGING_WINDOW = timedelta(hours=24)


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
        )
        .join(Profile, Profile.id == Message.profile_id)
        .outerjoin(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(CampaignVariant, CampaignVariant.id == Message.variant_id)
        .outerjoin(Template, Template.id == func.coalesce(CampaignVariant.template_id, Campaign.template_id))
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
        )
        for r in rows
    ]


def _lock_sender(session: Session, account_id: str) -> None:
    """Serialize dispatch marks of one sender across processes (PostgreSQL: a transaction-scoped
    advisory lock; SQLite: every write transaction is already exclusive)."""
    if is_postgres(session):
        key = int.from_bytes(hashlib.sha256(f"tidings:dispatch:{account_id}".encode()).digest()[:8], "big")
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key - (1 << 63)})


@dataclass(frozen=True)
class Dispatch:
    """What ``mark_dispatched`` decided for a chunk of one sender's claimed rows."""

    go: list[int]  # marked dispatched: send them now
    waiting: dict[int, datetime]  # the pair rate holds them back until then (requeued)
    skipped: list[int]  # over the messaging-limit tier (skipped with the reason)
    lost: list[int]  # no longer ours (the claim expired and was taken over): never send
    released: list[int] = field(default_factory=list)  # their campaign is no longer running: queued again
    refused: dict[int, str] = field(default_factory=dict)  # skipped at send time: id → reason (consent, …)
    delayed: dict[int, datetime] = field(default_factory=dict)  # inside DND: requeued for its end


# Why a row may not leave at its dispatch mark (besides the pair rate and the tier), with the detail kept.
SEND_TIME_DETAILS = {
    "not_opted_in": "the user is not opted in to WhatsApp (MSG-whatsapp) at the moment of sending",
    "dnd": "the moment of sending fell inside the account's Do-Not-Disturb hours",
    "global_frequency_cap": "the account's frequency cap for this user was reached by messages sent since",
    "campaign_frequency_cap": "the campaign's frequency rule for this user was met by a message sent since",
}


def _opted_in(table: Any) -> ColumnElement[bool]:
    """The row's profile is opted in to WhatsApp now (``MSG-whatsapp``, mirrored in the column)."""
    return exists().where(Profile.id == table.c.profile_id, Profile.whatsapp_opt_in.is_(True))


@dataclass(frozen=True)
class _Facts:
    """What the send-time rules need to know about one claimed row."""

    profile_id: int
    campaign_id: int | None
    opted_in: bool
    user_zone: str | None
    respect_rules: bool
    frequency: dict[str, Any] | None


def _send_time_rules(
    session: Session,
    account_id: str,
    rows: Sequence[tuple[int, str, str]],
    now: datetime,
    rules: Rules | None,
    account_tz: ZoneInfo | None,
) -> tuple[dict[int, str], dict[int, datetime]]:
    """Consent, DND hours and frequency caps of a chunk, decided now (a few set-based reads): the rows
    refused (id → reason) and the rows DND delays (id → when DND ends). Caps count what was actually
    dispatched in their window (planning counted what was planned), so two campaigns planned before
    either sent still give a user no more than the cap."""
    ids = [r[0] for r in rows]
    with_account = rules is None or account_tz is None  # the account's rules, as they are now
    query = (
        select(
            Message.id,
            Message.profile_id,
            Message.campaign_id,
            Profile.whatsapp_opt_in.label("opted_in"),
            Profile.properties["Tz"].as_string().label("tz"),
            func.coalesce(Campaign.respect_rules, False).label("respect"),
            Campaign.frequency.label("freq"),
            *((Account.settings, Account.timezone) if with_account else ()),
        )
        .join(Profile, Profile.id == Message.profile_id)
        .outerjoin(Campaign, Campaign.id == Message.campaign_id)
        .where(Message.id.in_(ids))
    )
    if with_account:
        query = query.join(Account, Account.id == Message.account_id)
    read = session.execute(query).all()
    facts = {
        r.id: _Facts(r.profile_id, r.campaign_id, bool(r.opted_in), r.tz, bool(r.respect), r.freq)
        for r in read
    }
    if with_account and read:
        rules = rules or account_rules(read[0].settings)
        account_tz = account_tz or zone(read[0].timezone)
    rules = rules or Rules()
    account_tz = account_tz or zone(None)
    refused: dict[int, str] = {}
    delayed: dict[int, datetime] = {}
    ruled: list[int] = []  # rows the account's rules apply to (a campaign that respects them)
    for row_id in ids:
        fact = facts.get(row_id)
        if fact is None:
            continue  # deleted meanwhile: the guarded UPDATE finds nothing
        if not fact.opted_in:
            refused[row_id] = "not_opted_in"
            continue
        if fact.respect_rules and rules.dnd is not None:
            end = rules.dnd.window_end(now, rules.dnd.zone_for(account_tz, fact.user_zone))
            if end is not None:
                if rules.dnd.action == "drop":
                    refused[row_id] = "dnd"
                else:
                    delayed[row_id] = end
                continue
        ruled.append(row_id)
    capped = rules.cap_max is not None and rules.cap_hours is not None
    by_rule = [i for i in ruled if facts[i].respect_rules] if capped else []
    by_campaign = [i for i in ruled if (facts[i].frequency or {}).get("rule") in ("once", "min_gap")]
    if not by_rule and not by_campaign:
        return refused, delayed
    # Caps count what the person (the phone number) got from this account, as planning does.
    live = ("sending", *SENT_STATES)
    phone_of = {r[0]: r[2] for r in rows}
    sent_to: dict[str, int] = {}
    if by_rule:
        assert rules.cap_max is not None and rules.cap_hours is not None
        sent_to = {
            phone: n
            for phone, n in session.execute(
                select(Message.to_phone, func.count())
                .where(
                    Message.account_id == account_id,
                    Message.to_phone.in_(sorted({phone_of[i] for i in by_rule})),
                    Message.dispatched_at >= now - timedelta(hours=rules.cap_hours),
                    Message.state.in_(live),
                    Message.id.not_in(ids),
                )
                .group_by(Message.to_phone)
            )
            if phone is not None
        }
    last_sent: dict[tuple[int, str], datetime] = {}
    if by_campaign:
        found = session.execute(
            select(Message.campaign_id, Message.to_phone, func.max(Message.dispatched_at))
            .where(
                Message.account_id == account_id,
                Message.to_phone.in_(sorted({phone_of[i] for i in by_campaign})),
                Message.campaign_id.in_(sorted({facts[i].campaign_id or 0 for i in by_campaign})),
                Message.dispatched_at.is_not(None),
                Message.state.in_(live),
                Message.id.not_in(ids),
            )
            .group_by(Message.campaign_id, Message.to_phone)
        )
        last_sent = {(c, p): at for c, p, at in found if c is not None and p is not None and at is not None}
    for row_id in ruled:  # in chunk order: a row let through counts against the next one to its number
        fact, phone = facts[row_id], phone_of[row_id]
        frequency = fact.frequency or {}
        key = (fact.campaign_id or 0, phone)
        if frequency.get("rule") in ("once", "min_gap") and key in last_sent:
            gap = timedelta(hours=frequency.get("hours") or 0)
            if frequency["rule"] == "once" or last_sent[key] >= now - gap:
                refused[row_id] = "campaign_frequency_cap"
                continue
        if capped and fact.respect_rules:
            assert rules.cap_max is not None
            if sent_to.get(phone, 0) >= rules.cap_max:
                refused[row_id] = "global_frequency_cap"
                continue
            sent_to[phone] = sent_to.get(phone, 0) + 1
        last_sent[key] = now
    return refused, delayed


def mark_dispatched(
    session: Session,
    account_id: str,
    rows: Sequence[tuple[int, str, str]],
    now: datetime,
    *,
    lease: timedelta,
    pair_interval: float = 0.0,
    messaging_limit: int | None = None,
    rules: Rules | None = None,
    account_tz: ZoneInfo | None = None,
) -> Dispatch:
    """Mark ``rows`` (id, claim token, phone) of one sender as dispatched, in one committed UPDATE, just
    before their provider calls. Whether each message may leave now is decided here, in this order:

    * consent: a user not opted in to WhatsApp at this moment is skipped as ``not_opted_in`` (checked
      again inside the guarded UPDATE itself, so an opt-out committed before it always wins);
    * DND hours (campaigns that respect the account's rules; ``rules``/``account_tz``, read from the
      account when not given): inside DND in the account's or the user's zone, the row is requeued for
      the end of DND (its attempt not counted) or skipped as ``dnd``, per the rule;
    * frequency caps: the account's cap and the campaign's own rule, counted over the messages actually
      dispatched in their window: over it, skipped as ``global_frequency_cap`` / ``campaign_frequency_cap``;
    * the pair rate: a user messaged by this sender less than ``pair_interval`` seconds ago (or twice
      in this chunk) waits: the row is requeued for when it may go, its attempt not counted;
    * the messaging-limit tier: a template to a user not reached in the last 24 hours, once
      ``messaging_limit`` unique users were, is skipped with the reason ``messaging_limit``;
    * the campaign still running (else the row is queued again, unsent).

    Retries and requeued rows come through here again, so they obey the same rules. Only rows still
    claimed by their token and not yet dispatched are marked, so a worker whose claim was taken over (or
    whose row an opt-out settled) never sends. Runs under a per-sender lock, so the checks hold across
    workers."""
    if not rows:
        return Dispatch([], {}, [], [], [])
    _lock_sender(session, account_id)
    ids = [r[0] for r in rows]
    refused, delayed = _send_time_rules(session, account_id, rows, now, rules, account_tz)
    waiting: dict[int, datetime] = {}
    skipped: list[int] = []
    candidates = [r for r in rows if r[0] not in refused and r[0] not in delayed]
    if pair_interval > 0:
        gap = timedelta(seconds=pair_interval)
        phones = sorted({r[2] for r in candidates if r[2]})
        last: dict[str, datetime] = {}
        if phones:
            recent = session.execute(
                select(Message.to_phone, func.max(Message.dispatched_at))
                .where(
                    Message.account_id == account_id,
                    Message.to_phone.in_(phones),
                    Message.dispatched_at > now - gap,
                    Message.id.not_in(ids),
                )
                .group_by(Message.to_phone)
            )
            last = {phone: at for phone, at in recent if phone is not None and at is not None}
        kept = []
        for row in candidates:
            phone = row[2]
            if phone in last:
                waiting[row[0]] = last[phone] + gap
                continue
            kept.append(row)
            if phone:
                last[phone] = now
        candidates = kept
    if messaging_limit is not None and candidates:
        templates = set(
            session.scalars(
                select(Message.id).where(Message.id.in_([r[0] for r in candidates]), Message.text.is_(None))
            )
        )
        reach = and_(
            Message.account_id == account_id,
            Message.dispatched_at >= now - MESSAGING_WINDOW,
            Message.state.in_(LIVE_STATES),
            Message.text.is_(None),
        )
        reached_count = int(
            session.scalar(select(func.count(func.distinct(Message.to_phone))).where(reach)) or 0
        )
        phones = sorted({r[2] for r in candidates if r[0] in templates})
        reached = (
            set(
                session.scalars(
                    select(Message.to_phone).where(reach, Message.to_phone.in_(phones)).distinct()
                )
            )
            if phones
            else set()
        )
        room = messaging_limit - reached_count
        kept = []
        for row in candidates:
            if row[0] in templates and row[2] not in reached:
                if room <= 0:
                    skipped.append(row[0])
                    continue
                room -= 1
                reached.add(row[2])
            kept.append(row)
        candidates = kept
    table = cast_table(Message.__table__)
    running = select(Campaign.id).where(Campaign.state == "running")
    go: list[int] = []
    by_token: dict[str, list[int]] = {}
    for row in candidates:
        by_token.setdefault(row[1], []).append(row[0])
    for token, token_ids in by_token.items():
        go.extend(
            session.scalars(
                update(table)
                .where(
                    table.c.id.in_(token_ids),
                    table.c.state == "sending",
                    table.c.claimed_by == token,
                    table.c.dispatched_at.is_(None),
                    or_(table.c.campaign_id.is_(None), table.c.campaign_id.in_(running)),
                    _opted_in(table),
                )
                .values(dispatched_at=now, lease_until=now + lease)
                .returning(table.c.id)
            )
        )
    owned = {r[0]: r[1] for r in rows}
    released: list[int] = []
    if len(go) < len(candidates):
        # A campaign paused or stopped since the claim: its rows go back to the queue, unsent.
        marked = set(go)
        halted = set(
            session.scalars(
                select(table.c.id).where(
                    table.c.id.in_([r[0] for r in candidates if r[0] not in marked]),
                    table.c.campaign_id.in_(select(Campaign.id).where(Campaign.state != "running")),
                )
            )
        )
        released = [r[0] for r in candidates if r[0] in halted]
        release(session, [(i, owned[i]) for i in released], now)
        candidates = [r for r in candidates if r[0] not in halted]
        # An opt-out committed since the rules were read: the guarded UPDATE left the row; settle it.
        withdrawn = set(
            session.scalars(
                select(table.c.id).where(
                    table.c.id.in_([r[0] for r in candidates if r[0] not in marked]), ~_opted_in(table)
                )
            )
        )
        refused.update((r[0], "not_opted_in") for r in candidates if r[0] in withdrawn)
        candidates = [r for r in candidates if r[0] not in withdrawn]
    # Still this worker's claim, and never handed to the provider.
    undispatched = and_(
        table.c.id == bindparam("_id"),
        table.c.state == "sending",
        table.c.claimed_by == bindparam("_token"),
        table.c.dispatched_at.is_(None),
    )
    if waiting or delayed:
        session.execute(
            update(table)
            .where(undispatched)
            .values(
                state="queued",
                attempts=table.c.attempts - 1,
                next_attempt_at=bindparam("_next", type_=table.c.next_attempt_at.type),
                claimed_by=None,
                lease_until=None,
            ),
            [{"_id": i, "_token": owned[i], "_next": at} for i, at in (waiting | delayed).items()],
        )
    if refused:
        session.execute(
            update(table)
            .where(undispatched)
            .values(
                state="skipped",
                reason=bindparam("_reason"),
                error_detail=bindparam("_detail"),
                claimed_by=None,
                lease_until=None,
            ),
            [
                {"_id": i, "_token": owned[i], "_reason": why, "_detail": SEND_TIME_DETAILS[why]}
                for i, why in refused.items()
            ],
        )
    if skipped:
        session.execute(
            update(table)
            .where(undispatched)
            .values(
                state="skipped",
                reason="messaging_limit",
                error_detail=f"the sender's messaging limit of {messaging_limit} users a day is reached",
                claimed_by=None,
                lease_until=None,
            ),
            [{"_id": i, "_token": owned[i]} for i in skipped],
        )
    go_set = set(go)
    lost = [r[0] for r in candidates if r[0] not in go_set]
    return Dispatch([i for i in ids if i in go_set], waiting, skipped, lost, released, refused, delayed)


def release(session: Session, rows: Sequence[tuple[int, str]], now: datetime) -> int:
    """Give back claimed rows that were never dispatched (a paused campaign, a worker shutting down):
    queued again, their attempt not counted."""
    if not rows:
        return 0
    table = cast_table(Message.__table__)
    result = session.execute(
        update(table)
        .where(
            table.c.id == bindparam("_id"),
            table.c.state == "sending",
            table.c.claimed_by == bindparam("_token"),
            table.c.dispatched_at.is_(None),
        )
        .values(state="queued", attempts=table.c.attempts - 1, claimed_by=None, lease_until=None),
        [{"_id": i, "_token": token} for i, token in rows],
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def skip_not_opted_in(session: Session, profile_ids: Iterable[int]) -> int:
    """These users opted out: settle their unsent rows — queued (due, waiting for the pair rate, delayed
    by DND, in retry backoff) and claimed but not yet dispatched — as skipped ``not_opted_in``, set-based,
    in the caller's transaction (the opt-out's). A worker holding such a claim loses it at its dispatch
    mark, whose guarded UPDATE no longer matches. Returns how many rows were settled.

    On PostgreSQL a row being written by a concurrent claim or mark is skipped (``SKIP LOCKED``) rather
    than waited for — two such writers taking rows in different orders could deadlock — and the mark
    settles it itself: it checks consent against the committed profile."""
    table = cast_table(Message.__table__)
    unsent = or_(table.c.state == "queued", and_(table.c.state == "sending", table.c.dispatched_at.is_(None)))
    wanted = sorted(set(profile_ids))
    settled = 0
    for start in range(0, len(wanted), 5000):
        held = select(table.c.id).where(table.c.profile_id.in_(wanted[start : start + 5000]), unsent)
        if is_postgres(session):
            held = held.with_for_update(skip_locked=True)
        result = session.execute(
            update(table)
            .where(table.c.id.in_(held.scalar_subquery()), unsent)
            .values(
                state="skipped",
                reason="not_opted_in",
                error_detail="the user opted out of WhatsApp before it was sent",
                claimed_by=None,
                lease_until=None,
            )
        )
        settled += int(result.rowcount or 0)  # type: ignore[attr-defined]
    OPT_OUT_SETTLED.inc(settled)
    return settled


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


@dataclass(frozen=True)
class Attempt:
    """What happened to one claimed row: a provider answer, or a personalization refusal."""

    claimed: Claimed
    provider: str
    result: SendResult | None = None
    refusal: PersonalizationError | None = None
    params: list[str] | None = None

    @property
    def kind(self) -> str:
        """accepted, retry, failed, uncertain (reconciled later) or skipped (personalization)."""
        if self.refusal is not None or self.result is None:
            return "skipped"
        if self.result.outcome is Outcome.RETRY and self.result.error_code in UNCERTAIN_CODES:
            return "uncertain"
        return self.result.outcome.value


def backoff(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with full jitter over the upper half, capped, and never sooner than the
    provider's ``Retry-After`` (which may exceed the cap: the provider knows best)."""
    delay = min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


_backoff = backoff  # the former name


def record_attempts(
    session: Session,
    attempts: Sequence[Attempt],
    now: datetime,
    *,
    max_attempts: int,
    retry_base: float,
    retry_cap: float,
) -> None:
    """Write the outcomes of a batch: one executemany per kind of outcome, guarded by ``state = 'sending'``
    (a webhook that got there first keeps its later state). A retry-later answer is queued again after
    its backoff until ``max_attempts``, then failed with the reason; an uncertain one (the request may
    have reached the provider) stays ``sending`` for ``expire_leases`` to reconcile."""
    table = cast_table(Message.__table__)
    sent, retry, failed, skipped, uncertain = [], [], [], [], []
    for att in attempts:
        row: dict[str, Any] = {"_id": att.claimed.id, "_provider": att.provider}
        if att.refusal is not None:
            skipped.append({**row, "_reason": att.refusal.reason, "_detail": att.refusal.detail[:500]})
            continue
        result = att.result
        assert result is not None
        if result.outcome is Outcome.ACCEPTED:
            sent.append({**row, "_pid": result.provider_message_id, "_params": att.params})
            continue
        reason = f"{att.provider}:{result.error_code or 'error'}"[:64]
        detail = (result.error_detail or "")[:500]
        if att.kind == "uncertain":
            uncertain.append({**row, "_detail": f"outcome unknown, reconciling: {detail}"[:500]})
        elif result.outcome is Outcome.RETRY and att.claimed.attempts < max_attempts:
            delay = backoff(att.claimed.attempts, result.retry_after, retry_base, retry_cap)
            retry.append({**row, "_next": now + timedelta(seconds=delay), "_detail": detail})
        else:
            if result.outcome is Outcome.RETRY:
                detail = f"gave up after {att.claimed.attempts} attempts: {detail}"[:500]
            failed.append({**row, "_reason": reason, "_detail": detail})
    guard = and_(table.c.id == bindparam("_id"), table.c.state == "sending")
    if sent:
        session.execute(
            update(table)
            .where(table.c.id == bindparam("_id"))
            .values(
                state=case((table.c.state == "sending", "sent"), else_=table.c.state),
                provider=bindparam("_provider"),
                provider_message_id=func.coalesce(table.c.provider_message_id, bindparam("_pid")),
                params=bindparam("_params", type_=table.c.params.type),
                sent_at=func.coalesce(table.c.sent_at, now),
                lease_until=None,
                claimed_by=None,
            ),
            sent,
        )
    if retry:
        session.execute(
            update(table)
            .where(guard)
            .values(
                state="queued",
                provider=bindparam("_provider"),
                next_attempt_at=bindparam("_next", type_=table.c.next_attempt_at.type),
                error_detail=bindparam("_detail"),
                lease_until=None,
                claimed_by=None,
                dispatched_at=None,
            ),
            retry,
        )
    if uncertain:
        session.execute(
            update(table)
            .where(guard)
            .values(
                provider=bindparam("_provider"),
                error_detail=bindparam("_detail"),
                lease_until=None,
                claimed_by=None,
            ),
            uncertain,
        )
    if failed:
        session.execute(
            update(table)
            .where(guard)
            .values(
                state="failed",
                provider=bindparam("_provider"),
                reason=bindparam("_reason"),
                error_detail=bindparam("_detail"),
                failed_at=now,
                lease_until=None,
                claimed_by=None,
            ),
            failed,
        )
    if skipped:
        session.execute(
            update(table)
            .where(guard)
            .values(
                state="skipped",
                reason=bindparam("_reason"),
                error_detail=bindparam("_detail"),
                lease_until=None,
                claimed_by=None,
            ),
            skipped,
        )
    if sent:
        _apply_pending(session, [(a.claimed.account_id, a.provider, a.result) for a in attempts if a.result])


def _apply_pending(session: Session, sent: Iterable[tuple[str, str, SendResult]]) -> None:
    """Statuses that arrived before the send was recorded are applied now."""
    ids = [
        r.provider_message_id for _, _, r in sent if r.outcome is Outcome.ACCEPTED and r.provider_message_id
    ]
    if not ids:
        return
    pending = list(
        session.scalars(
            select(PendingStatus).where(PendingStatus.provider_message_id.in_(ids)).order_by(PendingStatus.id)
        )
    )
    outcomes = apply_statuses(
        session,
        [(item.account_id, item.provider, status_from_json(item.status)) for item in pending],
        keep_unmatched=False,
    )
    for item, outcome in zip(pending, outcomes, strict=True):
        if outcome != "unmatched":
            session.delete(item)


def reconcile(
    session: Session,
    now: datetime,
    window: timedelta,
    *,
    unknown_outcome: str = "requeue",
    max_attempts: int = 5,
) -> dict[str, int]:
    """Recover rows a worker lost (it died, or handed over an uncertain answer); safe in any number of
    processes at once (guarded UPDATEs):

    * claimed, lease expired, never dispatched: no provider call happened, so it is queued again at
      once, the attempt not counted;
    * dispatched, no answer recorded, no lease, and no status webhook within ``window`` of the dispatch:
      a status would have moved it (providers echo our ledger id) — if the webhook path works. So with
      ``unknown_outcome="requeue"`` it is queued again (until ``max_attempts``, then failed as
      ``outcome_unknown``) only with that proof: a message of the same sender dispatched after it has
      received a status since (``delivered_at``, which only a webhook sets). Without proof — our webhook
      endpoint may have been unreachable, and the message delivered — it keeps waiting (counted by
      ``waiting_for_proof``), never sent twice blindly. ``"fail"`` fails it as ``outcome_unknown`` at
      once (DESIGN invariant 3: the account prefers a lost message to a possible duplicate)."""
    table = cast_table(Message.__table__)
    never_sent = session.execute(
        update(table)
        .where(table.c.state == "sending", table.c.dispatched_at.is_(None), table.c.lease_until < now)
        .values(
            state="queued",
            attempts=table.c.attempts - 1,
            claimed_by=None,
            lease_until=None,
            next_attempt_at=now,
        )
    )
    stale = _stale(table, now, window)
    unknown = {
        "state": "failed",
        "reason": "outcome_unknown",
        "error_detail": "the provider call's outcome is unknown and no status arrived",
        "failed_at": now,
        "claimed_by": None,
        "lease_until": None,
    }
    failed = 0
    requeued = 0
    if unknown_outcome == "fail":
        failed = int(session.execute(update(table).where(stale).values(**unknown)).rowcount or 0)  # type: ignore[attr-defined]
    else:
        oldest = session.execute(
            select(table.c.account_id, func.min(table.c.dispatched_at))
            .where(stale)
            .group_by(table.c.account_id)
        ).all()
        for account_id, since in oldest:
            # The newest message of this sender, dispatched after its oldest stale one, that a status
            # reached: every stale row dispatched before it has its proof (read from the newest end of
            # the (account, dispatched_at) index, where a working webhook path answers first).
            horizon = session.scalar(
                select(table.c.dispatched_at)
                .where(
                    table.c.account_id == account_id,
                    table.c.dispatched_at > since,
                    table.c.delivered_at.is_not(None),
                )
                .order_by(table.c.dispatched_at.desc())
                .limit(1)
            )
            if horizon is None:
                continue
            proven = and_(stale, table.c.account_id == account_id, table.c.dispatched_at < horizon)
            failed += int(
                session.execute(
                    update(table).where(proven, table.c.attempts >= max_attempts).values(**unknown)
                ).rowcount  # type: ignore[attr-defined]
                or 0
            )
            requeued += int(
                session.execute(
                    update(table)
                    .where(proven)
                    .values(
                        state="queued",
                        dispatched_at=None,
                        claimed_by=None,
                        lease_until=None,
                        next_attempt_at=now,
                        error_detail="no answer and no status webhook, while later messages got theirs: "
                        "sent again",
                    )
                ).rowcount  # type: ignore[attr-defined]
                or 0
            )
    return {
        "requeued_undispatched": int(never_sent.rowcount or 0),  # type: ignore[attr-defined]
        "requeued_unknown": requeued,
        "failed_unknown": failed,
    }


def _stale(table: Any, now: datetime, window: timedelta) -> ColumnElement[bool]:
    """Dispatched, no answer recorded, no live lease, and no status within ``window`` of the dispatch."""
    return and_(
        table.c.state == "sending",
        table.c.dispatched_at < now - window,
        or_(table.c.lease_until.is_(None), table.c.lease_until < now),
    )


def waiting_for_proof(
    session: Session, now: datetime, window: timedelta, *, campaign_id: int | None = None
) -> int:
    """Dispatched rows past the reconcile ``window`` with no status, which ``reconcile`` keeps because
    no later message of their sender got a status yet (after a reconcile, every such row is one)."""
    table = cast_table(Message.__table__)
    where = [_stale(table, now, window)]
    if campaign_id is not None:
        where.append(table.c.campaign_id == campaign_id)
    return int(session.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def expire_leases(
    session: Session,
    now: datetime,
    grace: timedelta,
    *,
    unknown_outcome: str = "requeue",
    max_attempts: int = 5,
) -> int:
    """Called by every scheduler tick: ``reconcile`` with a window of ``grace`` and the configured
    ``unknown_outcome`` and ``max_attempts`` (the worker passes its settings; it runs its own
    ``reconcile`` first, so this fallback only catches what a tick elsewhere left)."""
    return sum(
        reconcile(session, now, grace, unknown_outcome=unknown_outcome, max_attempts=max_attempts).values()
    )


def pause_campaign(session: Session, campaign_id: int, note: str) -> bool:
    """Pause a running campaign (its queued rows are no longer claimed); one guarded UPDATE."""
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.state == "running")
        .values(state="paused", note=note[:300])
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def resume_campaign(session: Session, account_id: str, campaign_id: int) -> bool:
    """paused → running, atomically; False when the campaign is not paused (or not the account's)."""
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.account_id == account_id, Campaign.state == "paused")
        .values(state="running", note=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def campaign_progress(
    session: Session,
    campaign_id: int,
    now: datetime,
    window: float = 30.0,
    *,
    reconcile_window: timedelta = timedelta(seconds=300),
) -> dict[str, Any]:
    """Planned, sent, remaining, the current sending rate and the estimated time left; and how many
    dispatched rows wait for proof before they may be sent again (``reconcile``; ``reconcile_window``
    is ``TIDINGS_RECONCILE_SECONDS``)."""
    counts = dict(
        session.execute(
            select(Message.state, func.count())
            .where(Message.campaign_id == campaign_id)
            .group_by(Message.state)
        ).all()
    )
    recent = int(
        session.scalar(
            select(func.count()).where(
                Message.campaign_id == campaign_id,
                Message.state.in_((*SENT_STATES, "failed")),
                Message.dispatched_at >= now - timedelta(seconds=window),
            )
        )
        or 0
    )
    sent = sum(counts.get(s, 0) for s in SENT_STATES)
    remaining = counts.get("queued", 0) + counts.get("sending", 0)
    rate = recent / window
    return {
        "planned": sum(counts.values()) - counts.get("control", 0),
        "sent": sent,
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "control": counts.get("control", 0),
        "remaining": remaining,
        "rate": round(rate, 2),
        "eta_seconds": round(remaining / rate, 1) if rate > 0 else None,
        "waiting_for_proof": waiting_for_proof(session, now, reconcile_window, campaign_id=campaign_id),
    }


# --- webhooks -----------------------------------------------------------------------------------------


def status_to_json(update_: StatusUpdate) -> dict[str, Any]:
    return {
        "status": update_.status.value,
        "timestamp": update_.timestamp.isoformat(),
        "provider_message_id": update_.provider_message_id,
        "client_ref": update_.client_ref,
        "error_code": update_.error_code,
        "error_detail": update_.error_detail,
    }


def status_from_json(data: dict[str, Any]) -> StatusUpdate:
    return StatusUpdate(
        status=Status(data["status"]),
        timestamp=datetime.fromisoformat(data["timestamp"]),
        provider_message_id=data.get("provider_message_id"),
        client_ref=data.get("client_ref"),
        error_code=data.get("error_code"),
        error_detail=data.get("error_detail"),
    )


def _status_update(status: Status) -> Any:
    """The forward-only UPDATE of one row (by id) for one status, built once: the webhook hot path only
    binds values, many rows in one executemany."""
    table = cast_table(Message.__table__)
    sources, target = _FORWARD[status]
    ts = bindparam("_ts", type_=table.c.sent_at.type)
    values: dict[str, Any] = {
        "state": target,
        "provider_message_id": func.coalesce(table.c.provider_message_id, bindparam("_pid", type_=String())),
        "sent_at": func.coalesce(table.c.sent_at, ts),
        "lease_until": None,
    }
    if status in (Status.DELIVERED, Status.READ):
        values["delivered_at"] = func.coalesce(table.c.delivered_at, ts)
    if status is Status.READ:
        values["read_at"] = func.coalesce(table.c.read_at, ts)
    if status is Status.FAILED:
        values |= {"reason": bindparam("_reason"), "error_detail": bindparam("_detail"), "failed_at": ts}
    return (
        update(table)
        # The states as literals: an expanding IN parameter cannot go into an executemany.
        .where(table.c.id == bindparam("_id"), table.c.state.in_([literal_column(f"'{s}'") for s in sources]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


_STATUS_UPDATES = {status: _status_update(status) for status in Status}
_STATUS_ORDER = {status: rank for rank, status in enumerate(Status)}


def _ledger_id(update_: StatusUpdate) -> int | None:
    """Our ledger id, when the provider echoes it (``client_ref``, ``biz_opaque_callback_data``)."""
    ref = update_.client_ref
    # ASCII digits only ("²".isdigit() is true, int("²") is not), and no larger than a row id can be:
    # anything else is not one of ours, and the status is looked up by the provider's message id.
    if not ref or not ref.isascii() or not ref.isdigit() or len(ref) > 19:
        return None
    value = int(ref)
    return value if value <= 2**63 - 1 else None


def _fits(update_: StatusUpdate) -> bool:
    """Ids no longer than the ledger's columns: a status with a longer one names no message of ours (and
    could not be kept in ``pending_statuses``), so it is ignored."""
    return len(update_.provider_message_id or "") <= 128 and len(update_.client_ref or "") <= 100


def _rows_by(column: str) -> Any:
    """The lookup of ``_find_rows``, built once (Core, an expanding IN): the hot path only binds values."""
    table = cast_table(Message.__table__)
    columns = (table.c.id, table.c.account_id, table.c.state, table.c.provider_message_id)
    return select(*columns).where(table.c[column].in_(bindparam("_keys", expanding=True)))


_ROWS_BY_ID, _ROWS_BY_PID = _rows_by("id"), _rows_by("provider_message_id")


@dataclass
class _Rows:
    """The ledger rows a batch of statuses is about, as the batch moves them along."""

    state: dict[int, str]
    pid: dict[int, str | None]
    by_id: dict[tuple[str, int], int]  # (account, ledger id) → row
    by_pid: dict[tuple[str, str], int]  # (account, provider's message id) → row
    account: dict[int, str]

    def find(self, account_id: str, update_: StatusUpdate) -> int | None:
        ledger_id = _ledger_id(update_)
        if ledger_id is not None:
            return self.by_id.get((account_id, ledger_id))
        return self.by_pid.get((account_id, update_.provider_message_id or ""))

    def move(self, row_id: int, state: str, pid: str | None) -> None:
        """An applied status moves the row, and gives it the provider's id if it had none."""
        self.state[row_id] = state
        if pid and self.pid[row_id] is None:
            self.pid[row_id] = pid
            self.by_pid.setdefault((self.account[row_id], pid), row_id)


def _find_rows(session: Session, items: Sequence[tuple[str, str, StatusUpdate]]) -> _Rows:
    """The rows the statuses name, in two indexed lookups at most: by primary key when the provider echoes
    our id, else by its message id."""
    ids = {i for _, _, u in items if (i := _ledger_id(u)) is not None}
    pids = {u.provider_message_id for _, _, u in items if _ledger_id(u) is None and u.provider_message_id}
    found: list[Row[Any]] = []
    if ids:
        found += session.connection().execute(_ROWS_BY_ID, {"_keys": list(ids)}).all()
    if pids:
        found += session.connection().execute(_ROWS_BY_PID, {"_keys": list(pids)}).all()
    return _Rows(
        state={row.id: row.state for row in found},
        pid={row.id: row.provider_message_id for row in found},
        by_id={(row.account_id, row.id): row.id for row in found},
        by_pid={(row.account_id, row.provider_message_id): row.id for row in found},
        account={row.id: row.account_id for row in found},
    )


def apply_statuses(
    session: Session, items: Sequence[tuple[str, str, StatusUpdate]], *, keep_unmatched: bool = True
) -> list[str]:
    """Move messages forward, set-based: one lookup of the rows, then one executemany ``UPDATE`` per
    status. ``items`` are ``(account id, provider, status)``; returns, for each, ``applied``, ``ignored``
    (a repeat, an older state than the message has, or a test send) or ``unmatched`` (no such message yet:
    kept in ``pending_statuses`` to apply once the send is recorded).

    The outcome is that of applying the statuses one at a time in the order sent, delivered, read, failed
    (the end state does not depend on the order they came in: states only move forward), decided from
    the rows as read here. Each UPDATE still checks the state itself, so a row changed meanwhile by
    another transaction is never moved backwards (the answer's counts may then be off by that row)."""
    outcomes = ["ignored"] * len(items)
    wanted = [
        i
        for i, (_, _, u) in enumerate(items)
        if not (u.client_ref or "").startswith(TEST_REF_PREFIX)
        and (_ledger_id(u) is not None or u.provider_message_id)
        and _fits(u)
    ]
    rows = _find_rows(session, [items[i] for i in wanted])
    batches: dict[Status, list[dict[str, Any]]] = {}
    unmatched: list[dict[str, Any]] = []
    for i in sorted(wanted, key=lambda i: _STATUS_ORDER[items[i][2].status]):
        account_id, provider, update_ = items[i]
        row_id = rows.find(account_id, update_)
        if row_id is None:
            outcomes[i] = "unmatched"
            unmatched.append(
                {
                    "account_id": account_id,
                    "provider": provider,
                    "provider_message_id": update_.provider_message_id,
                    "client_ref": update_.client_ref,
                    "status": status_to_json(update_),
                    "received_at": utcnow(),
                }
            )
            continue
        sources, target = _FORWARD[update_.status]
        if rows.state[row_id] not in sources:
            continue
        rows.move(row_id, target, update_.provider_message_id)
        outcomes[i] = "applied"
        params: dict[str, Any] = {
            "_id": row_id,
            "_pid": update_.provider_message_id,
            "_ts": update_.timestamp,
        }
        if update_.status is Status.FAILED:
            params["_reason"] = f"{provider}:{update_.error_code or 'failed'}"[:64]
            params["_detail"] = (update_.error_detail or "")[:500]
        batches.setdefault(update_.status, []).append(params)
    for status in sorted(batches, key=_STATUS_ORDER.__getitem__):
        session.execute(_STATUS_UPDATES[status], batches[status])
    if unmatched and keep_unmatched:
        session.execute(insert(PendingStatus), unmatched)
    return outcomes


def apply_status(
    session: Session, account_id: str, provider: str, update_: StatusUpdate, *, keep_unmatched: bool = True
) -> str:
    """``apply_statuses`` for one status."""
    return apply_statuses(session, [(account_id, provider, update_)], keep_unmatched=keep_unmatched)[0]


def find_answered(
    session: Session, account_id: str, phone: str, context_id: str | None, at: datetime
) -> int | None:
    """The ledger id of the message a reply answers: the one it quotes, else the last one sent to that
    number within ``REPLY_ATTRIBUTION``."""
    if context_id:
        found = session.scalar(
            select(Message.id).where(
                Message.account_id == account_id, Message.provider_message_id == context_id
            )
        )
        if found is not None:
            return int(found)
    found = session.scalar(
        select(Message.id)
        .where(
            Message.account_id == account_id,
            Message.to_phone == phone,
            Message.state.in_(SENT_STATES),
            Message.sent_at >= at - REPLY_ATTRIBUTION,
        )
        .order_by(Message.sent_at.desc(), Message.id.desc())
        .limit(1)
    )
    return None if found is None else int(found)


def mark_replied(session: Session, message_id: int, at: datetime) -> bool:
    """The user answered this message: it is replied, and so delivered and read too."""
    result = session.execute(
        update(Message)
        .where(Message.id == message_id, Message.state.in_(("sending", *SENT_STATES)))
        .values(
            state="read",
            replied_at=func.coalesce(Message.replied_at, at),
            read_at=func.coalesce(Message.read_at, at),
            delivered_at=func.coalesce(Message.delivered_at, at),
            sent_at=func.coalesce(Message.sent_at, at),
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def open_work(session: Session, campaign_id: int) -> int:
    """Rows of this campaign still waiting to be sent or being sent."""
    return int(
        session.scalar(
            select(func.count()).where(
                Message.campaign_id == campaign_id, Message.state.in_(("queued", "sending"))
            )
        )
        or 0
    )


# --- the last look (stop means stop) ------------------------------------------------------------------


def halted_campaigns(session: Session, campaign_ids: Iterable[int]) -> set[int]:
    """Which of these campaigns are no longer running (stopped, paused, completed): the dispatcher's
    last look before each provider call (one indexed query, run every few milliseconds while rows are in
    hand)."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return set()
    return set(session.scalars(select(Campaign.id).where(Campaign.id.in_(ids), Campaign.state != "running")))


def give_back(session: Session, rows: Sequence[tuple[int, str]]) -> int:
    """Give back rows (id, claim token) this worker claimed — marked dispatched or not — whose provider
    call never started (their campaign was stopped or paused meanwhile): queued again, the dispatch mark
    cleared and the attempt not counted. Only a row still held by its token is touched, and the caller
    guarantees that no provider call was made for it."""
    if not rows:
        return 0
    table = cast_table(Message.__table__)
    result = session.execute(
        update(table)
        .where(
            table.c.id == bindparam("_id"),
            table.c.state == "sending",
            table.c.claimed_by == bindparam("_token"),
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
