from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import BigId, Json

# Groups of ledger states, each with one meaning, used by every query that asks about it.
SENT_STATES = ("sent", "delivered", "read")  # the provider took it
SENDING_OR_SENT = ("sending", *SENT_STATES)  # handed (or being handed) to the provider
OPEN_STATES = ("queued", "sending")  # still to be sent, or being sent
LIVE_STATES = ("queued", *SENDING_OR_SENT)  # sent or still to be: what planning counts against the caps


class Message(Base):
    """The ledger: one row per message to send, written before any provider call.

    States move forward only: queued → sending → sent → delivered → read; ``failed`` is final;
    ``control`` and ``skipped`` are decided when the audience is planned.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("campaign_id", "profile_id", "occurrence", name="uq_messages_occurrence"),
        Index("ix_messages_claim", "state", "next_attempt_at"),
        Index("ix_messages_campaign_state", "campaign_id", "state"),
        Index("ix_messages_provider_id", "provider_message_id"),
        Index("ix_messages_account_phone", "account_id", "to_phone"),
        Index("ix_messages_profile_created", "profile_id", "created_at"),
        Index("ix_messages_account_dispatched", "account_id", "dispatched_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    campaign_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=True
    )
    profile_id: Mapped[int] = mapped_column(BigId, ForeignKey("profiles.id", ondelete="CASCADE"))
    occurrence: Mapped[str] = mapped_column(String(64), default="")
    variant_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("campaign_variants.id", ondelete="SET NULL"), nullable=True
    )
    context: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)  # Event.* of a trigger
    state: Mapped[str] = mapped_column(String(16))
    to_phone: Mapped[str | None] = mapped_column(String(20), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)  # why skipped / failed
    error_detail: Mapped[str | None] = mapped_column(String(500), nullable=True)
    params: Mapped[list[str] | None] = mapped_column(Json, nullable=True)  # rendered {{n}} values
    text: Mapped[str | None] = mapped_column(String(4096), nullable=True)  # free text (agent replies)
    # An agent's reply or a consent confirmation: a message of the conversation with that number. Free
    # text and files go only inside the 24-hour window (decided at send time), whatever ``MSG-whatsapp``
    # says: the user wrote first. A template reply is business-initiated and needs consent.
    conversation_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("conversations.id", ondelete="SET NULL"), nullable=True
    )
    author_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    template_id: Mapped[int | None] = mapped_column(  # a template reply's template (campaigns: the variant's)
        Integer, ForeignKey("templates.id", ondelete="SET NULL"), nullable=True
    )
    media: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)  # {"kind", "url", "filename"}
    provider: Mapped[str | None] = mapped_column(String(16), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Crash safety: who holds the claim, and when the provider call was about to be made (committed
    # before it). A lost claim without dispatched_at is requeued; with it, reconciled
    # (delivery.reconciliation).
    claimed_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    replied_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PendingStatus(Base):
    """A status webhook whose message was not found yet: kept to be applied when the send is recorded."""

    __tablename__ = "pending_statuses"
    __table_args__ = (Index("ix_pending_statuses_provider_id", "provider", "provider_message_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    client_ref: Mapped[str | None] = mapped_column(String(100), nullable=True)
    status: Mapped[dict[str, Any]] = mapped_column(Json)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
