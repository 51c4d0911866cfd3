"""Column types shared by every domain's tables."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Integer
from sqlalchemy.dialects.postgresql import JSONB

# An auto-incrementing 64-bit key (SQLite needs plain INTEGER for its rowid alias).
BigId = BigInteger().with_variant(Integer(), "sqlite")
# JSON documents: JSONB on PostgreSQL so that later segment queries can index them.
Json = JSON().with_variant(JSONB(), "postgresql")
