"""consent history, the property catalogue, and profiles found by name

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 13:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import tidings.db

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The catalogue of what is already uploaded, and the name keys of existing profiles (SQL's lower() where
# the ingest uses Python's casefold(): the same for every name but a few letters such as ß).
_BACKFILL = {
    "postgresql": [
        "UPDATE profiles SET name_key = left(lower(properties ->> 'Name'), 120) "
        "WHERE jsonb_typeof(properties -> 'Name') = 'string'",
        "INSERT INTO property_catalogue (account_id, event_name, property, last_seen_at) "
        "SELECT account_id, '', k, max(updated_at) FROM profiles, jsonb_object_keys(properties) AS k "
        "GROUP BY account_id, k",
        "INSERT INTO property_catalogue (account_id, event_name, property, last_seen_at) "
        "SELECT account_id, name, '', max(created_at) FROM events GROUP BY account_id, name",
        "INSERT INTO property_catalogue (account_id, event_name, property, last_seen_at) "
        "SELECT account_id, name, k, max(created_at) FROM events, jsonb_object_keys(properties) AS k "
        "GROUP BY account_id, name, k",
    ],
    "sqlite": [
        "UPDATE profiles SET name_key = substr(lower(json_extract(properties, '$.Name')), 1, 120) "
        "WHERE json_type(properties, '$.Name') = 'text'",
        "INSERT INTO property_catalogue (account_id, event_name, property, last_seen_at) "
        "SELECT account_id, '', j.key, max(updated_at) FROM profiles, json_each(profiles.properties) AS j "
        "GROUP BY account_id, j.key",
        "INSERT INTO property_catalogue (account_id, event_name, property, last_seen_at) "
        "SELECT account_id, name, '', max(created_at) FROM events GROUP BY account_id, name",
        "INSERT INTO property_catalogue (account_id, event_name, property, last_seen_at) "
        "SELECT account_id, name, j.key, max(created_at) FROM events, json_each(events.properties) AS j "
        "GROUP BY account_id, name, j.key",
    ],
}


def upgrade() -> None:
    op.create_table(
        "consent_changes",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("profile_id", _BIG_ID, nullable=False),
        sa.Column("old_value", sa.Boolean(), nullable=True),
        sa.Column("new_value", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=254), nullable=True),
        sa.Column("changed_at", tidings.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_consent_changes_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profiles.id"],
            name=op.f("fk_consent_changes_profile_id_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_changes")),
    )
    with op.batch_alter_table("consent_changes", schema=None) as batch_op:
        batch_op.create_index("ix_consent_changes_profile", ["profile_id", "changed_at", "id"], unique=False)

    op.create_table(
        "property_catalogue",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("event_name", sa.String(length=255), nullable=False),
        sa.Column("property", sa.String(length=120), nullable=False),
        sa.Column("last_seen_at", tidings.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_property_catalogue_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "event_name", "property", name=op.f("pk_property_catalogue")),
    )

    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_key", sa.String(length=120), nullable=True))
    for statement in _BACKFILL[op.get_bind().dialect.name]:
        op.execute(statement)
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index("ix_profiles_account_name_key", ["account_id", "name_key", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index("ix_profiles_account_name_key")
        batch_op.drop_column("name_key")
    op.drop_table("property_catalogue")
    with op.batch_alter_table("consent_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_changes_profile")
    op.drop_table("consent_changes")
