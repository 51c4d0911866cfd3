from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import BigId


class InboundMessage(Base):
    """A message a user sent to the business (a reply to a campaign, or a new conversation)."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("account_id", "provider", "provider_message_id", name="uq_inbound_provider_id"),
        Index("ix_inbound_profile", "account_id", "profile_id", "received_at"),
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
    context_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # provider id
    answers_message_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True
    )
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
