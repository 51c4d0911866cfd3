"""The "+ Campaign" flow in the browser: a campaign of each of the four types built and scheduled through
the pages (and read back through the service), a multivariate one, a refused value shown next to its field,
a draft reopened where it was left, and an agent refused."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import basic
from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.accounts.service import update_account
from tidings.campaigns import service as campaigns
from tidings.campaigns.rules import Rules
from tidings.campaigns.schemas import CampaignOut
from tidings.profiles.service import ingest
from tidings.segments.service import create_segment
from tidings.templates.service import create_template

ZONE = "Asia/Kolkata"


@dataclass
class Shop:
    segment_id: int
    welcome: int
    promo: int


@pytest.fixture
def shop(site: Site) -> Shop:
    """An account in Asia/Kolkata with DND hours, two approved templates, a saved segment, and profiles and
    events uploaded as the API takes them (so that the property catalogue lists their names)."""
    account_id = site.account.account_id
    records: list[dict[str, Any]] = [
        {
            "type": "profile",
            "identity": "asha",
            "profileData": {
                "Name": "Asha",
                "City": "Pune",
                "Phone": "+919810000001",
                "MSG-whatsapp": True,
                "Flight Date": "2026-12-24T06:00:00Z",
            },
        },
        {"type": "profile", "identity": "ravi", "profileData": {"City": "Delhi", "MSG-whatsapp": True}},
        {"type": "event", "identity": "asha", "evtName": "Added To Cart", "evtData": {"Product": "Shoes"}},
        {
            "type": "event",
            "identity": "asha",
            "evtName": "Charged",
            "evtData": {"Amount": 120, "Item": "Shoes"},
        },
    ]
    with site.db.session() as session:
        update_account(
            session,
            account_id,
            timezone=ZONE,
            settings=Rules.model_validate({"dnd": {"start": "22:00", "end": "08:00"}}).stored(),
        )
        assert not ingest(session, account_id, records).unprocessed
        welcome = create_template(
            session,
            account_id,
            name="shop:welcome",
            body="Hi {{1}}, your code is {{2}}.",
            category="MARKETING",
        )
        promo = create_template(
            session, account_id, name="shop:promo", body="Sale on {{1}}!", category="MARKETING"
        )
        segment = create_segment(
            session, account_id, name="Pune", definition={"property": "City", "op": "equals", "value": "Pune"}
        )
        return Shop(segment.id, welcome.id, promo.id)


def read_back(site: Site, campaign_id: int) -> CampaignOut:
    with site.db.read() as session:
        return campaigns.described(
            session, campaigns.get_campaign(session, site.account.account_id, campaign_id)
        )


def the_id(page: Page) -> int:
    found = re.search(r"/campaigns/(\d+)", page.url)
    assert found, page.url
    return int(found.group(1))


def settled(page: Page) -> None:
    """Wait until what a control redrew through htmx is in place and live (htmx wires new controls only
    once they have settled: a control changed before that would send nothing)."""
    expect(page.locator(".htmx-request, .htmx-settling, .htmx-added")).to_have_count(0)


def pick(control: Any, value: str | None = None, label: str | None = None) -> None:
    """Choose an option of a select that redraws part of the page, and wait for the redraw."""
    if label is not None:
        control.select_option(label=label)
    else:
        control.select_option(value)
    settled(control.page)


def next_step(page: Page, name: str) -> None:
    page.get_by_role("button", name=f"Next: {name}").click()
    expect(page.get_by_role("heading", level=2)).to_contain_text(name)


def variable(page: Page, n: int, variant: int = 0) -> Any:
    return page.locator(f"#variant-{variant}").get_by_role("group", name=f"Variable {{{{{n}}}}}")


def begin(page: Page, name: str, kind_label: str) -> None:
    page.goto("/campaigns/new")
    page.get_by_role("link", name=re.compile("WhatsApp")).click()
    expect(page.get_by_role("heading", name="1. Type")).to_be_visible()
    page.get_by_label("Campaign name").fill(name)
    page.get_by_label(kind_label, exact=True).check()


def welcome_message(page: Page, code: str, variant: int = 0) -> None:
    """shop:welcome with {{1}} = the Name property (default "there") and {{2}} = text."""
    pick(page.locator(f"#variant-{variant}").get_by_label("Template", exact=True), label="shop:welcome (en)")
    first = variable(page, 1, variant)
    pick(first.get_by_label("Value from"), "profile")
    first.get_by_label("Property", exact=True).select_option("Name")
    first.get_by_label("Default", exact=True).fill("there")
    variable(page, 2, variant).get_by_label("Text", exact=True).fill(code)


def test_one_time_campaign_step_by_step(site: Site, shop: Shop, marketer: Page, tmp_path: Path) -> None:
    page = marketer
    page.goto("/campaigns/new")
    check_page(page)
    begin(page, "Pune welcome", "One time")
    expect(page.get_by_text("WhatsApp does not allow recurring or multi-date campaigns")).to_be_visible()
    check_page(page)
    shoot(page, "campaign-new-type", tmp_path)

    next_step(page, "Who")
    page.get_by_label("Users matching these conditions").check()  # the segment builder
    page.get_by_label("Group 1, condition 1: property").fill("City")
    page.get_by_label("Group 1, condition 1: value", exact=True).fill("Pune")
    expect(page.locator("#seg-estimate")).to_contain_text("1 profile")
    check_page(page)
    shoot(page, "campaign-new-who", tmp_path)

    next_step(page, "What")
    welcome_message(page, "PUNE10")
    # the preview: a real user of the segment, rendered as it will be sent
    bubble = page.locator("#preview-0 .preview-bubble")
    expect(bubble).to_have_text("Hi Asha, your code is PUNE10.")
    expect(page.locator("#preview-0")).to_contain_text("asha")
    check_page(page)
    shoot(page, "campaign-new-what", tmp_path)

    next_step(page, "Control group")  # from here on it is a draft
    campaign_id = the_id(page)
    assert read_back(site, campaign_id).state == "draft"
    page.get_by_label("Control group of this campaign (%)").fill("10")
    check_page(page)
    next_step(page, "When")
    expect(page.get_by_text(f"Times are in the account's time zone, {ZONE}")).to_be_visible()
    expect(page.get_by_text("Do not disturb: 22:00 to 08:00")).to_be_visible()
    check_page(page)
    next_step(page, "Review")
    review = page.locator("dl.review")
    expect(review).to_contain_text("Users who match: City is Pune")
    expect(review).to_contain_text("10 %")
    expect(page.locator(".preview-bubble")).to_have_text("Hi Asha, your code is PUNE10.")
    check_page(page)
    shoot(page, "campaign-new-review", tmp_path)
    page.get_by_role("button", name="Schedule").click()
    expect(page).to_have_url(re.compile(rf"/campaigns/{campaign_id}$"))

    out = read_back(site, campaign_id)
    assert (out.name, out.kind, out.trigger) == ("Pune welcome", "one_time", None)
    assert out.state in ("scheduled", "running", "completed")
    assert out.target == {"property": "City", "op": "equals", "value": "Pune"}
    assert out.template_id == shop.welcome
    assert out.variables == ['{{ Profile.Name | default: "there" }}', "PUNE10"]
    assert out.control_group_pct == 10 and out.respect_rules


def test_live_campaigns_of_each_type(site: Site, shop: Shop, marketer: Page) -> None:
    page = marketer
    tz = ZoneInfo(ZONE)
    starts = (datetime.now(tz) + timedelta(days=2)).replace(second=0, microsecond=0)

    # single action: the trigger event, a value from the event's own properties
    begin(page, "Thanks for buying", "Single action")
    next_step(page, "Who")
    page.get_by_label("Event", exact=True).fill("Charged")
    page.get_by_label("Event", exact=True).blur()  # the event's properties are listed for its filters
    expect(page.locator("#event-properties option")).to_have_count(2)
    settled(page)
    page.get_by_label("Filter 1: property").fill("Amount")
    page.get_by_label("Filter 1: test").select_option("gte")
    page.get_by_label("Filter 1: value", exact=True).fill("100")
    page.get_by_label("Filter 1: value type").select_option("number")
    check_page(page)
    next_step(page, "What")
    pick(page.get_by_label("Template", exact=True), label="shop:promo (en)")
    first = variable(page, 1)
    pick(first.get_by_label("Value from"), "event")
    first.get_by_label("Property", exact=True).select_option("Item")
    first.get_by_label("Default", exact=True).fill("everything")
    expect(page.locator("#preview-0 .preview-bubble")).to_have_text("Sale on Shoes!")
    next_step(page, "Control group")
    next_step(page, "When")
    page.get_by_label("How often one user may get it").select_option("once")
    next_step(page, "Review")
    page.get_by_role("button", name="Schedule").click()
    out = read_back(site, the_id(page))
    assert out.kind == "single_action" and out.state in ("scheduled", "running")  # live: starts now
    assert out.trigger is not None
    assert out.trigger.model_dump(mode="json", exclude_none=True) == {
        "event": "Charged",
        "where": {"property": "Amount", "op": "gte", "value": 100},
    }
    assert out.variables == ['{{ Event.Item | default: "everything" }}']
    assert out.frequency is not None and out.frequency.rule == "once"

    # inaction within time: two events and the window; a later start in the account's time zone
    begin(page, "Cart reminder", "Inaction within time")
    next_step(page, "Who")
    page.get_by_label("The user does").fill("Added To Cart")
    page.get_by_label("And does not do").fill("Charged")
    page.get_by_label("Within").fill("30")
    next_step(page, "What")
    welcome_message(page, "CART5")
    next_step(page, "Control group")
    next_step(page, "When")
    page.get_by_label("Later", exact=True).check()
    page.get_by_label(re.compile(r"^Date and time")).fill(starts.strftime("%Y-%m-%dT%H:%M"))
    next_step(page, "Review")
    expect(page.locator("dl.review")).to_contain_text(starts.strftime("%Y-%m-%d %H:%M"))
    page.get_by_role("button", name="Schedule").click()
    out = read_back(site, the_id(page))
    assert (out.kind, out.state, out.target) == ("inaction", "scheduled", {"all": True})
    assert out.trigger is not None
    assert out.trigger.model_dump(exclude_none=True) == {
        "event": "Added To Cart",
        "absent_event": "Charged",
        "within_minutes": 30,
    }
    assert out.send_at == starts
    assert out.variables == ['{{ Profile.Name | default: "there" }}', "CART5"]

    # on a date/time: the date property (listed), one day before, at 09:00
    begin(page, "Flight tomorrow", "On a date/time")
    next_step(page, "Who")
    page.get_by_label("A saved segment").check()
    page.get_by_label("Saved segment", exact=True).select_option(label="Pune")
    page.get_by_label("Date property").fill("Flight Date")
    page.get_by_label("Send", exact=True).fill("1")
    page.get_by_label("Before or after").select_option("before")
    page.get_by_label("At a time of day (optional)").fill("09:00")
    next_step(page, "What")
    welcome_message(page, "FLY")
    next_step(page, "Control group")
    next_step(page, "When")
    next_step(page, "Review")
    expect(page.locator("dl.review")).to_contain_text("1 day before the date in Flight Date, at 09:00")
    page.get_by_role("button", name="Schedule").click()
    out = read_back(site, the_id(page))
    assert (out.kind, out.target) == ("on_date", {"segment_id": shop.segment_id})
    assert out.state in ("scheduled", "running")
    assert out.trigger is not None
    assert out.trigger.model_dump(mode="json", exclude_none=True) == {
        "property": "Flight Date",
        "offset_minutes": -1440,
        "at_time": "09:00",
        "timezone": "account",
    }


def test_multivariate_campaign(site: Site, shop: Shop, marketer: Page) -> None:
    page = marketer
    begin(page, "A/B welcome", "One time")
    next_step(page, "Who")
    page.get_by_label("A saved segment").check()
    page.get_by_label("Saved segment", exact=True).select_option(label="Pune")
    next_step(page, "What")
    page.get_by_label("Multivariate").check()
    expect(page.get_by_role("heading", name="Variant B")).to_be_visible()
    settled(page)
    welcome_message(page, "A10", variant=0)
    page.locator("#variant-0").get_by_label("Share of users (%)").fill("70")
    pick(page.locator("#variant-1").get_by_label("Template", exact=True), label="shop:promo (en)")
    variable(page, 1, variant=1).get_by_label("Text", exact=True).fill("shoes")
    page.locator("#variant-1").get_by_label("Share of users (%)").fill("30")
    expect(page.locator("#preview-1 .preview-bubble")).to_have_text("Sale on shoes!")
    next_step(page, "Control group")
    next_step(page, "When")
    next_step(page, "Review")
    expect(page.locator("dl.review")).to_contain_text("2 variants (A: 70 %, B: 30 %)")
    page.get_by_role("button", name="Schedule").click()
    out = read_back(site, the_id(page))
    assert out.target == {"segment_id": shop.segment_id}
    assert out.split is not None and out.split.by == "percentage"
    assert [(v.key, v.template_id, v.weight, v.variables) for v in out.variants] == [
        ("A", shop.welcome, 70, ['{{ Profile.Name | default: "there" }}', "A10"]),
        ("B", shop.promo, 30, ["shoes"]),
    ]


def test_errors_next_to_their_fields(site: Site, shop: Shop, marketer: Page) -> None:
    page = marketer
    begin(page, "", "One time")
    page.get_by_role("button", name="Next: Who").click()
    expect(page.locator("#e-name")).to_be_visible()  # the model's refusal of an empty name, at the name
    expect(page.get_by_label("Campaign name")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Campaign name").fill("Codes")
    next_step(page, "Who")
    next_step(page, "What")
    pick(page.get_by_label("Template", exact=True), label="shop:welcome (en)")
    variable(page, 1).get_by_label("Text", exact=True).fill("friend")
    page.get_by_role("button", name="Next: Control group").click()  # {{2}} left empty
    second = variable(page, 2)
    expect(second.get_by_role("alert")).to_have_text(
        "a value is required: text, or a property with a default"
    )
    expect(second.get_by_label("Text", exact=True)).to_have_attribute("aria-invalid", "true")
    expect(variable(page, 1).get_by_role("alert")).to_have_count(0)
    check_page(page)
    with site.db.read() as session:  # nothing was saved
        assert campaigns.list_campaigns(session, site.account.account_id) == []


def test_a_draft_reopens_where_it_was_left(site: Site, shop: Shop, marketer: Page) -> None:
    page = marketer
    begin(page, "Left at what", "Single action")
    next_step(page, "Who")
    page.get_by_label("Event", exact=True).fill("Charged")
    next_step(page, "What")
    welcome_message(page, "LATER")
    page.get_by_role("button", name="Save draft and leave").click()
    expect(page).to_have_url(re.compile(r"/campaigns$"))
    with site.db.read() as session:
        (draft,) = campaigns.list_campaigns(session, site.account.account_id)
    assert draft.state == "draft" and draft.draft_step == "what"

    page.goto(f"/campaigns/{draft.id}/edit")
    expect(page.get_by_role("heading", level=2)).to_have_text("3. What")
    expect(page.locator("#variant-0").get_by_label("Template", exact=True)).to_have_value(str(shop.welcome))
    expect(variable(page, 1).get_by_label("Property", exact=True)).to_have_value("Name")
    expect(variable(page, 1).get_by_label("Default", exact=True)).to_have_value("there")
    expect(variable(page, 2).get_by_label("Text", exact=True)).to_have_value("LATER")
    check_page(page)
    page.get_by_role("link", name="2. Who").click()  # the earlier steps, with their values
    expect(page.get_by_label("Event", exact=True)).to_have_value("Charged")
    expect(page.get_by_label("Campaign name")).to_have_count(0)


def test_an_agent_may_not_build_a_campaign(site: Site, page: Page) -> None:
    sign_in(page, site.user("agent@acme.test", "agent"))
    response = page.goto("/campaigns/new")
    assert response is not None and response.status == 403
    expect(page.get_by_text("This page needs the marketer role")).to_be_visible()


def test_a_draft_changes_type(site: Site, shop: Shop, marketer: Page) -> None:
    """Another type needs another trigger: the who step asks for it, and the draft changes only then."""
    page = marketer
    begin(page, "Changing", "Single action")
    next_step(page, "Who")
    page.get_by_label("Event", exact=True).fill("Charged")
    next_step(page, "What")
    welcome_message(page, "X1")
    next_step(page, "Control group")
    campaign_id = the_id(page)
    page.get_by_role("link", name="1. Type").click()
    page.get_by_label("Inaction within time", exact=True).check()
    page.get_by_role("button", name="Next: Who").click()
    expect(page.get_by_role("heading", level=2)).to_have_text("2. Who")
    expect(page.locator("#e-event")).to_contain_text("needs a trigger")
    assert read_back(site, campaign_id).kind == "single_action"  # not saved while refused
    page.get_by_label("The user does").fill("Added To Cart")
    page.get_by_label("And does not do").fill("Charged")
    page.get_by_label("Within").fill("2")
    page.get_by_label("Unit").select_option("hours")
    next_step(page, "What")
    out = read_back(site, campaign_id)
    assert out.kind == "inaction" and out.state == "draft"
    assert out.trigger is not None and out.trigger.model_dump()["within_minutes"] == 120


def test_the_api_refuses_an_empty_value_as_the_page_does(site: Site, shop: Shop) -> None:
    """A variable rendered empty for everyone: refused by the model behind both, naming the value."""
    body = {"name": "x", "template_id": shop.welcome, "variables": ["Hi", "  "], "draft": True}
    with httpx.Client(base_url=site.url, headers=basic(site.account)) as http:
        r = http.post("/api/v1/campaigns", json=body)
        assert r.status_code == 422, r.text
        assert "a value is required" in r.text and "variables" in r.text
        body["variables"] = ["Hi", "{{ Profile.Code | default: 'X' }}"]
        assert http.post("/api/v1/campaigns", json=body).status_code == 201
