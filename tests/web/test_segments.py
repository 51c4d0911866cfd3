"""Segments in the browser: the segment builder with its live estimate, saving and editing a segment, the
campaigns that use it, and the refusals (a name in use, a wrong count, deleting a segment in use, an
agent on a marketer's form)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import Locator, Page, expect

from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign
from tidings.db import utcnow
from tidings.profiles.service import ingest
from tidings.segments import service as segments
from tidings.templates.service import create_template
from tidings.web.pages.segments import builder_for, definition_from_form


def _people(site: Site) -> None:
    """Four profiles: three in Pune, of whom one bought twice in the last days (and one in Delhi did)."""
    now = utcnow()

    def charged(identity: str, days: int, amount: int) -> dict[str, Any]:
        ts = int((now - timedelta(days=days)).timestamp())
        return {
            "type": "event",
            "identity": identity,
            "evtName": "Charged",
            "evtData": {"Amount": amount},
            "ts": ts,
        }

    records: list[dict[str, Any]] = [
        {"type": "profile", "identity": who, "profileData": {"City": city}}
        for who, city in (("asha", "Pune"), ("ravi", "Pune"), ("kiran", "Pune"), ("meera", "Delhi"))
    ]
    records += [charged("asha", 1, 900), charged("asha", 3, 200), charged("ravi", 2, 700)]
    records += [charged("meera", 1, 800), charged("meera", 40, 800)]
    with site.db.session() as session:
        assert not ingest(session, site.account.account_id, records).unprocessed


def redrawn(page: Page) -> None:
    """Wait until the builder's rows are redrawn and settled (the focus moves back then) after one of its
    buttons or selects that redraw them."""
    expect(page.locator("#seg-builder .htmx-request")).to_have_count(0)
    expect(page.locator("#seg-builder.htmx-settling")).to_have_count(0)


def _row(page: Page, name: str) -> Locator:
    """The list's row of the segment ``name``."""
    return page.locator("tbody tr").filter(
        has=page.locator("td:first-child a", has_text=re.compile(f"^{name}$"))
    )


def _segment(site: Site, name: str, definition: dict[str, Any]) -> int:
    with site.db.session() as session:
        return segments.create_segment(session, site.account.account_id, name=name, definition=definition).id


def _draft_campaign(site: Site, name: str, segment_id: int) -> int:
    with site.db.session() as session:
        template = create_template(
            session, site.account.account_id, name="shop:offer", body="Hi", category="MARKETING"
        )
        spec = CampaignCreate(
            name=name, template_id=template.id, variables=[], target={"segment_id": segment_id}, draft=True
        )
        return create_campaign(session, site.account.account_id, spec).id


def test_the_builder_reads_back_what_it_shows() -> None:
    """The form fields the builder posts give the definition it was drawn from (what other pages import)."""
    definition = {
        "or": [
            {
                "and": [
                    {"property": "City", "op": "in", "value": ["Pune", "Delhi"]},
                    {"property": "Age", "op": "gte", "value": 30},
                ]
            },
            {
                "did": {
                    "event": "Charged",
                    "where": [{"property": "Amount", "op": "gt", "value": 500.5}],
                    "count": {"exactly": 2},
                    "in_the_last": {"hours": 12},
                }
            },
            {"did_not": {"event": "Refund", "between": {"from": "2026-01-01", "to": "2026-01-31"}}},
            {
                "and": [
                    {"property": "VIP", "op": "equals", "value": True},
                    {"segment_id": 7},
                    {"property": "Renewal", "op": "within_next_days", "value": 7},
                ]
            },
        ]
    }
    builder = builder_for(definition)
    assert builder.json is None and len(builder.groups) == 4
    form: dict[str, str] = {"seg.join": builder.join}
    for g, group in enumerate(builder.groups):
        form[f"seg.g{g}.join"] = group.join
        for c, row in enumerate(group.rows):
            key = f"seg.g{g}.c{c}"
            fields = {"kind": row.kind, "event": row.event, "count_op": row.count_op, "count": row.count}
            fields |= {"window": row.window, "last_n": row.last_n, "last_unit": row.last_unit}
            fields |= {"start": row.start, "end": row.end, "segment_id": row.segment_id}
            fields |= {
                "property": row.test.property,
                "op": row.test.op,
                "value": row.test.value,
                "type": row.test.type,
            }
            form |= {f"{key}.{name}": value for name, value in fields.items()}
            for w, test in enumerate(row.where):
                form |= {
                    f"{key}.w{w}.{name}": getattr(test, name) for name in ("property", "op", "value", "type")
                }
    assert definition_from_form(form) == definition
    single = {"property": "Name", "op": "exists"}
    assert builder_for(single).describe() == "Name is set"
    # what the rows cannot show is edited as JSON, and read back as it is
    nested = {"not": {"or": [{"did": "A"}, {"did": "B"}]}}
    builder = builder_for(nested)
    assert builder.json is not None and builder.note
    assert definition_from_form({"seg.mode": "json", "seg.json": builder.json}) == nested


