"""Planning a one-time campaign's audience into the ledger: reasons, control group, targets."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select

from tests.helpers import insert_profiles, phone
from tidings.accounts.service import NewAccount
from tidings.campaigns.models import Campaign
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.campaigns.triggers import engagement_context
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.delivery.planning import control_bucket, control_salts, plan_audience
from tidings.profiles.models import Profile
from tidings.segments.service import profile_condition
from tidings.templates.service import create_template


def _campaign(db: Database, account: NewAccount, **kwargs: Any) -> int:
    with db.session() as session:
        template = create_template(
            session,
            account.account_id,
            name="tickets:confirm",
            body="Hi {{1}}, ticket {{2}}",
            category="UTILITY",
        )
        kwargs.setdefault("variables", ['{{ Profile.Name | default: "there" }}', "{{ Profile.ticket }}"])
        campaign = create_campaign(
            session,
            account.account_id,
            CampaignCreate(name="c", template_id=template.id, target={"all": True}, **kwargs),
        )
        return campaign.id


def _states(db: Database, campaign_id: int) -> dict[str, tuple[str, str | None]]:
    with db.session() as session:
        rows = session.execute(
            select(Profile.identity, Message.state, Message.reason)
            .join(Profile, Profile.id == Message.profile_id)
            .where(Message.campaign_id == campaign_id)
        )
        return {identity: (state, reason) for identity, state, reason in rows}


def test_each_profile_gets_one_row_with_its_state_and_reason(db: Database, account: NewAccount) -> None:
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "ok", "phone": phone(1), "properties": {"ticket": "T1"}},
            {"identity": "no-name", "phone": phone(2), "properties": {"ticket": "T2"}},
            {"identity": "opted-out", "phone": phone(3), "opt_in": False, "properties": {"ticket": "T3"}},
            {"identity": "no-phone", "phone": None, "properties": {"ticket": "T4"}},
            {"identity": "no-ticket", "phone": phone(5), "properties": {"Name": "Ann"}},
            {"identity": "empty-ticket", "phone": phone(6), "properties": {"ticket": ""}},
        ],
    )
    campaign_id = _campaign(db, account)
    with db.session() as session:
        assert start_campaign(session, campaign_id, utcnow()) == 6
    assert _states(db, campaign_id) == {
        "ok": ("queued", None),
        "no-name": ("queued", None),  # the default fills it
        "opted-out": ("skipped", "not_opted_in"),
        "no-phone": ("skipped", "no_valid_phone"),
        "no-ticket": ("skipped", "missing_personalization"),
        "empty-ticket": ("skipped", "missing_personalization"),
    }
    with db.session() as session:
        detail = session.scalar(
            select(Message.error_detail).where(Message.reason == "missing_personalization")
        )
    assert detail == "Profile.ticket is missing and has no default"


def test_a_campaign_starts_once(db: Database, account: NewAccount) -> None:
    insert_profiles(db, account.account_id, [{"identity": f"u{i}", "phone": phone(i)} for i in range(20)])
    campaign_id = _campaign(db, account, variables=["x", "y"])
    with db.session() as session:
        assert start_campaign(session, campaign_id, utcnow()) == 20
    with db.session() as session:
        assert start_campaign(session, campaign_id, utcnow()) is None
        assert session.get(Campaign, campaign_id).state == "running"  # type: ignore[union-attr]
        assert len(list(session.scalars(select(Message.id)))) == 20


def test_control_group_is_stable_and_close_to_the_percentage(db: Database, account: NewAccount) -> None:
    n = 10_000
    insert_profiles(db, account.account_id, [{"identity": f"user-{i}", "phone": phone(i)} for i in range(n)])
    campaign_id = _campaign(db, account, variables=["x", "y"], control_group_pct=10)
    with db.session() as session:
        start_campaign(session, campaign_id, utcnow())
    first = {k for k, (state, _) in _states(db, campaign_id).items() if state == "control"}
    assert 0.07 * n <= len(first) <= 0.13 * n

    # The same users again when the audience is planned anew …
    with db.session() as session:
        session.execute(delete(Message).where(Message.campaign_id == campaign_id))
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        context = engagement_context(session, account.account_id)
        plan_audience(
            session,
            campaign,
            profile_condition(campaign.target, account_id=account.account_id),
            utcnow(),
            rules=context.rules,
            account_tz=context.tz,
        )
    assert {k for k, (s, _) in _states(db, campaign_id).items() if s == "control"} == first

    # … and exactly those that the hash gives in plain Python (the SQL arithmetic is the same on both).
    a, b = control_salts(account.account_id, campaign_id)
    with db.session() as session:
        seeds = dict(session.execute(select(Profile.identity, Profile.seed)).all())
    assert {k for k, seed in seeds.items() if control_bucket(seed, a, b) < 10} == first

    # Another campaign holds back a different group of about the same size.
    other_id = _campaign_named(db, account, "other", control_group_pct=10)
    with db.session() as session:
        start_campaign(session, other_id, utcnow())
    other = {k for k, (s, _) in _states(db, other_id).items() if s == "control"}
    assert 0.07 * n <= len(other) <= 0.13 * n
    assert other != first


def _campaign_named(db: Database, account: NewAccount, name: str, **kwargs: Any) -> int:
    with db.session() as session:
        template_id = session.scalar(select(Campaign.template_id).limit(1))
        assert template_id is not None
        campaign = create_campaign(
            session,
            account.account_id,
            CampaignCreate(
                name=name, template_id=template_id, variables=["x", "y"], target={"all": True}, **kwargs
            ),
        )
        return campaign.id


def test_target_conditions_select_the_audience(db: Database, account: NewAccount) -> None:
    insert_profiles(
        db,
        account.account_id,
        [
            {"identity": "pune-30", "phone": phone(1), "properties": {"City": "Pune", "Age": 30}},
            {"identity": "pune-17", "phone": phone(2), "properties": {"City": "Pune", "Age": 17}},
            {"identity": "delhi-40", "phone": phone(3), "properties": {"City": "Delhi", "Age": 40}},
            {"identity": "nowhere", "phone": phone(4), "properties": {}},
        ],
    )
    with db.session() as session:
        template = create_template(session, account.account_id, name="a:b", body="Hi", category="MARKETING")
        campaign = create_campaign(
            session,
            account.account_id,
            CampaignCreate(
                name="adults in Pune",
                template_id=template.id,
                variables=[],
                target={
                    "conditions": [
                        {"property": "City", "op": "equals", "value": "Pune"},
                        {"property": "Age", "op": "gte", "value": 18},
                    ]
                },
            ),
        )
        campaign_id = campaign.id
    with db.session() as session:
        assert start_campaign(session, campaign_id, utcnow()) == 1
    assert set(_states(db, campaign_id)) == {"pune-30"}


def test_one_account_never_plans_another_accounts_profiles(
    db: Database, account: NewAccount, box: Any
) -> None:
    from tests.conftest import new_account

    other = new_account(db, box, "Other")
    insert_profiles(db, account.account_id, [{"identity": "mine", "phone": phone(1)}])
    insert_profiles(db, other.account_id, [{"identity": "theirs", "phone": phone(2)}])
    campaign_id = _campaign(db, account, variables=["x", "y"])
    with db.session() as session:
        start_campaign(session, campaign_id, utcnow())
    assert set(_states(db, campaign_id)) == {"mine"}
