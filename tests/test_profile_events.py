"""A profile's latest events, newest first, a page at a time from ix_events_profile_ts (migration 0007)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from tidings.accounts.service import NewAccount
from tidings.db import Database, alembic_config, upgrade
from tidings.errors import Invalid
from tidings.profiles import service
from tidings.profiles.models import Profile

T0 = 1_790_000_000


def _store(db: Database, account: NewAccount) -> Profile:
    """u1 with 7 events, three of them at the same second (their order is their id's), and u2 with one."""
    records: list[dict[str, Any]] = [{"type": "profile", "identity": "u1", "profileData": {"Name": "U"}}]
    records += [
        {
            "type": "event",
            "identity": "u1",
            "evtName": f"E{n}",
            "evtData": {"n": n},
            "ts": T0 + min(n, 4) * 60,
        }
        for n in range(7)
    ]
    records.append({"type": "event", "identity": "u2", "evtName": "Other", "ts": T0 + 999})
    with db.session() as session:
        assert not service.ingest(session, account.account_id, records).unprocessed
    with db.read() as session:
        return service.get_profile(session, account.account_id, "u1")


def test_events_are_paged_newest_first_by_cursor(db: Database, account: NewAccount) -> None:
    profile = _store(db, account)
    pages: list[list[str]] = []
    cursor: str | None = None
    with db.read() as session:
        while True:
            events, cursor = service.profile_events(session, profile, limit=3, cursor=cursor)
            pages.append([e.name for e in events])
            if cursor is None:
                break
        with pytest.raises(Invalid):
            service.profile_events(session, profile, cursor="soon")
    # E4, E5, E6 share a time: the later id first.
    assert pages == [["E6", "E5", "E4"], ["E3", "E2", "E1"], ["E0"]]


def _plan(db: Database, run: Callable[[Session], object], table: str) -> str:
    """The plan of the statement ``run`` reads ``table`` with (the planner told not to scan whole tables)."""
    statements: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
            statements.append((statement, parameters))

    with db.read() as session:
        event.listen(session.connection(), "before_cursor_execute", keep)
        run(session)
        event.remove(session.connection(), "before_cursor_execute", keep)
    (statement, parameters) = statements[-1]
    postgres = db.engine.dialect.name == "postgresql"
    with db.engine.connect() as conn:
        if postgres:
            conn.exec_driver_sql("SET enable_seqscan = off")
        explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        rows = conn.exec_driver_sql(explain + statement, parameters).all()
        conn.rollback()
    return "\n".join(str(row[-1]) for row in rows)


def test_each_page_is_a_range_of_the_index_in_its_order(db: Database, account: NewAccount) -> None:
    profile = _store(db, account)
    with db.read() as session:
        _, cursor = service.profile_events(session, profile, limit=3)
    for page in (None, cursor):  # the first page, and one after a cursor
        plan = _plan(db, lambda s, page=page: service.profile_events(s, profile, 3, page), "events")
        assert "ix_events_profile_ts" in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def test_newest_profiles_are_paged_from_their_index(db: Database, account: NewAccount) -> None:
    with db.session() as session:
        service.ingest(
            session,
            account.account_id,
            [{"type": "profile", "identity": f"p{n}", "profileData": {}} for n in range(5)],
        )
    found: list[str] = []
    cursor: str | None = None
    with db.read() as session:
        while True:
            profiles, cursor = service.newest_profiles(session, account.account_id, 2, cursor)
            found += [p.identity for p in profiles]
            if cursor is None:
                break
        with pytest.raises(Invalid):
            service.newest_profiles(session, account.account_id, cursor="9" * 30)
    assert found == [f"p{n}" for n in reversed(range(5))]
    plan = _plan(db, lambda s: service.newest_profiles(s, account.account_id, 2, "3"), "profiles")
    assert "ix_profiles_account_newest" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan


def _indexes(db: Database) -> set[str]:
    found = inspect(db.engine)
    return {ix["name"] or "" for table in ("events", "profiles") for ix in found.get_indexes(table)}


def test_migration_0007_adds_and_removes_the_indexes(db: Database) -> None:
    added = {"ix_events_profile_ts", "ix_profiles_account_newest"}
    assert added <= _indexes(db)
    command.downgrade(alembic_config(db.engine), "0006")
    try:
        assert not added & _indexes(db)
        assert {"ix_events_profile_name_ts", "ix_profiles_account_name_key"} <= _indexes(db)
    finally:
        upgrade(db.engine)
    assert added <= _indexes(db)