def test_build_a_segment_watch_its_estimate_save_and_edit_it(
    site: Site, marketer: Page, tmp_path: Path
) -> None:
    page = marketer
    _people(site)
    _segment(site, "Loyal", {"did": "Charged"})
    page.goto("/segments")
    page.get_by_role("link", name="+ Segment").click()
    expect(page).to_have_url(re.compile(r"/segments/new$"))
    estimate = page.locator("#seg-estimate")
    expect(estimate).to_contain_text("4 profiles")  # no condition yet: everyone
    # the names to pick from are the account's own (the upload's catalogue), and the system events
    expect(page.locator("#seg-profile-properties option")).to_have_attribute("value", "City")
    events = page.locator("#seg-events option")
    expect(events.and_(page.locator('[value="Charged"]'))).to_have_count(1)
    expect(events.and_(page.locator('[value="Notification Viewed"]'))).to_have_count(1)
    expect(page.locator('#seg-event-properties option[value="Amount"]')).to_have_count(1)

    page.get_by_label("Group 1, condition 1: property").fill("City")
    page.get_by_label("Group 1, condition 1: value", exact=True).fill("Pune")
    expect(estimate).to_contain_text("3 profiles")

    page.get_by_role("button", name="+ Did event").first.click()
    redrawn(page)
    event = page.get_by_label("Group 1, condition 2: event")
    expect(event).to_be_focused()
    event.fill("Charged")
    expect(estimate).to_contain_text("2 profiles")  # asha and ravi bought in Pune
    page.get_by_label("Group 1, condition 2: times").fill("2")
    expect(estimate).to_contain_text("1 profile")
    page.get_by_label("Group 1, condition 2: when").select_option("last")
    redrawn(page)
    page.get_by_label("Group 1, condition 2: how many").fill("2")
    expect(estimate).to_contain_text("0 profiles")  # asha's second purchase was 3 days ago
    page.get_by_label("Group 1, condition 2: how many").fill("30")
    expect(estimate).to_contain_text("1 profile")
    page.get_by_label("Group 1, condition 2: times").fill("0")  # "at least 0" is refused by the service
    expect(estimate).to_contain_text("Group 1, condition 2")
    check_page(page)

    # a second group comes and goes; the whole definition can be edited as JSON and back
    page.get_by_role("button", name="+ Profile property in a new group").click()
    redrawn(page)
    expect(page.get_by_role("group", name="Group 2")).to_be_visible()
    page.get_by_role("button", name="Remove group 2, condition 1").click()
    redrawn(page)
    expect(page.get_by_role("group", name="Group 2")).to_have_count(0)
    page.get_by_role("button", name="Edit as JSON").click()
    redrawn(page)
    expect(page.get_by_label("Definition as JSON")).to_contain_text('"event": "Charged"')
    page.get_by_role("button", name="Back to the visual builder").click()
    redrawn(page)
    expect(page.get_by_label("Group 1, condition 2: event")).to_have_value("Charged")

    # errors next to their fields: the row's, and the name's
    page.get_by_label("Name").fill("Loyal")
    page.get_by_role("button", name="Save segment").click()
    row_error = page.locator(".seg-row.has-error .error")
    expect(row_error).to_contain_text("The number of times must be a positive integer")
    page.get_by_label("Group 1, condition 2: times").fill("2")
    page.get_by_role("button", name="Save segment").click()
    expect(page.locator("#e-name")).to_contain_text("a segment named 'Loyal' exists already")
    expect(page.get_by_label("Group 1, condition 2: event")).to_have_value("Charged")  # nothing lost
    page.get_by_label("Name").fill("Pune buyers")
    page.get_by_role("button", name="Save segment").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    segment_id = int(page.url.split("/segments/")[1].split("?")[0])
    with site.db.read() as session:
        saved = segments.get_segment(session, site.account.account_id, segment_id).definition
    assert saved == {
        "and": [
            {"property": "City", "op": "equals", "value": "Pune"},
            {"did": {"event": "Charged", "count": {"at_least": 2}, "in_the_last": {"days": 30}}},
        ]
    }

    # edit: the builder shows what was saved; an event filter and another city change the estimate
    expect(page.get_by_label("Group 1, condition 2: how many")).to_have_value("30")
    expect(estimate).to_contain_text("1 profile")
    page.get_by_label("Group 1, condition 1: value", exact=True).fill("Delhi")
    expect(estimate).to_contain_text("0 profiles")  # meera's first purchase is 40 days old
    page.get_by_label("Group 1, condition 2: how many").fill("60")
    expect(estimate).to_contain_text("1 profile")
    page.get_by_role("button", name="+ Filter on the event's properties").click()
    redrawn(page)
    # the filter offers the properties of its event
    listed = page.get_by_label("Group 1, condition 2, filter 1: property").get_attribute("list")
    assert listed and listed.startswith("seg-ep-")  # Charged's own list
    expect(page.locator(f"datalist#{listed} option")).to_have_attribute("value", "Amount")
    page.get_by_label("Group 1, condition 2, filter 1: property").fill("Amount")
    page.get_by_label("Group 1, condition 2, filter 1: test").select_option("gte")
    redrawn(page)
    page.get_by_label("Group 1, condition 2, filter 1: value type").select_option("number")
    redrawn(page)
    page.get_by_label("Group 1, condition 2, filter 1: value", exact=True).fill("1000")
    expect(estimate).to_contain_text("0 profiles")
    page.get_by_label("Group 1, condition 2, filter 1: value", exact=True).fill("800")
    expect(estimate).to_contain_text("1 profile")
    check_page(page)
    shoot(page, "segment-builder", tmp_path)
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    with site.db.read() as session:
        saved = segments.get_segment(session, site.account.account_id, segment_id).definition
    assert saved["and"][1]["did"]["where"] == [{"property": "Amount", "op": "gte", "value": 800}]
    assert saved["and"][0]["value"] == "Delhi"


