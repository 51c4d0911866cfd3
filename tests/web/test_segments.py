"""Segments in the browser: the segment builder with its live estimate, saving and editing a segment, the
campaigns that use it, and the refusals (a name in use, a wrong count, deleting a segment in use, an
agent on a marketer's form)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.web.conftest import Site, check_page, shoot
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
    shoot(page, "segment-builder", tmp_path)

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
    page.get_by_label("Group 1, condition 2, filter 1: property").fill("Amount")
    page.get_by_label("Group 1, condition 2, filter 1: test").select_option("gte")
    redrawn(page)
    page.get_by_label("Group 1, condition 2, filter 1: value type").select_option("number")
    redrawn(page)
    page.get_by_label("Group 1, condition 2, filter 1: value", exact=True).fill("1000")
    expect(estimate).to_contain_text("0 profiles")
    page.get_by_label("Group 1, condition 2, filter 1: value", exact=True).fill("800")
    expect(estimate).to_contain_text("1 profile")
    page.get_by_role("button", name="Save changes").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    with site.db.read() as session:
        saved = segments.get_segment(session, site.account.account_id, segment_id).definition
    assert saved["and"][1]["did"]["where"] == [{"property": "Amount", "op": "gte", "value": 800}]
    assert saved["and"][0]["value"] == "Delhi"
