"""Reply attribution: which campaign message a user's reply answers, marked replied."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tidings.delivery.models import SENDING_OR_SENT, SENT_STATES, Message

REPLY_ATTRIBUTION = timedelta(hours=72)  # a reply without context counts for the last message this long


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
        .where(Message.id == message_id, Message.state.in_(SENDING_OR_SENT))
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