def test_the_list_shows_estimates_and_users_and_a_segment_in_use_stays(
    site: Site, marketer: Page, tmp_path: Path
) -> None:
    page = marketer
    _people(site)
    pune = _segment(site, "Pune", {"property": "City", "op": "equals", "value": "Pune"})
    buyers = _segment(
        site,
        "Pune buyers",
        {"and": [{"segment_id": pune}, {"did": {"event": "Charged", "count": {"at_least": 2}}}]},
    )
    _draft_campaign(site, "Diwali offer", buyers)
    _segment(site, "Lapsed", {"did_not": {"event": "Charged", "in_the_last": {"days": 90}}})
    _segment(site, "Gold tier", {"property": "Tier", "op": "in", "value": ["Gold", "Platinum"]})
    page.goto("/segments")
    pune_row, buyers_row = _row(page, "Pune"), _row(page, "Pune buyers")
    expect(pune_row.get_by_role("cell").nth(1)).to_have_text("City is Pune")
    expect(pune_row.get_by_role("cell").nth(2)).to_have_text("3")  # the estimates load as rows show
    expect(buyers_row.get_by_role("cell").nth(2)).to_have_text("1")
    expect(buyers_row).to_contain_text("in segment Pune and did Charged at least 2 times")
    expect(buyers_row.get_by_role("link", name="Diwali offer")).to_have_attribute(
        "href", re.compile(r"/campaigns/\d+$")
    )
    expect(pune_row.get_by_role("link", name="Pune buyers")).to_be_visible()  # used by the other segment
    check_page(page)
    shoot(page, "segments-list", tmp_path)

    # the campaign that uses it is named on its page, and keeps it from being deleted
    buyers_row.get_by_role("link", name="Pune buyers").click()
    used_by = page.get_by_role("region", name="Used by")
    expect(used_by.get_by_role("link", name="Diwali offer")).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete segment").click()
    expect(page.locator("#e-delete")).to_have_text(
        "segment 'Pune buyers' is used by campaign 'Diwali offer' (draft) and cannot be deleted"
    )
    check_page(page)
    with site.db.read() as session:
        assert segments.get_segment(session, site.account.account_id, buyers).name == "Pune buyers"

    # a segment nothing uses goes
    with site.db.session() as session:
        segments.update_segment(session, site.account.account_id, buyers, definition={"did": "Charged"})
    page.goto(f"/segments/{pune}")
    expect(page.get_by_role("region", name="Used by")).to_contain_text("No campaign or segment refers to")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete segment").click()
    expect(page).to_have_url(re.compile(r"/segments$"))
    expect(page.get_by_role("link", name="Pune", exact=True)).to_have_count(0)


def test_an_agent_may_look_but_not_build(site: Site, page: Page) -> None:
    buyers = _segment(site, "Buyers", {"did": {"event": "Charged", "in_the_last": {"days": 30}}})
    sign_in(page, site.user("agent@acme.test", "agent"))
    page.goto("/segments")
    expect(page.get_by_role("link", name="+ Segment")).to_have_count(0)
    page.get_by_role("link", name="Buyers").click()
    expect(page.get_by_role("main")).to_contain_text("did Charged in the last 30 days")
    expect(page.get_by_role("button", name="Delete segment")).to_have_count(0)
    expect(page.get_by_label("Name")).to_have_count(0)
    check_page(page)
    # a definition the builder's rows cannot show is shown as it is
    odd = _segment(site, "Neither", {"not": {"or": [{"did": "Refund"}, {"did": "Complaint"}]}})
    page.goto(f"/segments/{odd}")
    expect(page.locator("pre")).to_contain_text('"did": "Complaint"')
    response = page.goto("/segments/new")
    assert response is not None and response.status == 403
    expect(page.get_by_role("main")).to_contain_text("This page needs the marketer role")
    # the builder's endpoints refuse it too, with the session's own CSRF token
    headers = json.loads(page.locator("body").get_attribute("hx-headers") or "{}")
    refused = page.request.post("/segments/estimate", headers=headers, form={"seg.g0.c0.kind": "did"})
    assert refused.status == 403 and "needs the marketer role" in refused.text()
    assert page.request.get(f"/segments/{buyers}/estimate").ok  # looking is allowed
