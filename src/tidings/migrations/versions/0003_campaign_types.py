"""campaign types

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:14:34.154729
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import tidings.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_triggers",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("occurrence", sa.String(length=64), nullable=False),
        sa.Column("event_ts", tidings.db.UTCDateTime(), nullable=False),
        sa.Column("due_at", tidings.db.UTCDateTime(), nullable=False),
        sa.Column(
            "context",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_campaign_triggers_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_triggers_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["profiles.id"],
            name=op.f("fk_campaign_triggers_profile_id_profiles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_triggers")),
        sa.UniqueConstraint(
            "campaign_id", "profile_id", "occurrence", name=op.f("uq_campaign_triggers_campaign_id")
        ),
    )
    with op.batch_alter_table("campaign_triggers", schema=None) as batch_op:
        batch_op.create_index("ix_campaign_triggers_due", ["state", "due_at"], unique=False)

    op.create_table(
        "campaign_variants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=16), nullable=False),
        sa.Column("template_id", sa.Integer(), nullable=False),
        sa.Column(
            "variables",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("weight", sa.Integer(), nullable=True),
        sa.Column("match_value", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_variants_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["template_id"], ["templates.id"], name=op.f("fk_campaign_variants_template_id_templates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_variants")),
        sa.UniqueConstraint("campaign_id", "key", name=op.f("uq_campaign_variants_campaign_id")),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "settings",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=False,
                server_default=sa.text("'{}'"),
            )
        )

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "trigger",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("ends_at", tidings.db.UTCDateTime(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "frequency",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "split",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column("system_control_group", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column("respect_rules", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("conversion_event", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("conversion_window_hours", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("checked_until", tidings.db.UTCDateTime(), nullable=True))

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("variant_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "context",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_messages_variant_id_campaign_variants"),
            "campaign_variants",
            ["variant_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index("ix_messages_profile_created", ["profile_id", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_profile_created")
        batch_op.drop_constraint(batch_op.f("fk_messages_variant_id_campaign_variants"), type_="foreignkey")
        batch_op.drop_column("context")
        batch_op.drop_column("variant_id")

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_column("checked_until")
        batch_op.drop_column("conversion_window_hours")
        batch_op.drop_column("conversion_event")
        batch_op.drop_column("respect_rules")
        batch_op.drop_column("system_control_group")
        batch_op.drop_column("split")
        batch_op.drop_column("frequency")
        batch_op.drop_column("ends_at")
        batch_op.drop_column("trigger")

    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("settings")

    op.drop_table("campaign_variants")
    with op.batch_alter_table("campaign_triggers", schema=None) as batch_op:
        batch_op.drop_index("ix_campaign_triggers_due")

    op.drop_table("campaign_triggers")
