"""The send-time rules: whether each claimed row may leave now, decided at its dispatch mark
(``mark_dispatched``, committed just before the provider calls) — consent, Do-Not-Disturb hours,
frequency caps, the pair rate, the messaging-limit tier and the campaign still running. An opt-out
settles the user's unsent rows at once (``skip_not_opted_in``), the consent rule's other half."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, bindparam, exists, func, null, or_, select, text, update
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.campaigns.models import Campaign
from tidings.campaigns.rules import Rules, account_rules, zone
from tidings.conversations.models import InboundMessage
from tidings.db import cast_table, is_postgres
from tidings.delivery.claims import release
from tidings.delivery.models import SENDING_OR_SENT, Message
from tidings.metrics import OPT_OUT_SETTLED
from tidings.profiles.models import Profile

MESSAGING_WINDOW = timedelta(hours=24)


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
    "window_closed": "the 24-hour window had closed when it was to be sent: only a template may go now",
}


def _free_reply(table: Any) -> ColumnElement[bool]:
    """An agent's free-text (or file) reply or a consent confirmation: it answers a user who wrote, so it
    goes inside the 24-hour window whatever ``MSG-whatsapp`` says, and never outside it."""
    return and_(table.c.conversation_id.is_not(None), table.c.text.is_not(None))


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
    free_reply: bool = False


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
    if rules is None or account_tz is None:  # the account's rules, as they are now (one primary-key read)
        account = session.execute(
            select(Account.settings, Account.timezone).where(Account.id == account_id)
        ).first()
        if account is not None:
            rules = rules or account_rules(account.settings)
            account_tz = account_tz or zone(account.timezone)
    rules = rules or Rules()
    account_tz = account_tz or zone(None)
    # The user's zone only counts for DND hours: with none set, it is not read (a JSON lookup per row).
    user_zone = Profile.properties["Tz"].as_string() if rules.dnd is not None else null()
    read = session.execute(
        select(
            Message.id,
            Message.profile_id,
            Message.campaign_id,
            Profile.whatsapp_opt_in.label("opted_in"),
            user_zone.label("tz"),
            _free_reply(Message.__table__).label("free_reply"),
        )
        .join(Profile, Profile.id == Message.profile_id)
        .where(Message.id.in_(ids))
    ).all()
    # The campaigns' rules once per campaign (a chunk is mostly one campaign), not once per row.
    campaign_ids = sorted({r.campaign_id for r in read if r.campaign_id is not None})
    campaigns: dict[int, tuple[bool, dict[str, Any] | None]] = (
        {
            c.id: (bool(c.respect_rules), c.frequency)
            for c in session.execute(
                select(Campaign.id, Campaign.respect_rules, Campaign.frequency).where(
                    Campaign.id.in_(campaign_ids)
                )
            )
        }
        if campaign_ids
        else {}
    )
    facts: dict[int, _Facts] = {}
    for r in read:
        # A message of no campaign (or of a campaign deleted since) follows no campaign rule.
        respect, frequency = campaigns.get(r.campaign_id, (False, None)) if r.campaign_id else (False, None)
        facts[r.id] = _Facts(
            r.profile_id, r.campaign_id, bool(r.opted_in), r.tz, respect, frequency, bool(r.free_reply)
        )
    refused: dict[int, str] = {}
    delayed: dict[int, datetime] = {}
    ruled: list[int] = []  # rows the account's rules apply to (a campaign that respects them)
    phone_of = {r[0]: r[2] for r in rows}
    free = [i for i in ids if i in facts and facts[i].free_reply]
    open_windows = _open_windows(session, account_id, {phone_of[i] for i in free}, now) if free else set()
    for row_id in ids:
        fact = facts.get(row_id)
        if fact is None:
            continue  # deleted meanwhile: the guarded UPDATE finds nothing
        if fact.free_reply:
            if phone_of[row_id] not in open_windows:
                refused[row_id] = "window_closed"
            continue
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
                    Message.state.in_(SENDING_OR_SENT),
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
                Message.state.in_(SENDING_OR_SENT),
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


def _open_windows(session: Session, account_id: str, phones: set[str], now: datetime) -> set[str]:
    """The numbers whose user wrote within the last 24 hours (their window is open now)."""
    return set(
        session.scalars(
            select(InboundMessage.from_phone)
            .where(
                InboundMessage.account_id == account_id,
                InboundMessage.from_phone.in_(sorted(phones)),
                InboundMessage.received_at > now - MESSAGING_WINDOW,
            )
            .distinct()
        )
    )


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
            Message.state.in_(SENDING_OR_SENT),
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
                    or_(_free_reply(table), _opted_in(table)),
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
                    table.c.id.in_([r[0] for r in candidates if r[0] not in marked]),
                    ~_free_reply(table),
                    ~_opted_in(table),
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


def skip_not_opted_in(session: Session, profile_ids: Iterable[int]) -> int:
    """These users opted out: settle their unsent rows (not the replies to what they wrote, ``_free_reply``)
    — queued (due, waiting for the pair rate, delayed by DND, in retry backoff) and claimed but not yet
    dispatched — as skipped ``not_opted_in``, set-based,
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
        held = select(table.c.id).where(
            table.c.profile_id.in_(wanted[start : start + 5000]), unsent, ~_free_reply(table)
        )
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
