"""The profile pages in the browser: find a profile by name, by phone in another format and by identity
prefix; open it and see its properties, its events and the campaign messages sent to it; opt it out by
hand and see the change in its history; an agent looks but cannot change."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign
from tidings.db import utcnow
from tidings.profiles import service as profiles
from tidings.templates.service import create_template

T0 = 1_795_000_000  # 2026-11-18 11:06:40 UTC
OPTED_IN = {"MSG-whatsapp": True}


def person(identity: str, **data: Any) -> dict[str, Any]:
    return {"type": "profile", "identity": identity, "profileData": data}


def _people(site: Site) -> int:
    """26 filler profiles, then four people (the newest); Asha has 23 events and a campaign's message.
    Returns the campaign's id."""
    fillers = [person(f"filler-{n:02d}") for n in range(26)]
    records = [
        person(
            "cust-1001",
            Name="Asha Rao",
            Phone="+919810000001",
            City="Pune",
            Plan="gold",
            **{"MSG-whatsapp": True},
        ),
        person("cust-1002", Name="Ravi Kumar", Phone="+919810000002", **{"MSG-whatsapp": True}),
        person("partner/42 x", Name="Meera Iyer", Phone="+919810000003", **OPTED_IN),  # "/" and " " in it
        person("vip-7", Name="Ashok Mehta", Phone="+14155552671"),
    ]
    records += [
        {
            "type": "event",
            "identity": "cust-1001",
            "evtName": "Viewed" if n % 2 else "Charged",
            "evtData": {"Amount": n * 10},
            "ts": T0 + n * 3600,
        }
        for n in range(23)
    ]
    account_id = site.account.account_id
    with site.db.session() as session:  # the fillers first: a batch's new profiles get ids by identity
        assert not profiles.ingest(session, account_id, fillers).unprocessed
    with site.db.session() as session:
        assert not profiles.ingest(session, account_id, records).unprocessed
        template = create_template(session, account_id, name="shop:hello", body="Hi", category="UTILITY")
        campaign = create_campaign(
            session,
            account_id,
            CampaignCreate(
                name="Diwali sale",
                template_id=template.id,
                variables=[],
                target={"all": True},
                system_control_group=False,
            ),
        )
        campaign_id = int(campaign.id)
    with site.db.session() as session:
        start_campaign(session, campaign_id, utcnow())
    return campaign_id


def _search(page: Page, q: str) -> None:
    page.get_by_label("Find a profile").fill(q)
    page.get_by_role("button", name="Find").click()


def _found(page: Page) -> list[str]:
    return page.locator("table.profiles tbody tr td:first-child a").all_inner_texts()


def test_find_open_and_opt_out_a_profile(site: Site, marketer: Page, tmp_path: Path) -> None:
    page = marketer
    campaign_id = _people(site)
    page.goto("/profiles")
    expect(page.get_by_role("heading", name="Profiles")).to_be_visible()
    # Newest first, a page of 25, then the next page by cursor: no total anywhere.
    assert _found(page)[:4] == ["vip-7", "partner/42 x", "cust-1002", "cust-1001"]
    page.get_by_role("link", name="Next page →").click()
    expect(page.get_by_role("link", name="filler-00")).to_be_visible()
    assert _found(page) == ["filler-04", "filler-03", "filler-02", "filler-01", "filler-00"]

    _search(page, "ash")  # names, whatever the case
    expect(page.get_by_role("link", name="vip-7")).to_be_visible()
    assert sorted(_found(page)) == ["cust-1001", "vip-7"]
    _search(page, "+91 98100-00002")  # a phone in another format
    expect(page.get_by_role("link", name="cust-1002")).to_be_visible()
    assert _found(page) == ["cust-1002"]
    _search(page, "cust-10")  # an identity's beginning
    expect(page.get_by_role("link", name="cust-1002")).to_be_visible()
    assert _found(page) == ["cust-1001", "cust-1002"]
    check_page(page)
    shoot(page, "profiles-search", tmp_path)

    page.get_by_role("link", name="cust-1001").click()
    expect(page.get_by_role("heading", name="Asha Rao", level=1)).to_be_visible()
    properties = page.locator("table.profile-properties")
    expect(properties.get_by_role("row", name="City Pune")).to_be_visible()
    expect(properties.get_by_role("row", name="Plan gold")).to_be_visible()
    # The upload's consent, with the upload's actor.
    history = page.locator("table.consent-history tbody tr")
    expect(history).to_have_count(1)
    expect(history.first).to_contain_text("new profile → in")
    expect(history.first).to_contain_text("upload")
    # The latest events first (times in the account's time zone: UTC here), 20 a page.
    events = page.locator("table.profile-events tbody tr")
    expect(events).to_have_count(20)
    uploaded = events.filter(has_text="2026-11-19")  # (the system events of today come before them)
    expect(uploaded.first).to_contain_text("2026-11-19 09:06")  # T0 + 22 h
    expect(uploaded.first).to_contain_text("Charged")
    expect(events.filter(has_text="Channel Subscribed")).to_have_count(1)  # the upload's consent, an event
    # The campaign's message, linked to its campaign.
    message = page.locator("table.profile-messages tbody tr")
    expect(message).to_have_count(1)
    expect(message.get_by_role("link", name="Diwali sale")).to_have_attribute(
        "href", f"/campaigns/{campaign_id}"
    )
    expect(message).to_contain_text("+919810000001")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Opt out").click()
    expect(page.get_by_role("button", name="Opt in")).to_be_visible()
    expect(history).to_have_count(2)
    expect(history.first).to_contain_text("in → out")
    expect(history.first).to_contain_text("dashboard")
    expect(history.first).to_contain_text("marketer@acme.test")
    expect(page.locator("#consent .badge")).to_have_text("opted out")
    check_page(page)
    shoot(page, "profile", tmp_path)

    page.get_by_role("link", name="Older events →").click()
    # the rest: 23 uploaded events and the system events (consent, the campaign's message) less 20
    expect(events.last).to_contain_text("2026-11-18 11:06")  # T0, the oldest
    page.get_by_role("link", name="Latest events").click()
    expect(events).to_have_count(20)


def test_an_agent_looks_but_cannot_change_consent(site: Site, page: Page) -> None:
    _people(site)
    sign_in(page, site.user("agent@acme.test", "agent"))
    page.goto("/profiles")
    page.get_by_label("Find a profile").fill("meera")  # the results follow the typing (htmx)
    expect(page.get_by_role("link", name="vip-7")).to_have_count(0)
    assert _found(page) == ["partner/42 x"]
    expect(page).to_have_url(re.compile(r"/profiles\?q=meera$"))
    page.get_by_role("link", name="partner/42 x").click()
    expect(page.get_by_role("heading", name="Meera Iyer", level=1)).to_be_visible()
    expect(page.locator("#consent .badge")).to_have_text("opted in")
    expect(page.get_by_role("button", name=re.compile("Opt (in|out)"))).to_have_count(0)
    check_page(page)
    csrf = page.locator("form[action='/signout'] input[name=csrf_token]").get_attribute("value")
    assert csrf  # the agent's own valid token: refused for the role, not for the form
    form = {"csrf_token": csrf, "whatsapp": "false"}
    answer = page.request.post("/profiles/partner/42%20x/consent", form=form)
    assert answer.status == 403 and "needs the marketer role" in answer.text()
    page.reload()
    expect(page.locator("#consent .badge")).to_have_text("opted in")
    expect(page.locator("table.consent-history tbody tr")).to_have_count(1)
