"""Inbound messages: a user's reply is kept, marks the campaign message it answers as replied, and
``STOP`` opts the user out of WhatsApp."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.conversations.models import InboundMessage
from tidings.delivery import service as delivery
from tidings.profiles.service import profile_by_phone, set_whatsapp_opt_in
from tidings.providers.base import InboundReply

STOP_WORDS = {"STOP", "UNSUBSCRIBE", "STOP ALL", "OPT OUT", "OPTOUT"}


def record_inbound(session: Session, account_id: str, provider: str, reply: InboundReply) -> bool:
    """Keep one inbound message (a repeat of the same provider id changes nothing). Returns whether new."""
    seen = session.scalar(
        select(InboundMessage.id).where(
            InboundMessage.account_id == account_id,
            InboundMessage.provider == provider,
            InboundMessage.provider_message_id == reply.provider_message_id,
        )
    )
    if seen is not None:
        return False
    profile = profile_by_phone(session, account_id, reply.from_phone)
    answered = delivery.find_answered(
        session, account_id, reply.from_phone, reply.context_message_id, reply.timestamp
    )
    if answered is not None:
        delivery.mark_replied(session, answered, reply.timestamp)
    if profile is not None and reply.text.strip().upper() in STOP_WORDS:
        set_whatsapp_opt_in(session, profile, False)
    session.add(
        InboundMessage(
            account_id=account_id,
            profile_id=profile.id if profile is not None else None,
            from_phone=reply.from_phone,
            provider=provider,
            provider_message_id=reply.provider_message_id,
            kind=reply.kind,
            text=reply.text,
            context_message_id=reply.context_message_id,
            answers_message_id=answered,
            received_at=reply.timestamp,
        )
    )
    session.flush()
    return True
