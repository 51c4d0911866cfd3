"""Reply attribution: which campaign message a user's reply answers, marked replied.

A reply answers the campaign message it quotes (the provider's context), else the latest campaign
message sent to that number within the account's attribution window (``reply_attribution_hours``,
default 24; ``campaigns.rules``). Only campaign messages are attributed: an agent's reply (no campaign)
is no campaign's, and a reply quoting one answers no campaign."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import DateTime, bindparam, func, select, update
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.campaigns.rules import account_rules
from tidings.db import cast_table
from tidings.delivery import system_events
from tidings.delivery.models import SENDING_OR_SENT, SENT_STATES, Message

_TABLE = cast_table(Message.__table__)
# The statements of a reply, built once (building them costs as much as running them on SQLite).
_QUOTED = select(_TABLE.c.id, _TABLE.c.campaign_id).where(
    _TABLE.c.account_id == bindparam("_account"), _TABLE.c.provider_message_id == bindparam("_context")
)
_LAST_SENT = (
    select(_TABLE.c.id, _TABLE.c.campaign_id)
    .where(
        _TABLE.c.account_id == bindparam("_account"),
        _TABLE.c.to_phone == bindparam("_phone"),
        _TABLE.c.campaign_id.is_not(None),
        _TABLE.c.state.in_(SENT_STATES),
        _TABLE.c.sent_at >= bindparam("_since", type_=_TABLE.c.sent_at.type),
    )
    .order_by(_TABLE.c.sent_at.desc(), _TABLE.c.id.desc())
    .limit(1)
)
_AT = bindparam("_at", type_=DateTime())  # as a datetime given to coalesce() is bound
_REPLIED = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("_id"), _TABLE.c.state.in_(SENDING_OR_SENT))
    .values(
        state="read",
        replied_at=func.coalesce(_TABLE.c.replied_at, _AT),
        read_at=func.coalesce(_TABLE.c.read_at, _AT),
        delivered_at=func.coalesce(_TABLE.c.delivered_at, _AT),
        sent_at=func.coalesce(_TABLE.c.sent_at, _AT),
    )
)


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
    found = answered_campaign(session, account_id, phone, context_id, at)
    return None if found is None else found[0]


def answered_campaign(
    session: Session, account_id: str, phone: str, context_id: str | None, at: datetime
) -> tuple[int, int] | None:
    """``find_answered``'s message with its campaign, ``(ledger id, campaign id)``, read by the same
    statement (a reply applied needs both; one SELECT a message fewer)."""
    session.flush()  # what the session holds is seen, as a session's own statements see it
    connection = session.connection()
    if context_id:
        quoted = connection.execute(_QUOTED, {"_account": account_id, "_context": context_id}).first()
        if quoted is not None:
            return None if quoted.campaign_id is None else (int(quoted.id), int(quoted.campaign_id))
    since = at - attribution_window(session, account_id)
    found = connection.execute(_LAST_SENT, {"_account": account_id, "_phone": phone, "_since": since}).first()
    return None if found is None else (int(found.id), int(found.campaign_id))


def mark_replied(session: Session, message_id: int, at: datetime) -> bool:
    """The user answered this message: it is replied, and so delivered and read too. The first reply to
    a campaign message records ``Notification Replied`` on the profile (and the Sent, Delivered and
    Viewed it had not recorded yet, at the reply's time); a later one records nothing."""
    row = next(iter(system_events.locked_rows(session, [message_id])), None)
    if row is None or row.state not in SENDING_OR_SENT:
        return False
    session.flush()
    session.connection().execute(_REPLIED, {"_id": message_id, "_at": at})
    if row.replied_at is None:
        names = (*system_events.steps(row.state, "read"), system_events.REPLIED)
        system_events.record(session, [(row.id, row.campaign_id, names)])
    return True
