"""Conversations: one per WhatsApp number an account talks with. Inbound messages, agents' notes, saved
replies and the files users and agents send. Outbound messages (campaign messages and agents' replies)
live in the ledger (``delivery.models.Message``) and join the thread by number."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import BigId, Json


class State(StrEnum):
    """A conversation's state as kept. ``inactive`` is not kept: it is an ``active`` conversation whose
    24-hour window has closed (nobody is waiting), read from the clock (``conversations.service``)."""

    new = "new"  # the user wrote; no agent has answered
    active = "active"  # an agent answered
    pending = "pending"  # the user answered the agent
    resolved = "resolved"  # an agent closed it; a new message from the user reopens it
    inactive = "inactive"


class Conversation(Base):
    """The thread with one WhatsApp number (``phone``); ``profile_id`` is the profile it is shown with."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("account_id", "phone", name="uq_conversations_phone"),
        Index("ix_conversations_recent", "account_id", "last_message_at", "id"),
        # The tabs' counts, from the index alone: per state, and the active ones whose window is open.
        Index("ix_conversations_tabs", "account_id", "state", "last_inbound_at", "unread"),
        # What changed since a live page last looked.
        Index("ix_conversations_changed", "account_id", "changed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    phone: Mapped[str] = mapped_column(String(20))  # E.164
    profile_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("profiles.id", ondelete="SET NULL"), nullable=True
    )
    state: Mapped[str] = mapped_column(String(12), default=State.new)
    assignee_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    # The user's latest message: the 24-hour window runs from it.
    last_inbound_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_agent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_message_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Since when the user has been waiting for an answer (new, pending); None when nobody waits.
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    unread: Mapped[int] = mapped_column(Integer, default=0)  # the user's messages no agent has opened yet
    preview: Mapped[str] = mapped_column(String(200), default="")
    # The campaign the user's latest attributed reply answered (the list shows it).
    campaign_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def _inbox_order(*leading: Any) -> tuple[Any, ...]:
    """Index columns that read a list in the inbox's order (``service.list_conversations``: the oldest
    waiting first, then the latest message first) after ``leading`` equalities, so that a page of 50 is
    the index's first 50 entries instead of a sort of every conversation the filter keeps."""
    c = Conversation.__table__.c
    return (*leading, c.waiting_since.is_(None), c.waiting_since, c.last_message_at.desc(), c.id.desc())


_c = Conversation.__table__.c
# Every conversation (the default tab, and filters by label, campaign or words), a state's tab, an agent's.
Index("ix_conversations_inbox", *_inbox_order(_c.account_id))
# A state's tab; ``last_inbound_at`` last: the active and inactive tabs test the window on the index entry.
Index("ix_conversations_queue", *_inbox_order(_c.account_id, _c.state), _c.last_inbound_at)
Index("ix_conversations_assignee", *_inbox_order(_c.account_id, _c.assignee_id))


class ConversationLabel(Base):
    __tablename__ = "conversation_labels"
    __table_args__ = (Index("ix_conversation_labels_label", "account_id", "label", "conversation_id"),)

    conversation_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))


class ConversationNote(Base):
    """A private note between agents: never sent to the user."""

    __tablename__ = "conversation_notes"
    __table_args__ = (Index("ix_conversation_notes_conversation", "conversation_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(BigId, ForeignKey("conversations.id", ondelete="CASCADE"))
    author_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SavedReply(Base):
    """A canned response, inserted in the reply box by its ``shortcut`` (typed after ``/``)."""

    __tablename__ = "saved_replies"
    __table_args__ = (UniqueConstraint("account_id", "shortcut", name="uq_saved_replies_shortcut"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    shortcut: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MediaFile(Base):
    """A file a user sent (fetched from the provider once) or an agent sends (served to the provider by
    link at ``/media/{token}``): kept in the database, so every process sees it and a backup holds it."""

    __tablename__ = "media_files"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    token: Mapped[str] = mapped_column(String(64), unique=True)  # random: the unguessable part of its link
    mime_type: Mapped[str] = mapped_column(String(100))
    filename: Mapped[str | None] = mapped_column(String(255), nullable=True)
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class InboundMessage(Base):
    """A message a user sent to the business (a reply to a campaign, or a new conversation)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("account_id", "provider", "provider_message_id", name="uq_inbound_provider_id"),
        Index("ix_inbound_profile", "account_id", "profile_id", "received_at"),
        Index("ix_inbound_phone", "account_id", "from_phone", "received_at"),
        Index("ix_inbound_campaign", "account_id", "campaign_id", "from_phone"),
        # The worker's chores: files still to fetch, read receipts still to send.
        Index("ix_inbound_media_pending", "media_state"),
        Index("ix_inbound_read_pending", "read_state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    profile_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("profiles.id", ondelete="CASCADE"), nullable=True
    )
    from_phone: Mapped[str] = mapped_column(String(32))
    provider: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(24), default="text")
    text: Mapped[str] = mapped_column(Text, default="")
    payload: Mapped[str | None] = mapped_column(String(256), nullable=True)  # a tapped button's payload
    data: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)  # reaction, location, contacts
    # A file the user sent: the provider's reference ({"ref", "mime_type", "filename", "sha256"}), then
    # ``media_state`` pending → fetched (``media_id``) or failed.
    media: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    media_state: Mapped[str | None] = mapped_column(String(8), nullable=True)
    media_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("media_files.id", ondelete="SET NULL"), nullable=True
    )
    context_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # provider id
    answers_message_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    campaign_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("campaigns.id", ondelete="SET NULL"), nullable=True
    )
    # An agent opened it: the provider is told (blue ticks) by the worker: pending → sent / unsupported.
    read_state: Mapped[str | None] = mapped_column(String(12), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
