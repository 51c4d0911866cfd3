"""delivery at scale: claim owner and dispatch mark on the ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tidings.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("dispatched_at", tidings.db.UTCDateTime(), nullable=True))
        batch_op.create_index("ix_messages_account_dispatched", ["account_id", "dispatched_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_account_dispatched")
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("claimed_by")
