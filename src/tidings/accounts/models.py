from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import Json


class Account(Base):
    """A tenant: owns every profile, event, template, campaign and message."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    passcode_hash: Mapped[str] = mapped_column(String(64))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # Engagement rules: system_control_group_pct, frequency_cap {max, hours}, dnd {start, end, timezone,
    # action}; see tidings.campaigns.rules.
    settings: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Integration(Base):
    """The account's WhatsApp provider: kind, public settings, encrypted secrets, sender rate."""

    __tablename__ = "whatsapp_integrations"

    account_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # a provider's kind (tidings.providers.registry)
    settings: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    secrets: Mapped[str] = mapped_column(Text, default="")  # Fernet token of a JSON object
    rate_limit: Mapped[float | None] = mapped_column(Float, nullable=True)  # messages a second
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
