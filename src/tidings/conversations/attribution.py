"""Reply attribution: which campaign message a user's reply answers, marked replied.

A reply answers the campaign message it quotes (the provider's context), else the latest campaign
message sent to that number within the account's attribution window (``reply_attribution_hours``,
default 24; ``campaigns.rules``). Only campaign messages are attributed: an agent's reply (no campaign)
is no campaign's, and a reply quoting one answers no campaign."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.campaigns.rules import account_rules
from tidings.delivery import system_events
from tidings.delivery.models import SENDING_OR_SENT, SENT_STATES, Message


def attribution_window(session: Session, account_id: str) -> timedelta:
    """How long after a campaign message a reply without context still counts for it (the account's
    ``reply_attribution_hours``)."""
    account = session.get(Account, account_id)
    return timedelta(hours=account_rules(account.settings if account else None).reply_attribution_hours)


def find_answered(
    session: Session, account_id: str, phone: str, context_id: str | None, at: datetime
) -> int | None:
    """The ledger id of the campaign message a reply answers: the one it quotes, else the last campaign
    message sent to that number at most the attribution window before ``at`` (the edge included). None
    when it quotes a message of ours that is no campaign's (an agent's reply)."""
    if context_id:
        quoted = session.execute(
            select(Message.id, Message.campaign_id).where(
                Message.account_id == account_id, Message.provider_message_id == context_id
            )
        ).first()
        if quoted is not None:
            return int(quoted.id) if quoted.campaign_id is not None else None
    found = session.scalar(
        select(Message.id)
        .where(
            Message.account_id == account_id,
            Message.to_phone == phone,
            Message.campaign_id.is_not(None),
            Message.state.in_(SENT_STATES),
            Message.sent_at >= at - attribution_window(session, account_id),
        )
        .order_by(Message.sent_at.desc(), Message.id.desc())
        .limit(1)
    )
    return None if found is None else int(found)


def mark_replied(session: Session, message_id: int, at: datetime) -> bool:
    """The user answered this message: it is replied, and so delivered and read too. The first reply to
    a campaign message records ``Notification Replied`` on the profile (and the Sent, Delivered and
    Viewed it had not recorded yet, at the reply's time); a later one records nothing."""
    row = next(iter(system_events.locked_rows(session, [message_id])), None)
    if row is None or row.state not in SENDING_OR_SENT:
        return False
    session.execute(
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
    if row.replied_at is None:
        names = (*system_events.steps(row.state, "read"), system_events.REPLIED)
        system_events.record(session, [(row.id, row.campaign_id, names)])
    return True
