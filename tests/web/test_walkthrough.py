"""A marketer's whole path for each of the four campaign types, as a user walks it: build the campaign in
the "+ Campaign" flow, schedule it, make its users qualify the way each type needs (nothing for a one-time
campaign, the trigger event for a single action, an action not followed by the other within the window
for inaction, the date arriving for on a date/time) and watch its stats page until Sent and Delivered
fill in — through the real server, its worker and the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import basic
from tests.web.conftest import Site
from tests.web.test_campaign_builder import Shop, begin, next_step, shop, the_id, welcome_message
from tests.web.test_campaign_pages import WAIT, figure
from tidings.accounts.service import update_account
from tidings.campaigns.rules import Rules

__all__ = ["shop"]  # the builder tests' fixture, which ``awake`` below extends


def upload(site: Site, records: list[dict[str, object]]) -> None:
    """Through CleverTap's upload API, as the account's integration sends them."""
    answer = httpx.post(f"{site.url}/1/upload", json={"d": records}, headers=basic(site.account))
    assert answer.status_code == 200 and answer.json()["status"] == "success", answer.text


def running(page: Page, campaign_id: int) -> None:
    """The stats page, left open until the worker started the live campaign (events before that are not
    its triggers)."""
    page.goto(f"/campaigns/{campaign_id}")
    expect(page.locator("#live-status .badge")).to_have_text("running", timeout=WAIT)


def watch(page: Page, campaign_id: int, sent: int) -> None:
    """The stats page, left open: its figures fill in live."""
    if f"/campaigns/{campaign_id}" not in page.url:
        page.goto(f"/campaigns/{campaign_id}")
    expect(figure(page, "sent")).to_have_text(str(sent), timeout=WAIT)
    expect(figure(page, "delivered")).not_to_have_text("0", timeout=WAIT)


@pytest.fixture
def awake(shop: Shop, site: Site) -> Shop:
    """The builder tests' account, without its DND hours (the walk must send whatever the time of day)."""
    with site.db.session() as session:
        update_account(session, site.account.account_id, settings=Rules().stored())
    return shop


def schedule(page: Page) -> int:
    next_step(page, "Control group")
    next_step(page, "When")
    next_step(page, "Review")
    page.get_by_role("button", name="Schedule").click()
    return the_id(page)


def test_one_time_from_the_flow_to_its_stats(site: Site, awake: Shop, marketer: Page) -> None:
    begin(marketer, "Welcome", "One time")
    next_step(marketer, "Who")
    marketer.get_by_label("A saved segment").check()
    marketer.get_by_label("Saved segment", exact=True).select_option(label="Pune")
    next_step(marketer, "What")
    welcome_message(marketer, "HELLO")
    watch(marketer, schedule(marketer), sent=1)  # Asha, the one user in Pune
    expect(marketer.locator("#live-status .badge")).to_have_text("completed", timeout=WAIT)


def test_single_action_from_the_flow_to_its_stats(site: Site, awake: Shop, marketer: Page) -> None:
    begin(marketer, "Thanks", "Single action")
    next_step(marketer, "Who")
    marketer.get_by_label("Event", exact=True).fill("Charged")
    next_step(marketer, "What")
    welcome_message(marketer, "THANKS")
    campaign_id = schedule(marketer)
    running(marketer, campaign_id)
    upload(site, [{"type": "event", "identity": "asha", "evtName": "Charged", "evtData": {"Amount": 40}}])
    watch(marketer, campaign_id, sent=1)


def test_inaction_from_the_flow_to_its_stats(site: Site, awake: Shop, marketer: Page) -> None:
    begin(marketer, "Cart left", "Inaction within time")
    next_step(marketer, "Who")
    marketer.get_by_label("The user does").fill("Added To Cart")
    marketer.get_by_label("And does not do").fill("Charged")
    marketer.get_by_label("Within").fill("1")
    next_step(marketer, "What")
    welcome_message(marketer, "CART")
    campaign_id = schedule(marketer)
    running(marketer, campaign_id)
    # Asha added to her cart two minutes ago and has not paid since: the minute's window has passed
    added = int((datetime.now(UTC) - timedelta(minutes=2)).timestamp())
    upload(site, [{"type": "event", "identity": "asha", "evtName": "Added To Cart", "ts": added}])
    watch(marketer, campaign_id, sent=1)


def test_on_a_date_from_the_flow_to_its_stats(site: Site, awake: Shop, marketer: Page) -> None:
    begin(marketer, "Your flight", "On a date/time")
    next_step(marketer, "Who")
    marketer.get_by_label("A saved segment").check()
    marketer.get_by_label("Saved segment", exact=True).select_option(label="Pune")
    marketer.get_by_label("Date property").fill("Flight Date")
    marketer.get_by_label("Send", exact=True).fill("0")
    next_step(marketer, "What")
    welcome_message(marketer, "FLY")
    campaign_id = schedule(marketer)
    running(marketer, campaign_id)
    # Asha's flight is in a few seconds: the campaign sends when that moment comes
    soon = (datetime.now(UTC) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    upload(site, [{"type": "profile", "identity": "asha", "profileData": {"Flight Date": soon}}])
    watch(marketer, campaign_id, sent=1)
