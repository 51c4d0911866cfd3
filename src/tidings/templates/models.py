from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow


class Template(Base):
    """A pre-approved WhatsApp template, named ``<namespace>:<name>``, with ``{{n}}`` variables."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("account_id", "name", "language"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(512))
    language: Mapped[str] = mapped_column(String(16), default="en")
    category: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(24), default="APPROVED")
    body: Mapped[str] = mapped_column(Text)
    variable_count: Mapped[int] = mapped_column(Integer)
    provider_template_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @property
    def namespace(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def template_name(self) -> str:
        return self.name.split(":", 1)[1]
