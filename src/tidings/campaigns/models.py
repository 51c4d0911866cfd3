from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db import Base, UTCDateTime, utcnow
from tidings.types import BigId, Json


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
    # single_action / inaction / on_date: what makes a user qualify (see tidings.campaigns.triggers).
    trigger: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # {"rule": "every_time"} | {"rule": "once"} | {"rule": "min_gap", "hours": N}
    frequency: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    # Multivariate: {"by": "percentage"} or {"by": "property", "property": "Language"}; None: single message.
    split: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    system_control_group: Mapped[bool] = mapped_column(Boolean, default=True)
    respect_rules: Mapped[bool] = mapped_column(Boolean, default=True)  # account frequency cap and DND
    conversion_event: Mapped[str | None] = mapped_column(String(255), nullable=True)
    conversion_window_hours: Mapped[int | None] = mapped_column(Integer, nullable=True)
    checked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # on_date sweep
    # A draft: the step of the dashboard's guided flow it was left at (it reopens there).
    draft_step: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CampaignVariant(Base):
    """One message of a multivariate campaign: its template and values, and who gets it."""

    __tablename__ = "campaign_variants"
    __table_args__ = (UniqueConstraint("campaign_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(Integer, ForeignKey("campaigns.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(16))  # "A", "B", …
    template_id: Mapped[int] = mapped_column(Integer, ForeignKey("templates.id"))
    variables: Mapped[list[str]] = mapped_column(Json, default=list)
    weight: Mapped[int | None] = mapped_column(Integer, nullable=True)  # percent, for a percentage split
    match_value: Mapped[str | None] = mapped_column(String(255), nullable=True)  # None: the default variant


class CampaignTrigger(Base):
    """An inaction-within-time candidate: event A happened; at ``due_at`` the user is messaged only if
    event B has not followed."""

    __tablename__ = "campaign_triggers"
    __table_args__ = (
        UniqueConstraint("campaign_id", "profile_id", "occurrence"),
        Index("ix_campaign_triggers_due", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(Integer, ForeignKey("campaigns.id", ondelete="CASCADE"))
    profile_id: Mapped[int] = mapped_column(BigId, ForeignKey("profiles.id", ondelete="CASCADE"))
    occurrence: Mapped[str] = mapped_column(String(64))
    event_ts: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    context: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)  # the event's properties
    state: Mapped[str] = mapped_column(String(12), default="waiting")  # waiting | planned | dropped
