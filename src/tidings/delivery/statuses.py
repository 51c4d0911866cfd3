"""Statuses from webhooks: the provider's sent / delivered / read / failed moves a ledger row forward,
set-based (``apply_statuses``); a status whose message is not recorded yet waits in
``pending_statuses`` (``delivery.outcomes`` applies it once the send is recorded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, String, bindparam, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from tidings.db import cast_table, utcnow
from tidings.delivery import system_events
from tidings.delivery.models import Message, PendingStatus
from tidings.providers.base import Status, StatusUpdate

# Where each status may come from: states only move forward, ``failed`` is final.
# ``queued`` is a source too: a row queued again after an unknown outcome (or a retry-later answer) whose
# status then proves the provider took it is Sent, and is not sent again.
_FORWARD: dict[Status, tuple[tuple[str, ...], str]] = {
    Status.SENT: (("queued", "sending"), "sent"),
    Status.DELIVERED: (("queued", "sending", "sent"), "delivered"),
    Status.READ: (("queued", "sending", "sent", "delivered"), "read"),
    Status.FAILED: (("queued", "sending", "sent"), "failed"),
}

TEST_REF_PREFIX = "test-"  # client_ref of ``tidings send-test`` messages: not in the ledger, never pending


def status_to_json(update_: StatusUpdate) -> dict[str, Any]:
    return {
        "status": update_.status.value,
        "timestamp": update_.timestamp.isoformat(),
        "provider_message_id": update_.provider_message_id,
        "client_ref": update_.client_ref,
        "error_code": update_.error_code,
        "error_detail": update_.error_detail,
    }


def status_from_json(data: dict[str, Any]) -> StatusUpdate:
    return StatusUpdate(
        status=Status(data["status"]),
        timestamp=datetime.fromisoformat(data["timestamp"]),
        provider_message_id=data.get("provider_message_id"),
        client_ref=data.get("client_ref"),
        error_code=data.get("error_code"),
        error_detail=data.get("error_detail"),
    )


def _status_update(status: Status) -> Any:
    """The forward-only UPDATE of one row (by id) for one status, built once: the webhook hot path only
    binds values, many rows in one executemany."""
    table = cast_table(Message.__table__)
    sources, target = _FORWARD[status]
    ts = bindparam("_ts", type_=table.c.sent_at.type)
    values: dict[str, Any] = {
        "state": target,
        "provider_message_id": func.coalesce(table.c.provider_message_id, bindparam("_pid", type_=String())),
        "sent_at": func.coalesce(table.c.sent_at, ts),
        "lease_until": None,
    }
    if status in (Status.DELIVERED, Status.READ):
        values["delivered_at"] = func.coalesce(table.c.delivered_at, ts)
    if status is Status.READ:
        values["read_at"] = func.coalesce(table.c.read_at, ts)
    if status is Status.FAILED:
        values |= {"reason": bindparam("_reason"), "error_detail": bindparam("_detail"), "failed_at": ts}
    return (
        update(table)
        # The states as literals: an expanding IN parameter cannot go into an executemany.
        .where(table.c.id == bindparam("_id"), table.c.state.in_([literal_column(f"'{s}'") for s in sources]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


_STATUS_UPDATES = {status: _status_update(status) for status in Status}
_STATUS_ORDER = {status: rank for rank, status in enumerate(Status)}


def _ledger_id(update_: StatusUpdate) -> int | None:
    """Our ledger id, when the provider echoes it (``client_ref``, ``biz_opaque_callback_data``)."""
    ref = update_.client_ref
    # ASCII digits only ("²".isdigit() is true, int("²") is not), and no larger than a row id can be:
    # anything else is not one of ours, and the status is looked up by the provider's message id.
    if not ref or not ref.isascii() or not ref.isdigit() or len(ref) > 19:
        return None
    value = int(ref)
    return value if value <= 2**63 - 1 else None


def _fits(update_: StatusUpdate) -> bool:
    """Ids no longer than the ledger's columns: a status with a longer one names no message of ours (and
    could not be kept in ``pending_statuses``), so it is ignored."""
    return len(update_.provider_message_id or "") <= 128 and len(update_.client_ref or "") <= 100


def _rows_by(column: str) -> Any:
    """The lookup of ``_find_rows``, built once (Core, an expanding IN): the hot path only binds values.
    The rows are locked as the UPDATE would lock them (``FOR NO KEY UPDATE`` on PostgreSQL, in id order),
    so that the state read is the one the UPDATE moves from: the system events of a move are recorded by
    exactly one transaction."""
    table = cast_table(Message.__table__)
    columns = (
        table.c.id,
        table.c.account_id,
        table.c.campaign_id,
        table.c.state,
        table.c.provider_message_id,
    )
    return (
        select(*columns)
        .where(table.c[column].in_(bindparam("_keys", expanding=True)))
        .order_by(table.c.id)
        .with_for_update(key_share=True)
    )


_ROWS_BY_ID, _ROWS_BY_PID = _rows_by("id"), _rows_by("provider_message_id")


@dataclass
class _Rows:
    """The ledger rows a batch of statuses is about, as the batch moves them along."""

    state: dict[int, str]
    pid: dict[int, str | None]
    by_id: dict[tuple[str, int], int]  # (account, ledger id) → row
    by_pid: dict[tuple[str, str], int]  # (account, provider's message id) → row
    account: dict[int, str]
    campaign: dict[int, int | None]

    def find(self, account_id: str, update_: StatusUpdate) -> int | None:
        ledger_id = _ledger_id(update_)
        if ledger_id is not None:
            return self.by_id.get((account_id, ledger_id))
        return self.by_pid.get((account_id, update_.provider_message_id or ""))

    def move(self, row_id: int, state: str, pid: str | None) -> None:
        """An applied status moves the row, and gives it the provider's id if it had none."""
        self.state[row_id] = state
        if pid and self.pid[row_id] is None:
            self.pid[row_id] = pid
            self.by_pid.setdefault((self.account[row_id], pid), row_id)


