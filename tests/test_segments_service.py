"""The segments service as campaigns use it: saved segments inlined, estimates, campaigns that target a
saved segment (evaluated when they start), and segments that cannot be deleted while in use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.test_segments_property import Person, store
from tidings.accounts.service import NewAccount
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign, stop_campaign
from tidings.db import Database
from tidings.delivery.models import Message
from tidings.errors import Conflict, Invalid
from tidings.profiles.models import Profile
from tidings.secrets import SecretBox
from tidings.segments import service
from tidings.segments.compiler import MAX_DEPTH
from tidings.templates.service import create_template

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
PUNE = {"property": "City", "op": "equals", "value": "Pune"}
BUYERS = {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}}


def seed(db: Database, account_id: str) -> None:
    twice: list[tuple[str, dict[str, Any], datetime]] = [
        ("Charged", {}, NOW - timedelta(days=d)) for d in (1, 2)
    ]
    store(
        db,
        account_id,
        [
            Person("loyal", {"City": "Pune"}, list(twice)),
            Person("once", {"City": "Pune"}, [("Charged", {}, NOW - timedelta(days=3))]),
            Person("refunded", {"City": "Pune"}, [*twice, ("Refund", {}, NOW - timedelta(days=1))]),
            Person("far", {"City": "Delhi"}, list(twice)),
        ],
    )


def saved(db: Database, account_id: str, name: str, definition: dict[str, Any]) -> int:
    with db.session() as session:
        return service.create_segment(session, account_id, name=name, definition=definition).id


def test_resolve_target_inlines_saved_segments(db: Database, account: NewAccount) -> None:
    pune = saved(db, account.account_id, "Pune", PUNE)
    loyal = saved(db, account.account_id, "Loyal", {"and": [{"segment_id": pune}, BUYERS]})
    target = {"or": [{"segment_id": loyal}, {"not": {"segment_id": pune}}]}
    with db.session() as session:
        resolved = service.resolve_target(session, account.account_id, target)
    assert resolved == {"or": [{"and": [PUNE, BUYERS]}, {"not": PUNE}]}
    assert target == {"or": [{"segment_id": loyal}, {"not": {"segment_id": pune}}]}  # not changed
    with db.session() as session:
        assert service.resolve_target(session, account.account_id, {}) == {}
        assert service.resolve_target(session, account.account_id, {"all": True}) == {"all": True}


def test_unknown_and_foreign_segments_are_refused(db: Database, account: NewAccount, box: SecretBox) -> None:
    from tests.conftest import new_account

    other = new_account(db, box, "Other")
    theirs = saved(db, other.account_id, "Theirs", PUNE)
    with db.session() as session, pytest.raises(Invalid) as caught:
        service.resolve_target(session, account.account_id, {"and": [PUNE, {"not": {"segment_id": theirs}}]})
    assert caught.value.code == "segment_not_found"
    assert (
        caught.value.message
        == f"target.and[1].not.segment_id: segment {theirs} does not exist in this account"
    )
    with db.session() as session, pytest.raises(Invalid, match=r"target\.did\.count\.at_least"):
        service.resolve_target(
            session, account.account_id, {"did": {"event": "X", "count": {"at_least": -1}}}
        )


def test_estimate(db: Database, account: NewAccount) -> None:
    seed(db, account.account_id)
    loyal = saved(db, account.account_id, "Loyal", {"and": [PUNE, BUYERS]})
    with db.session() as session:
        assert service.estimate(session, account.account_id, {}, NOW) == 4
        assert service.estimate(session, account.account_id, {"segment_id": loyal}, NOW) == 2
        target = {"and": [{"segment_id": loyal}, {"did_not": "Refund"}]}
        assert service.estimate(session, account.account_id, target, NOW) == 1
        # the same segment a month later: nobody bought twice in the last 30 days
        assert service.estimate(session, account.account_id, target, NOW + timedelta(days=31)) == 0


def test_update_is_checked_like_create(db: Database, account: NewAccount) -> None:
    a = saved(db, account.account_id, "A", PUNE)
    b = saved(db, account.account_id, "B", {"not": {"segment_id": a}})
    with db.session() as session, pytest.raises(Invalid) as caught:
        service.update_segment(session, account.account_id, a, definition={"and": [PUNE, {"segment_id": b}]})
    assert caught.value.code == "segment_cycle"
    assert caught.value.message.endswith(f"refers back to itself ({a} → {b} → {a})")
    with db.session() as session:
        assert service.get_segment(session, account.account_id, a).definition == PUNE
        service.update_segment(session, account.account_id, b, name="B2", definition=BUYERS)
    with db.session() as session:
        segment = service.get_segment(session, account.account_id, b)
        assert (segment.name, segment.definition) == ("B2", BUYERS)


def _campaign(db: Database, account_id: str, target: dict[str, Any]) -> int:
    with db.session() as session:
        template = create_template(session, account_id, name="a:b", body="Hi", category="MARKETING")
        return create_campaign(
            session,
            account_id,
            CampaignCreate(
                name="loyal",
                template_id=template.id,
                variables=[],
                target=target,
                send_at=NOW - timedelta(hours=1),
            ),
        ).id


def _planned(db: Database, campaign_id: int) -> set[str]:
    with db.session() as session:
        rows = session.scalars(
            select(Profile.identity)
            .join(Message, Message.profile_id == Profile.id)
            .where(Message.campaign_id == campaign_id)
        )
        return set(rows)


def test_a_campaign_targets_a_saved_segment_as_it_is_when_the_campaign_starts(
    db: Database, account: NewAccount
) -> None:
    seed(db, account.account_id)
    segment = saved(db, account.account_id, "Pune", PUNE)
    campaign_id = _campaign(db, account.account_id, {"and": [{"segment_id": segment}, {"did_not": "Refund"}]})
    with db.session() as session:  # changed after the campaign was created, before it starts
        service.update_segment(session, account.account_id, segment, definition={"and": [PUNE, BUYERS]})
    with db.session() as session:
        assert start_campaign(session, campaign_id, NOW) is not None
    assert _planned(db, campaign_id) == {"loyal"}


def test_a_campaign_cannot_target_an_unknown_segment(db: Database, account: NewAccount) -> None:
    with pytest.raises(Invalid) as caught:
        _campaign(db, account.account_id, {"or": [PUNE, {"segment_id": 424242}]})
    assert caught.value.code == "segment_not_found"
    assert caught.value.message == "target.or[1].segment_id: segment 424242 does not exist in this account"
    with pytest.raises(Invalid) as caught:
        _campaign(db, account.account_id, {"and": [PUNE, {"did": {"event": "X", "count": {"at_least": 0}}}]})
    assert caught.value.message == "target.and[1].did.count.at_least must be a positive integer"


def test_a_segment_used_by_a_campaign_still_to_run_cannot_be_deleted(
    db: Database, account: NewAccount
) -> None:
    segment = saved(db, account.account_id, "Pune", PUNE)
    campaign_id = _campaign(db, account.account_id, {"not": {"segment_id": segment}})
    with db.session() as session, pytest.raises(Conflict) as caught:
        service.delete_segment(session, account.account_id, segment)
    assert caught.value.code == "segment_in_use"
    assert "used by campaign 'loyal' (scheduled)" in caught.value.message
    with db.session() as session:
        stop_campaign(session, account.account_id, campaign_id)
    with db.session() as session:
        service.delete_segment(session, account.account_id, segment)
    with db.session() as session:
        assert service.list_segments(session, account.account_id) == []


def test_chains_of_saved_segments_are_limited_and_stay_valid(db: Database, account: NewAccount) -> None:
    acc = account.account_id
    d = saved(db, acc, "D", PUNE)
    c = saved(db, acc, "C", {"not": {"segment_id": d}})
    b = saved(db, acc, "B", {"and": [BUYERS, {"segment_id": c}]})
    a = saved(db, acc, "A", {"or": [{"segment_id": b}]})  # A → B → C → D: four in a row
    e = saved(db, acc, "E", PUNE)
    with db.session() as session, pytest.raises(Invalid) as caught:
        service.create_segment(session, acc, name="F", definition={"segment_id": a})
    assert "more than 4 saved segments refer to each other in a row" in caught.value.message
    # D may not start referring to E: A → B → C → D → E would be five
    with db.session() as session, pytest.raises(Invalid) as caught:
        service.update_segment(session, acc, d, definition={"and": [PUNE, {"segment_id": e}]})
    assert caught.value.message.startswith("segment 'A' refers to this segment and would become invalid: ")
    with db.session() as session:
        assert service.get_segment(session, acc, d).definition == PUNE
    # a campaign may target A (four in a row), and it resolves and compiles
    seed(db, acc)
    with db.session() as session:
        assert service.estimate(session, acc, {"segment_id": a}, NOW) == 1  # bought twice, not in Pune: "far"


def test_the_deepest_target_allowed_still_compiles(db: Database, account: NewAccount) -> None:
    """A target and four saved segments in a row, each nested about as deeply as allowed."""

    def deep(node: dict[str, Any], levels: int) -> dict[str, Any]:
        for i in range(levels):
            node = {"not": node} if i % 2 else {"and": [node, {"did": {"event": "X", "where": PUNE}}]}
        return node

    acc = account.account_id
    segment = saved(db, acc, "S0", deep(PUNE, MAX_DEPTH - 2))
    for level in range(1, 4):
        segment = saved(db, acc, f"S{level}", deep({"segment_id": segment}, MAX_DEPTH - 2))
    seed(db, acc)
    with db.session() as session:
        assert service.estimate(session, acc, deep({"segment_id": segment}, MAX_DEPTH - 2), NOW) in range(5)
