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
        # Find a profile by name: a prefix range of one account's ``name_key``, in (name_key, id) order.
        Index("ix_profiles_account_name_key", "account_id", "name_key", "id"),
        # The newest profiles first, a page at a time (profiles.service.newest_profiles).
        Index("ix_profiles_account_newest", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    identity: Mapped[str] = mapped_column(String(120))
    phone: Mapped[str | None] = mapped_column(String(20), nullable=True)  # E.164
    whatsapp_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)  # MSG-whatsapp
    # The ``Name`` property case-folded (its first NAME_KEY_CHARS characters), for finding a profile by name.
    name_key: Mapped[str | None] = mapped_column(String(120), nullable=True)
    properties: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    # A stable per-profile number in [0, BUCKET_PRIME): control groups hash it with the campaign in SQL.
    seed: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Event(Base):
    """Something a profile did (CleverTap event): name, properties, time."""

    __tablename__ = "events"
    __table_args__ = (
        # An account's events of a name in a window, with their profiles from the index alone (a segment's
        # past-behaviour test reads the set of profile ids once; live triggers and conversions).
        Index("ix_events_account_name_ts", "account_id", "name", "ts", "profile_id"),
        Index("ix_events_profile_name_ts", "profile_id", "name", "ts"),
        # A profile's latest events, newest first, a page at a time (profiles.service.profile_events).
        Index("ix_events_profile_ts", "profile_id", "ts", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    profile_id: Mapped[int] = mapped_column(BigId, ForeignKey("profiles.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(Json, default=dict)
    ts: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ConsentChange(Base):
    """One change of a profile's ``MSG-whatsapp``: from what to what, through which path, by whom, when."""

    __tablename__ = "consent_changes"
    __table_args__ = (Index("ix_consent_changes_profile", "profile_id", "changed_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(32), ForeignKey("accounts.id", ondelete="CASCADE"))
    profile_id: Mapped[int] = mapped_column(BigId, ForeignKey("profiles.id", ondelete="CASCADE"))
    old_value: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # None: the profile was new
    new_value: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(16))  # upload | api | dashboard | keyword
    # A user's e-mail, an API key's name, "passcode", or the phone number that sent a keyword.
    actor: Mapped[str | None] = mapped_column(String(254), nullable=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CatalogueEntry(Base):
    """A property name the account has uploaded (the pickers' list): a profile property (``event_name``
    ""), an event name (``property`` ""), or an event's property; when it was last uploaded (kept to the
    hour: the ingest rewrites an entry only when it is an hour old)."""

    __tablename__ = "property_catalogue"

    account_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    event_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    property: Mapped[str] = mapped_column(String(120), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
