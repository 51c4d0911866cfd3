from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import Json


class Campaign(Base):
    """Who gets which template with which values, and when.

    ``state`` moves draft → scheduled → running → completed | stopped, only through atomic claims.
    """

    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_state_scheduled", "state", "scheduled_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(24), default="one_time")
    state: Mapped[str] = mapped_column(String(16), default="scheduled")
    template_id: Mapped[int] = mapped_column(Integer, ForeignKey("templates.id"))
    variables: Mapped[list[str]] = mapped_column(Json, default=list)  # one Liquid source per {{n}}
    target: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    control_group_pct: Mapped[int] = mapped_column(Integer, default=0)
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    audience_size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str | None] = mapped_column(String(300), nullable=True)  # why it waits or stopped
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
