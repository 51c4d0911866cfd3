"""a profile's events by time, and an account's newest profiles: the profile pages' lists, from indexes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:55:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_profile_ts", ["profile_id", "ts", "id"], unique=False)
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index("ix_profiles_account_newest", ["account_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index("ix_profiles_account_newest")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_profile_ts")
