"""Inbound messages: a user's reply is kept, marks the campaign message it answers as replied, and a
consent keyword (``STOP`` as people write it, Meta's "Stop promotions" button, ``START``, the account's
own keywords; see ``tidings.conversations.keywords``) opts every profile with that phone number out of
WhatsApp, or in again. Webhooks may arrive out of order: a keyword older than one the number sent later
(already recorded) changes nothing, so the person's last word holds."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings.accounts.models import Account
from tidings.conversations.attribution import find_answered, mark_replied
from tidings.conversations.keywords import Keywords, account_keywords, consent_change
from tidings.conversations.models import InboundMessage
from tidings.profiles.service import (
    ConsentSource,
    profile_by_phone,
    profiles_by_phone,
    set_whatsapp_opt_in_by_phone,
)
from tidings.providers.base import InboundReply

# Kinds whose text is what the user wrote or tapped (others carry a placeholder such as "[image]").
_WORDED = frozenset({"text", "button", "interactive", "reply"})


def _consent(kind: str, text: str, payload: str | None, keywords: Keywords) -> bool | None:
    worded = text if kind in _WORDED else None
    return consent_change(worded, payload, keywords) if worded or payload else None


def consent_of(session: Session, account_id: str, reply: InboundReply) -> bool | None:
    """``False`` when the reply opts out, ``True`` when it opts in again, else ``None``: its text (for a
    typed or tapped reply) and a button's payload are both examined. ``None`` too when the number's
    profiles have a later consent keyword on record (an earlier word that arrived late)."""
    if reply.kind not in _WORDED and not reply.payload:
        return None
    account = session.get(Account, account_id)
    keywords = account_keywords(account.settings if account is not None else None)
    consent = _consent(reply.kind, reply.text, reply.payload, keywords)
    if consent is None:
        return None
    ids = [p.id for p in profiles_by_phone(session, account_id, reply.from_phone)]
    if not ids:
        return consent  # nobody to opt out or in
    later = session.execute(
        select(InboundMessage.kind, InboundMessage.text).where(
            InboundMessage.account_id == account_id,
            InboundMessage.profile_id.in_(ids),
            InboundMessage.received_at > reply.timestamp,
        )
    ).all()
    if any(_consent(kind, text, None, keywords) is not None for kind, text in later):
        return None
    return consent


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
    answered = find_answered(session, account_id, reply.from_phone, reply.context_message_id, reply.timestamp)
    if answered is not None:
        mark_replied(session, answered, reply.timestamp)
    consent = consent_of(session, account_id, reply)
    if consent is not None:
        # Recorded in the consent history as the person's own word: the number that sent it.
        set_whatsapp_opt_in_by_phone(
            session, account_id, reply.from_phone, consent, ConsentSource.keyword, reply.from_phone
        )
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
