"""The ledger's operations: the only code that writes ``messages``.

Every hot path is set-based: planning is one ``INSERT … SELECT``, a claim is one
``UPDATE … RETURNING``, results are recorded with one executemany per outcome.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign
from tidings.db import cast_table, is_postgres
from tidings.delivery.models import Message, PendingStatus
from tidings.personalization.service import PersonalizationError
from tidings.profiles.models import Profile
from tidings.providers.base import Outcome, SendResult, Status, StatusUpdate
from tidings.templates.models import Template

# Where each status may come from: states only move forward, ``failed`` is final.
_FORWARD: dict[Status, tuple[tuple[str, ...], str]] = {
    Status.SENT: (("sending",), "sent"),
    Status.DELIVERED: (("sending", "sent"), "delivered"),
    Status.READ: (("sending", "sent", "delivered"), "read"),
    Status.FAILED: (("sending", "sent"), "failed"),
}
SENT_STATES = ("sent", "delivered", "read")
REPLY_ATTRIBUTION = timedelta(hours=72)  # a reply without context counts for the last message this long
TEST_REF_PREFIX = "test-"  # client_ref of ``tidings send-test`` messages: not in the ledger, never pending


# --- dispatching --------------------------------------------------------------------------------------


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


def claim_batch(session: Session, limit: int, lease: timedelta, now: datetime) -> list[Claimed]:
    """Take up to ``limit`` due queued rows of running campaigns (or of no campaign) in one statement;
    ``FOR UPDATE SKIP LOCKED`` lets any number of workers claim side by side on PostgreSQL."""
    running = select(Campaign.id).where(Campaign.state == "running")
    due = (
        select(Message.id)
        .where(
            Message.state == "queued",
            Message.next_attempt_at <= now,
            or_(Message.campaign_id.is_(None), Message.campaign_id.in_(running)),
        )
        .order_by(Message.next_attempt_at, Message.id)
        .limit(limit)
    )
    if is_postgres(session):
        due = due.with_for_update(skip_locked=True)
    claimed_ids = list(
        session.scalars(
            update(Message)
            .where(Message.id.in_(due.scalar_subquery()), Message.state == "queued")
            .values(state="sending", lease_until=now + lease, attempts=Message.attempts + 1)
            .returning(Message.id)
            .execution_options(synchronize_session=False)
        )
    )
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
        )
        .join(Profile, Profile.id == Message.profile_id)
        .outerjoin(Campaign, Campaign.id == Message.campaign_id)
        .outerjoin(Template, Template.id == Campaign.template_id)
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
            variables=tuple(r[7] or ()),
            profile=dict(r[8] or {}),
        )
        for r in rows
    ]


@dataclass(frozen=True)
class Attempt:
    """What happened to one claimed row: a provider answer, or a personalization refusal."""

    claimed: Claimed
    provider: str
    result: SendResult | None = None
    refusal: PersonalizationError | None = None
    params: list[str] | None = None


def _backoff(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Exponential backoff with jitter, never sooner than the provider's ``Retry-After``."""
    delay = min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)
    return max(delay, retry_after or 0.0)


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
    (a webhook that got there first keeps its later state)."""
    table = cast_table(Message.__table__)
    sent, retry, failed, skipped = [], [], [], []
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
        if result.outcome is Outcome.RETRY and att.claimed.attempts < max_attempts:
            delay = _backoff(att.claimed.attempts, result.retry_after, retry_base, retry_cap)
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
            ),
            retry,
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
    for item in pending:
        update_ = status_from_json(item.status)
        if (
            apply_status(session, item.account_id, item.provider, update_, keep_unmatched=False)
            != "unmatched"
        ):
            session.delete(item)


def expire_leases(session: Session, now: datetime, grace: timedelta) -> int:
    """A row still ``sending`` long after its lease: the worker died around the provider call and no
    webhook has told us the outcome. Never resend blindly: fail it as ``outcome_unknown``."""
    result = session.execute(
        update(Message)
        .where(Message.state == "sending", Message.lease_until < now - grace)
        .values(
            state="failed",
            reason="outcome_unknown",
            error_detail="the worker stopped during the provider call and no status arrived",
            failed_at=now,
            lease_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


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


def _match(account_id: str, update_: StatusUpdate) -> ColumnElement[bool] | None:
    if update_.client_ref and update_.client_ref.startswith(TEST_REF_PREFIX):
        return None
    keys = []
    if update_.client_ref and update_.client_ref.isdigit():
        keys.append(Message.id == int(update_.client_ref))
    if update_.provider_message_id:
        keys.append(Message.provider_message_id == update_.provider_message_id)
    return and_(Message.account_id == account_id, or_(*keys)) if keys else None


def apply_status(
    session: Session, account_id: str, provider: str, update_: StatusUpdate, *, keep_unmatched: bool = True
) -> str:
    """Move one message forward. Returns ``applied``, ``ignored`` (a repeat, or an older state than the
    message has) or ``unmatched`` (no such message yet: kept in ``pending_statuses`` to apply later)."""
    match = _match(account_id, update_)
    if match is None:
        return "ignored"
    sources, target = _FORWARD[update_.status]
    ts = update_.timestamp
    values: dict[str, Any] = {
        "state": target,
        "provider_message_id": func.coalesce(Message.provider_message_id, update_.provider_message_id),
        "sent_at": func.coalesce(Message.sent_at, ts),
        "lease_until": None,
    }
    if update_.status in (Status.DELIVERED, Status.READ):
        values["delivered_at"] = func.coalesce(Message.delivered_at, ts)
    if update_.status is Status.READ:
        values["read_at"] = func.coalesce(Message.read_at, ts)
    if update_.status is Status.FAILED:
        values |= {
            "reason": f"{provider}:{update_.error_code or 'failed'}"[:64],
            "error_detail": (update_.error_detail or "")[:500],
            "failed_at": ts,
        }
    result = session.execute(
        update(Message)
        .where(match, Message.state.in_(sources))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        return "applied"
    if session.scalar(select(Message.id).where(match).limit(1)) is not None:
        return "ignored"
    if keep_unmatched:
        session.add(
            PendingStatus(
                account_id=account_id,
                provider=provider,
                provider_message_id=update_.provider_message_id,
                client_ref=update_.client_ref,
                status=status_to_json(update_),
            )
        )
    return "unmatched"


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