def _find_rows(session: Session, items: Sequence[tuple[str, str, StatusUpdate]]) -> _Rows:
    """The rows the statuses name, in two indexed lookups at most: by primary key when the provider echoes
    our id, else by its message id."""
    ids = {i for _, _, u in items if (i := _ledger_id(u)) is not None}
    pids = {u.provider_message_id for _, _, u in items if _ledger_id(u) is None and u.provider_message_id}
    found: list[Row[Any]] = []
    if ids:
        found += session.connection().execute(_ROWS_BY_ID, {"_keys": list(ids)}).all()
    if pids:
        found += session.connection().execute(_ROWS_BY_PID, {"_keys": list(pids)}).all()
    return _Rows(
        state={row.id: row.state for row in found},
        pid={row.id: row.provider_message_id for row in found},
        by_id={(row.account_id, row.id): row.id for row in found},
        by_pid={(row.account_id, row.provider_message_id): row.id for row in found},
        account={row.id: row.account_id for row in found},
        campaign={row.id: row.campaign_id for row in found},
    )


def apply_statuses(
    session: Session, items: Sequence[tuple[str, str, StatusUpdate]], *, keep_unmatched: bool = True
) -> list[str]:
    """Move messages forward, set-based: one lookup of the rows, then one executemany ``UPDATE`` per
    status. ``items`` are ``(account id, provider, status)``; returns, for each, ``applied``, ``ignored``
    (a repeat, an older state than the message has, or a test send) or ``unmatched`` (no such message yet:
    kept in ``pending_statuses`` to apply once the send is recorded).

    The outcome is that of applying the statuses one at a time in the order sent, delivered, read, failed
    (the end state does not depend on the order they came in: states only move forward), decided from
    the rows as read here. Each UPDATE still checks the state itself, so a row changed meanwhile by
    another transaction is never moved backwards (the answer's counts may then be off by that row)."""
    outcomes = ["ignored"] * len(items)
    wanted = [
        i
        for i, (_, _, u) in enumerate(items)
        if not (u.client_ref or "").startswith(TEST_REF_PREFIX)
        and (_ledger_id(u) is not None or u.provider_message_id)
        and _fits(u)
    ]
    rows = _find_rows(session, [items[i] for i in wanted])
    batches: dict[Status, list[dict[str, Any]]] = {}
    unmatched: list[dict[str, Any]] = []
    moves: list[system_events.Move] = []
    for i in sorted(wanted, key=lambda i: _STATUS_ORDER[items[i][2].status]):
        account_id, provider, update_ = items[i]
        row_id = rows.find(account_id, update_)
        if row_id is None:
            outcomes[i] = "unmatched"
            unmatched.append(
                {
                    "account_id": account_id,
                    "provider": provider,
                    "provider_message_id": update_.provider_message_id,
                    "client_ref": update_.client_ref,
                    "status": status_to_json(update_),
                    "received_at": utcnow(),
                }
            )
            continue
        sources, target = _FORWARD[update_.status]
        if rows.state[row_id] not in sources:
            continue
        steps = system_events.steps(rows.state[row_id], target)
        moves.append((row_id, rows.campaign[row_id], steps))
        rows.move(row_id, target, update_.provider_message_id)
        outcomes[i] = "applied"
        params: dict[str, Any] = {
            "_id": row_id,
            "_pid": update_.provider_message_id,
            "_ts": update_.timestamp,
        }
        if update_.status is Status.FAILED:
            params["_reason"] = f"{provider}:{update_.error_code or 'failed'}"[:64]
            params["_detail"] = (update_.error_detail or "")[:500]
        batches.setdefault(update_.status, []).append(params)
    for status in sorted(batches, key=_STATUS_ORDER.__getitem__):
        session.execute(_STATUS_UPDATES[status], batches[status])
    system_events.record(session, moves)
    if unmatched and keep_unmatched:
        session.execute(insert(PendingStatus), unmatched)
    return outcomes


def apply_status(
    session: Session, account_id: str, provider: str, update_: StatusUpdate, *, keep_unmatched: bool = True
) -> str:
    """``apply_statuses`` for one status."""
    return apply_statuses(session, [(account_id, provider, update_)], keep_unmatched=keep_unmatched)[0]
