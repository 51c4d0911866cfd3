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
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Row,
    String,
    any_,
    bindparam,
    case,
    cast,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
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
PROPERTIES = ("Campaign id", "Campaign name", "Campaign type", "Variant", "Channel")  # what each carries

_STEPS = (SENT, DELIVERED, VIEWED)
_RANK = {"sent": 1, "delivered": 2, "read": 3}  # the steps a state has passed; earlier states none


def steps(old_state: str, new_state: str) -> tuple[str, ...]:
    """The events a row moving from ``old_state`` to ``new_state`` records: each step it passes, in
    order (none for a move to ``failed`` or backwards)."""
    return _STEPS[_RANK.get(old_state, 0) : _RANK.get(new_state, 0)]


_TABLE = cast_table(Message.__table__)
# The rows to move, locked as the UPDATE would lock them, in id order (two writers lock in one order).
_LOCKED = (
    select(_TABLE.c.id, _TABLE.c.campaign_id, _TABLE.c.state, _TABLE.c.replied_at)
    .where(_TABLE.c.id.in_(bindparam("_ids", expanding=True)))
    .order_by(_TABLE.c.id)
    .with_for_update(key_share=True)
)


def locked_rows(session: Session, ids: Iterable[int]) -> list[Row[Any]]:
    """The ledger rows ``ids`` (id, campaign_id, state, replied_at), locked for this transaction: their
    state is the one the transaction's UPDATE will move from."""
    keys = sorted(set(ids))
    return list(session.connection().execute(_LOCKED, {"_ids": keys})) if keys else []


def _properties(dialect: str, campaigns: Any, variants: Any) -> Any:
    """The event's properties built by the database from the campaign's and variant's rows (CleverTap's
    names; no ``Variant`` for a campaign of one template)."""
    build = func.jsonb_build_object if dialect == "postgresql" else func.json_object
    common = (
        ("Campaign id", campaigns.c.id),
        ("Campaign name", campaigns.c.name),
        ("Campaign type", campaigns.c.kind),
    )

    def of(*pairs: tuple[str, Any]) -> Any:
        return build(*(part for key, value in pairs for part in (_constant(key), value)))

    return case(
        (variants.c.key.is_(None), of(*common, ("Channel", _constant(CHANNEL)))),
        else_=of(*common, ("Variant", variants.c.key), ("Channel", _constant(CHANNEL))),
    )


def _constant(text: str) -> Any:
    """A constant string written into the statement (ours, without quotes): no parameter of unknown type."""
    assert "'" not in text
    return literal_column(f"'{text}'", String())


def _ids(dialect: str) -> Any:
    """The rows ``_ids``: ``id = ANY(:_ids)`` (one array parameter) on PostgreSQL, an expanding IN on
    SQLite (measured cheaper there than an executemany of ``id = :_id``)."""
    if dialect == "postgresql":
        return _TABLE.c.id == any_(bindparam("_ids", type_=ARRAY(BigInteger())))
    return _TABLE.c.id.in_(bindparam("_ids", expanding=True))


def _param(dialect: str, name: str, type_: Any) -> Any:
    """A parameter of the SELECT list, typed on PostgreSQL (which cannot tell a bare one's type); SQLite
    takes it as it comes (a CAST there would change a time into a number)."""
    param = bindparam(name, type_=type_)
    return cast(param, type_) if dialect == "postgresql" else param


# The ledger column that holds each event's time once the row has passed that step (set with the status's
# time, or the reply's, by the UPDATE that moved it; a step skipped gets the later step's time).
_COLUMN = {SENT: "sent_at", DELIVERED: "delivered_at", VIEWED: "read_at", REPLIED: "replied_at"}


@lru_cache(maxsize=32)
def _insert(dialect: str, name: str, guard: str | None) -> Any:
    """``INSERT INTO events … SELECT`` the event ``name`` of the ledger rows ``_ids`` joined to their
    campaign (rows of no campaign have none) and variant, at the row's time of that step (``_now`` when
    it has none yet), built once per database and event. ``guard``: only the rows in that state, locked
    (``FOR NO KEY UPDATE`` on PostgreSQL) so that a transaction moving one meanwhile is waited for and
    then seen."""
    events = cast_table(Event.__table__)
    campaigns = cast_table(Campaign.__table__)
    variants = cast_table(CampaignVariant.__table__)
    now = _param(dialect, "_now", events.c.created_at.type)
    source = (
        select(
            _TABLE.c.account_id,
            _TABLE.c.profile_id,
            _constant(name),
            _properties(dialect, campaigns, variants),
            func.coalesce(_TABLE.c[_COLUMN[name]], now),
            now,
        )
        .select_from(
            _TABLE.join(campaigns, campaigns.c.id == _TABLE.c.campaign_id).outerjoin(
                variants, variants.c.id == _TABLE.c.variant_id
            )
        )
        .where(_ids(dialect))
    )
    if guard is not None:
        source = source.where(_TABLE.c.state == guard).with_for_update(of=_TABLE, key_share=True)
    columns = ["account_id", "profile_id", "name", "properties", "ts", "created_at"]
    return insert(events).from_select(columns, source)


Move = tuple[int, int | None, Sequence[str]]  # ledger id, its campaign, the events of its move


def record(
    session: Session, moves: Sequence[Move], *, guard: str | None = None, now: datetime | None = None
) -> None:
    """Insert the system events of these moves, one ``INSERT … SELECT`` per event name (the campaign's
    id, name and type and the variant taken from their rows, the time from the ledger row: no lookup,
    no JSON built here). Called after the UPDATE that moved the rows, so that their times are set; with
    ``guard``, before it, for the rows still in that state (see ``_insert``), at ``now`` (the time the
    UPDATE will set). Rows of no campaign have none."""
    ids: dict[str, list[int]] = {}
    for row_id, campaign_id, names in moves:
        if campaign_id is not None:
            for name in names:
                ids.setdefault(name, []).append(row_id)
    if not ids:
        return
    dialect = session.get_bind().dialect.name
    now = now or utcnow()
    for name in NAMES:
        if name in ids:
            session.execute(_insert(dialect, name, guard), {"_ids": ids[name], "_now": now})
