"""the account's events of a name in a window, with their profiles, from the index alone

``ix_events_account_name_ts`` gains ``profile_id`` as a last column, so that a segment's past-behaviour
test reads the profile ids of an account's events of one name in a window from the index (an index-only
scan) instead of fetching each event's row.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 14:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_account_name_ts")
        batch_op.create_index(
            "ix_events_account_name_ts", ["account_id", "name", "ts", "profile_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_account_name_ts")
        batch_op.create_index("ix_events_account_name_ts", ["account_id", "name", "ts"], unique=False)
