from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import BigId, Json


class Profile(Base):
    """A customer, keyed by its CleverTap-style identity within an account."""

    __tablename__ = "profiles"
    __table_args__ = (
        UniqueConstraint("account_id", "identity"),
        Index("ix_profiles_account_phone", "account_id", "phone"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    identity: Mapped[str] = mapped_column(String(120))
    phone: Mapped[str | None] = mapped_column(String(20), nullable=True)  # E.164
    whatsapp_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)  # MSG-whatsapp
    properties: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    # A stable per-profile number in [0, BUCKET_PRIME): control groups hash it with the campaign in SQL.
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Event(Base):
    """Something a profile did (CleverTap event): name, properties, time."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_account_name_ts", "account_id", "name", "ts"),
        Index("ix_events_profile_name_ts", "profile_id", "name", "ts"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    profile_id: Mapped[int] = mapped_column(BigId, ForeignKey("profiles.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
