"""The inbox benchmark's data set (bench/inbox_data.py) at a tiny size, on SQLite and PostgreSQL: the counts
it promises, one account's rows apart from the other's, every state and filter of the inbox finding
conversations, and the measurement and the page runner (bench/pages.py --inbox) running over it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench.inbox_data import AGENTS, MANIFEST, Sizes, fill, measure, queries
from bench.pages import INBOX, run, serving
from tidings.conversations.models import Conversation, ConversationLabel, InboundMessage, State
from tidings.conversations.service import Filters, counts, get_conversation, list_conversations, thread
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.profiles.models import Profile
from tidings.users.models import User
from tidings.users.service import authenticate

SIZES = Sizes(conversations=400, long_thread=40)


@pytest.fixture
def filled(db: Database, tmp_path: Path) -> dict:
    """The data set, in a database of its own on SQLite and in the test database on PostgreSQL (emptied
    afterwards by the ``db`` fixture); the planner's statistics left alone (``analyze=False``)."""
    url = f"sqlite:///{tmp_path / 'inbox.db'}" if db.engine.dialect.name == "sqlite" else db.url
    return fill(url, tmp_path / "data", SIZES, say=lambda _line: None, analyze=False)


def test_counts_and_services(filled: dict) -> None:
    account = filled["account"]
    main = account["account_id"]
    assert json.loads((Path(filled["data_dir"]) / MANIFEST).read_text()) == filled
    db = Database(filled["database_url"])
    try:
        with db.read() as session:

            def count(model: type, *where: object) -> int:
                return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

            assert count(Conversation, Conversation.account_id == main) == SIZES.conversations
            assert count(Profile, Profile.account_id == main) == SIZES.conversations
            assert count(InboundMessage, InboundMessage.account_id == main) == account["inbound"]
            assert account["inbound"] >= SIZES.conversations + SIZES.long_thread
            assert count(Message, Message.account_id == main) == account["messages"] > 0
            assert count(ConversationLabel, ConversationLabel.account_id == main) == account["labels"] > 0
            assert count(User, User.account_id == main, User.role == "agent") == AGENTS
            other = filled["others"][0]["account_id"]
            for model in (Conversation, InboundMessage, Message, ConversationLabel):
                assert count(model, model.account_id == other) > 0  # type: ignore[attr-defined]
            # every conversation's number is its profile's, and its messages come from that number
            mismatched = session.scalar(
                select(func.count())
                .select_from(Conversation)
                .join(Profile, Profile.id == Conversation.profile_id)
                .where(Profile.phone != Conversation.phone)
            )
            assert mismatched == 0
            user = authenticate(session, main, filled["email"], filled["password"])
            assert isinstance(user, User) and user.role == "admin"

            tabs = counts(session, main)
            assert sum(tab["total"] for tab in tabs.values()) == SIZES.conversations
            assert all(tabs[s.value]["total"] > 0 for s in State), tabs  # inactive too
            assert tabs["new"]["unread"] == tabs["new"]["total"]

            def listed(filters: Filters) -> list:
                found = list_conversations(session, main, filters, limit=500)
                assert all(item.conversation.account_id == main for item in found)
                return found

            assert len(listed(Filters())) == SIZES.conversations
            for state in State:
                assert {item.state for item in listed(Filters(state=state))} == {state}
            by_label = listed(Filters(label=account["label"]))
            assert by_label and all(account["label"] in item.labels for item in by_label)
            by_agent = listed(Filters(assignee_id=account["assignee_id"]))
            assert by_agent and all(i.conversation.assignee_id == account["assignee_id"] for i in by_agent)
            assert listed(Filters(campaign_id=account["campaign_id"]))
            assert listed(Filters(q=account["word"]))
            assert all(account["name"] in (i.name or "").lower() for i in listed(Filters(q=account["name"])))
            waiting = [i.conversation.waiting_since for i in listed(Filters(state=State.new))]
            assert waiting == sorted(waiting)  # the oldest waiting first

            long_one = get_conversation(session, main, account["conversation_id"])
            lines = thread(session, long_one)
            assert len(lines) >= SIZES.long_thread
            assert {line.who for line in lines} == {"user", "agent", "campaign", "note"}
    finally:
        db.dispose()


def test_measure_runs_every_call(filled: dict) -> None:
    lines: list[str] = []
    timings = measure(filled, runs=2, warmup=0, say=lines.append)
    assert list(timings) == [label for label, _ in queries(filled["account"])]
    assert all(len(times) == 2 for times in timings.values())
    assert len(lines) == len(timings)


def test_inbox_pages_over_a_real_server(filled: dict, tmp_path: Path) -> None:
    """bench/pages.py --inbox: every inbox page answers 200 to the signed-in admin over this data set."""
    lines: list[str] = []
    with serving(filled, tmp_path) as url:
        results = run(filled, url, runs=2, warmup=0, inbox=True, say=lines.append)
    assert lines[0].endswith(": ok")  # signed in
    assert [r.label for r in results] == list(INBOX)
    # two timings each, or fewer when one passed the limit (a busy machine): the runner stops at a p95 decided
    for result in results:
        assert result.status == 200 and not result.problem, result
        assert len(result.times_ms) == 2 or result.cut, result
