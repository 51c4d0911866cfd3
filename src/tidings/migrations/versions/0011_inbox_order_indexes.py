"""the inbox's lists read in their order from an index; the tabs' counts from an index alone

``list_conversations`` orders by ``waiting_since IS NULL, waiting_since, last_message_at DESC, id DESC``
(the oldest waiting first, then the latest message). No index had that order, so every page sorted
every conversation its filter kept (1-2 s for the default tab at 100,000 conversations). Three indexes
now end with it: after ``account_id`` (every conversation, and the filters by label, campaign or words,
which test each conversation in that order until the page is full), after ``account_id, state`` (a
state's tab; then ``last_inbound_at``, which the active and inactive tabs test) and after
``account_id, assignee_id`` (an agent's conversations). ``ix_conversations_tabs`` gives ``counts`` the
state, the window and the unread count of every conversation without its row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORDER: list[str | sa.TextClause] = [
    sa.text("(waiting_since IS NULL)"),
    "waiting_since",
    sa.text("last_message_at DESC"),
    sa.text("id DESC"),
]


def _ordered(*leading: str, then: str | None = None) -> list[str | sa.TextClause]:
    columns: list[str | sa.TextClause] = [*leading, *ORDER]
    return [*columns, then] if then else columns


def upgrade() -> None:
    op.drop_index("ix_conversations_queue", table_name="conversations")
    op.drop_index("ix_conversations_assignee", table_name="conversations")
    op.create_index("ix_conversations_inbox", "conversations", _ordered("account_id"))
    op.create_index(
        "ix_conversations_queue", "conversations", _ordered("account_id", "state", then="last_inbound_at")
    )
    op.create_index("ix_conversations_assignee", "conversations", _ordered("account_id", "assignee_id"))
    op.create_index(
        "ix_conversations_tabs", "conversations", ["account_id", "state", "last_inbound_at", "unread"]
    )


def downgrade() -> None:
    for name in ("ix_conversations_tabs", "ix_conversations_assignee", "ix_conversations_queue"):
        op.drop_index(name, table_name="conversations")
    op.drop_index("ix_conversations_inbox", table_name="conversations")
    op.create_index(
        "ix_conversations_queue", "conversations", ["account_id", "state", "waiting_since", "last_message_at"]
    )
    op.create_index("ix_conversations_assignee", "conversations", ["account_id", "assignee_id", "state"])
