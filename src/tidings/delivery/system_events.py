"""CleverTap's system events of a campaign message, kept on the profile as events (``events`` rows) so
that segments and conversion goals can use them ("did not Notification Viewed where Campaign id = 7" as a
target, ``Notification Replied`` as a goal): ``Notification Sent`` when the ledger row becomes sent,
``Notification Delivered`` and ``Notification Viewed`` when a status moves it to delivered and read, and
``Notification Replied`` when a reply is attributed to it.

Each is recorded once per message, when its row passes that step: states only move forward, so a
repeated or late status (which moves nothing) records nothing. A row that skips a step records it too,
at the same time: a read without a delivery receipt records Delivered and then Viewed (the stats count
it as delivered too), as a reply to a message still ``sent`` records Delivered, Viewed and Replied.
The moves are decided from the rows as locked by the writer (``FOR NO KEY UPDATE`` on PostgreSQL, the
lock its UPDATE takes anyway; SQLite has one writer at a time), so two transactions given the same
status never both record it. Only campaign messages have them: an agent's reply is no campaign's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, insert, select
from sqlalchemy.orm import Session

from tidings.campaigns.models import Campaign, CampaignVariant
from tidings.db import cast_table, utcnow
from tidings.delivery.models import Message
from tidings.profiles.models import Event

SENT = "Notification Sent"
DELIVERED = "Notification Delivered"
VIEWED = "Notification Viewed"
REPLIED = "Notification Replied"
NAMES = (SENT, DELIVERED, VIEWED, REPLIED)
CHANNEL = "WhatsApp"

_STEPS = (SENT, DELIVERED, VIEWED)
_RANK = {"sent": 1, "delivered": 2, "read": 3}  # the steps a state has passed; earlier states none


def steps(old_state: str, new_state: str) -> tuple[str, ...]:
    """The events a row moving from ``old_state`` to ``new_state`` records: each step it passes, in
    order (none for a move to ``failed`` or backwards)."""
    return _STEPS[_RANK.get(old_state, 0) : _RANK.get(new_state, 0)]


@dataclass(frozen=True)
class Ledger:
    """What a system event needs of its ledger row."""

    id: int
    account_id: str
    profile_id: int
    campaign_id: int | None
    variant_id: int | None
    state: str


_TABLE = cast_table(Message.__table__)
LEDGER_COLUMNS = (
    _TABLE.c.id,
    _TABLE.c.account_id,
    _TABLE.c.profile_id,
    _TABLE.c.campaign_id,
    _TABLE.c.variant_id,
    _TABLE.c.state,
)
# The rows to move, locked as the UPDATE would lock them, in id order (two writers lock in one order).
_LOCKED = (
    select(*LEDGER_COLUMNS, _TABLE.c.replied_at)
    .where(_TABLE.c.id.in_(bindparam("_ids", expanding=True)))
    .order_by(_TABLE.c.id)
    .with_for_update(key_share=True)
)


def locked_rows(session: Session, ids: Iterable[int]) -> list[Row[Any]]:
    """The ledger rows ``ids`` (id, account, profile, campaign, variant, state, replied_at), locked for
    this transaction: their state is the one the transaction's UPDATE will move from."""
    keys = sorted(set(ids))
    return list(session.connection().execute(_LOCKED, {"_ids": keys})) if keys else []


def ledger(row: Any) -> Ledger:
    return Ledger(row.id, row.account_id, row.profile_id, row.campaign_id, row.variant_id, row.state)


def record(session: Session, moves: Sequence[tuple[Ledger, Sequence[str], datetime]]) -> int:
    """Insert the system events of these moves — (row, event names, time) — in one executemany, with
    the campaign's id, name and type, the variant and the channel as properties (CleverTap's names).
    Rows of no campaign are left out. Returns how many were recorded."""
    moves = [(row, names, ts) for row, names, ts in moves if names and row.campaign_id is not None]
    if not moves:
        return 0
    campaign_ids = {row.campaign_id for row, _, _ in moves}
    campaigns = {
        c.id: (c.name, c.kind)
        for c in session.execute(
            select(Campaign.id, Campaign.name, Campaign.kind).where(Campaign.id.in_(campaign_ids))
        )
    }
    variant_ids = {row.variant_id for row, _, _ in moves if row.variant_id is not None}
    variants: dict[int, str] = (
        {
            v.id: v.key
            for v in session.execute(
                select(CampaignVariant.id, CampaignVariant.key).where(CampaignVariant.id.in_(variant_ids))
            )
        }
        if variant_ids
        else {}
    )
    now = utcnow()
    rows = []
    for row, names, ts in moves:
        assert row.campaign_id is not None
        name, kind = campaigns.get(row.campaign_id, ("", ""))
        properties: dict[str, Any] = {"Campaign id": row.campaign_id, "Campaign name": name}
        properties["Campaign type"] = kind
        if row.variant_id is not None and row.variant_id in variants:
            properties["Variant"] = variants[row.variant_id]
        properties["Channel"] = CHANNEL
        for event in names:
            rows.append(
                {
                    "account_id": row.account_id,
                    "profile_id": row.profile_id,
                    "name": event,
                    "properties": properties,
                    "ts": ts,
                    "created_at": now,
                }
            )
    session.execute(insert(cast_table(Event.__table__)), rows)
    return len(rows)
