"""The dashboard benchmark's data set (bench/pages_data.py) at a tiny size, on SQLite and PostgreSQL: the
counts it promises, one account's rows apart from the others', and the services the pages call answer
on it; and the runner (bench/pages.py) against a real server over it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from bench.pages import Result, run, serving, sign_in
from bench.pages_data import MANIFEST, OTHER_ACCOUNTS, Sizes, fill
from tidings.campaigns.models import Campaign
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.profiles.models import Event, Profile
from tidings.segments.models import Segment
from tidings.segments.service import estimate
from tidings.stats.service import campaign_stats
from tidings.templates.models import Template
from tidings.users.models import User
from tidings.users.service import authenticate

SIZES = Sizes(profiles=600, events=6000, campaigns=40, messages_per_campaign=100)


@pytest.fixture
def filled(db: Database, tmp_path: Path) -> dict:
    """The data set, in a database of its own on SQLite and in the test database on PostgreSQL (emptied
    afterwards by the ``db`` fixture)."""
    url = f"sqlite:///{tmp_path / 'pages.db'}" if db.engine.dialect.name == "sqlite" else db.url
    return fill(url, tmp_path / "data", SIZES, say=lambda _line: None, analyze=False)


def test_counts_and_services(filled: dict) -> None:
    account = filled["account"]
    main = account["account_id"]
    assert json.loads((Path(filled["data_dir"]) / MANIFEST).read_text()) == filled
    assert len(filled["others"]) == OTHER_ACCOUNTS
    db = Database(filled["database_url"])
    try:
        with db.read() as session:

            def count(model: type, *where: object) -> int:
                return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

            assert count(Profile, Profile.account_id == main) == SIZES.profiles == account["profiles"]
            assert count(Event, Event.account_id == main) == SIZES.events == account["events"]
            assert count(Campaign, Campaign.account_id == main) == SIZES.campaigns
            assert count(Template, Template.account_id == main) == SIZES.templates
            assert count(Segment, Segment.account_id == main) == SIZES.segments
            assert count(Message, Message.account_id == main) == account["messages"] > 0
            for other in filled["others"]:  # the other accounts have rows of every kind
                for model in (Profile, Event, Campaign, Message):
                    assert count(model, model.account_id == other["account_id"]) > 0  # type: ignore[attr-defined]
            opted = count(Profile, Profile.account_id == main, Profile.whatsapp_opt_in.is_(True))
            assert 0.5 < opted / SIZES.profiles < 0.7
            kinds_states = set(
                session.execute(
                    select(Campaign.kind, Campaign.state).where(Campaign.account_id == main)
                ).all()
            )
            assert {k for k, _ in kinds_states} == {"one_time", "single_action", "inaction", "on_date"}
            assert {s for _, s in kinds_states} == {"draft", "scheduled", "running", "completed", "stopped"}
            # only the campaigns that ran have ledger rows
            ran = select(Campaign.id).where(Campaign.state.in_(("draft", "scheduled")))
            assert count(Message, Message.campaign_id.in_(ran)) == 0

            # the dashboard user signs in with the manifest's password
            user = authenticate(session, main, filled["email"], filled["password"])
            assert isinstance(user, User) and user.account_id == main and user.role == "admin"

            # the services the pages call answer on it, for this account only
            refunded = session.scalar(
                select(func.count(func.distinct(Event.profile_id))).where(
                    Event.account_id == main, Event.name == "Refund"
                )
            )
            assert estimate(session, main, {"did": "Refund"}, utcnow()) == refunded
            assert estimate(session, main, {"all": True}, utcnow()) == SIZES.profiles
            stats = campaign_stats(session, account["campaign_id"])
            assert stats["audience"] == count(Message, Message.campaign_id == account["campaign_id"]) > 0
            assert stats["sent"] > 0 and stats["delivered"] > 0 and stats["read"] > 0
            assert (
                stats["audience"]
                == stats["sent"] + stats["errors"] + stats["control_group"] + stats["pending"]
            )
            busiest = session.scalar(
                select(Profile.identity)
                .join(Event, Event.profile_id == Profile.id)
                .where(Profile.account_id == main)
                .group_by(Profile.identity)
                .order_by(func.count().desc())
                .limit(1)
            )
            assert busiest == account["identity"]
    finally:
        db.dispose()


def test_runner_over_a_real_server(filled: dict, tmp_path: Path) -> None:
    """The runner's mechanics on routes that exist today: times per path, the status, the verdict."""
    lines: list[str] = []
    with serving(filled, tmp_path) as url:
        with httpx.Client(base_url=url) as http:
            assert "without a tidings_session cookie" in sign_in(http, filled["email"], "not-the-password")
            assert http.get("/campaigns").status_code == 303  # to the sign-in page
            assert sign_in(http, filled["email"], filled["password"]) == ""
            assert http.get("/campaigns").status_code == 200
        results = run(
            filled,
            url,
            runs=4,
            warmup=1,
            paths=["/healthz", "/api/v1/campaigns", "/api/v1/campaigns/{campaign_id}/stats", "/no-such-page"],
            say=lines.append,
        )
    by_label = {r.label: r for r in results}
    for path in ("/healthz", "/api/v1/campaigns", "/api/v1/campaigns/{campaign_id}/stats"):
        result = by_label[path]
        # four timings, or fewer when one passed the limit (a busy machine): the runner stops at a p95 decided
        assert result.status == 200 and (len(result.times_ms) == 4 or result.cut), lines
    missing = by_label["/no-such-page"]
    assert missing.status == 404 and not missing.ok
    assert "HTTP 404" in lines[-1] and "FAIL" in lines[-1]
    assert len(lines) == 4


def test_verdict() -> None:
    fast = Result("fast", 200, [10.0] * 19 + [400.0])  # p95 of 20 is the 19th
    slow = Result("slow", 200, [10.0] * 18 + [400.0, 400.0])
    assert fast.ok and fast.percentile(95) == 10.0
    assert not slow.ok and slow.percentile(95) == 400.0
    assert not Result("refused", 500, [1.0]).ok
    assert not Result("down", problem="ConnectError").ok
    assert not Result("stopped early", 200, [10.0, 400.0], cut=True).ok
