"""The campaign list, a campaign's stats (live while it sends), its recipients and their CSV, and stop /
resume / duplicate — in the browser, against the real server whose worker sends through the sandbox."""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.accounts.service import update_account
from tidings.campaigns.lifecycle import pause_campaign
from tidings.campaigns.schemas import CampaignCreate
from tidings.campaigns.service import create_campaign, start_campaign, stop_campaign
from tidings.config import SandboxSettings, Settings
from tidings.db import utcnow
from tidings.profiles.service import ingest
from tidings.stats.recipients import Filters, campaign_messages
from tidings.stats.service import campaign_stats
from tidings.templates.service import create_template, set_status
from tidings.web.pages import campaigns as pages

WAIT = 60_000  # ms: sending through the sandbox and its webhooks, on a busy machine


@pytest.fixture
def failure_rate() -> float:
    """The sandbox's share of refused messages (none, unless a test says so: then Sent is exact)."""
    return 0.0


@pytest.fixture
def settings(settings: Settings, failure_rate: float) -> Settings:
    sandbox = SandboxSettings(min_latency=0.0, max_latency=0.01, seed="pages", failure_rate=failure_rate)
    return settings.model_copy(update={"sandbox": sandbox})


def people(site: Site, n: int, *, start: int = 0) -> None:
    """Profiles u<start>..: every seventh not opted in, every eleventh without a phone; u1 is Asha."""
    records = []
    for i in range(start, start + n):
        data: dict[str, Any] = {"Name": "Asha" if i == 1 else f"User {i}", "MSG-whatsapp": i % 7 != 3}
        data["ticket_no"] = f"T{100 + i}"
        data["Language"] = "hi" if i % 2 else "en"
        if i % 11 != 5:
            data["Phone"] = f"+9198{10_000_000 + i}"
        records.append({"identity": "asha" if i == 1 else f"u{i}", "type": "profile", "profileData": data})
    with site.db.session() as session:
        assert not ingest(session, site.account.account_id, records).unprocessed


def template(site: Site, name: str = "tickets:confirmation", status: str = "APPROVED") -> int:
    with site.db.session() as session:
        return create_template(
            session,
            site.account.account_id,
            name=name,
            body="Hello {{1}}, your ticket is {{2}}.",
            category="UTILITY",
            status=status,
        ).id


VALUES = ['{{ Profile.Name | default: "there" }}', "{{ Profile.ticket_no }}"]


def campaign(site: Site, name: str, template_id: int | None, **spec: Any) -> int:
    """A campaign of ``template_id`` with ``VALUES`` (or of the ``variants`` given), no system control
    group."""
    message = {"template_id": template_id, "variables": VALUES} if template_id else {}
    with site.db.session() as session:
        created = create_campaign(
            session,
            site.account.account_id,
            CampaignCreate(name=name, system_control_group=False, **message, **spec),
        )
        return int(created.id)


def reachable(n: int, start: int = 0) -> int:
    return sum(1 for i in range(start, start + n) if i % 7 != 3 and i % 11 != 5)


def figure(page: Page, name: str) -> Any:
    return page.locator(f"#fig-{name} .value")


def wait_until_done(page: Page, campaign_id: int) -> None:
    """Open the stats page and wait, through its live updates, until the campaign completed."""
    page.goto(f"/campaigns/{campaign_id}")
    expect(page.locator("#live-status .badge")).to_have_text("completed", timeout=WAIT)


def test_the_list_shows_figures_and_filters(site: Site, marketer: Page, tmp_path: Path) -> None:
    page = marketer
    people(site, 30)
    approved = template(site)
    sent = campaign(site, "Diwali offers", approved, control_group_pct=10)
    campaign(site, "Diwali reminder", approved, draft=True)
    boarding = datetime(2030, 1, 15, 3, 30, tzinfo=UTC)  # 09:00 in India
    campaign(site, "Boarding pass", approved, send_at=boarding)
    campaign(
        site,
        "Cart left behind",
        approved,
        kind="inaction",
        trigger={"event": "Added To Cart", "absent_event": "Charged", "within_minutes": 30},
        ends_at=utcnow() + timedelta(days=30),
    )
    stopped = campaign(site, "Old promo", approved, send_at=utcnow() + timedelta(days=1))
    with site.db.session() as session:
        stop_campaign(session, site.account.account_id, stopped)
    with site.db.session() as session:
        update_account(session, site.account.account_id, timezone="Asia/Kolkata")
    wait_until_done(page, sent)
    expect(figure(page, "read")).not_to_have_text("0", timeout=WAIT)  # (the sandbox's read receipts)

    page.goto("/campaigns")
    rows = page.locator("table.campaign-list tbody tr")
    expect(rows).to_have_count(5)
    done = rows.filter(has_text="Diwali offers")
    with site.db.read() as session:
        figures = campaign_stats(session, sent)
    expect(done.locator("td").nth(4)).to_have_text(str(figures["sent"]))
    expect(done.locator("td").nth(2)).to_have_text("completed")
    expect(rows.filter(has_text="Cart left behind").locator("td").nth(1)).to_have_text("Inaction within time")
    expect(page.get_by_role("columnheader", name="Schedule")).to_have_text("Schedule (Asia/Kolkata)")
    expect(rows.filter(has_text="Boarding pass").locator("td").nth(3)).to_have_text("2030-01-15 09:00")
    expect(rows.filter(has_text="Diwali reminder").get_by_role("link")).to_have_attribute(
        "href", re.compile(r"/campaigns/\d+/edit$")
    )
    expect(page.get_by_role("link", name="+ Campaign")).to_have_attribute("href", "/campaigns/new")
    check_page(page)
    shoot(page, "campaigns-list", tmp_path)

    page.get_by_label("Search by name").fill("diwali")  # htmx: the table follows the typing
    expect(page).to_have_url(re.compile(r"q=diwali"))
    expect(rows).to_have_count(2)
    page.get_by_label("Status").select_option("draft")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Diwali reminder")
    page.get_by_label("Search by name").fill("")
    page.get_by_label("Status").select_option("")
    page.get_by_label("Type").select_option("inaction")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Cart left behind")
    page.goto("/campaigns?status=stopped")  # a link keeps its filters
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Old promo")
    expect(rows.first.get_by_role("button", name="Stop Old promo")).to_have_count(0)

    for i in range(25):
        campaign(site, f"Batch {i:02}", approved, draft=True)
    page.goto("/campaigns?status=draft")
    expect(rows).to_have_count(25)
    page.get_by_role("link", name="Next page").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Diwali reminder")


def test_stats_fill_in_live_while_the_page_is_open(site: Site, marketer: Page) -> None:
    page = marketer
    people(site, 40)
    waiting = template(site, status="PENDING")  # the campaign waits for it: nothing sent yet
    campaign_id = campaign(site, "Flash sale", waiting)
    page.goto(f"/campaigns/{campaign_id}")
    expect(page.locator("#live-status")).to_contain_text("waiting: template tickets:confirmation is PENDING")
    expect(figure(page, "sent")).to_have_text("0")
    page.evaluate("window.sameDocument = true")

    with site.db.session() as session:
        set_status(
            session, site.account.account_id, name="tickets:confirmation", language=None, status="APPROVED"
        )
    expect(figure(page, "sent")).to_have_text(str(reachable(40)), timeout=WAIT)
    expect(page.locator("#live-status .badge")).to_have_text("completed", timeout=WAIT)
    expect(figure(page, "errors")).to_have_text(str(40 - reachable(40)))
    expect(page.locator("#live-errors")).to_contain_text("not_opted_in")
    expect(page.locator("#live-chart [data-chart] canvas")).to_be_visible()  # drawn from a live update
    assert page.evaluate("window.sameDocument") is True  # no reload


def settled(site: Site) -> None:
    """Wait until the sandbox played every message's story (its last webhooks may follow completion)."""
    deadline = time.monotonic() + WAIT / 1000
    while site.app.state.worker.sandbox_pending:
        assert time.monotonic() < deadline, "the sandbox did not finish"
        time.sleep(0.05)


@pytest.mark.parametrize("failure_rate", [0.1])  # some refused by the provider: the second error group
def test_multivariate_stats_per_variant(site: Site, marketer: Page, tmp_path: Path) -> None:
    page = marketer
    people(site, 120)
    first = template(site)
    second = template(site, "tickets:confirmation_short")
    campaign_id = campaign(
        site,
        "Festival tickets A/B",
        None,
        variants=[
            {"key": "A", "template_id": first, "variables": VALUES, "weight": 50},
            {"key": "B", "template_id": second, "variables": VALUES, "weight": 50},
        ],
        split={"by": "percentage"},
        control_group_pct=15,
        conversion={"event": "Charged", "within_hours": 24},
    )
    wait_until_done(page, campaign_id)
    settled(site)
    page.reload()
    with site.db.read() as session:
        stats = campaign_stats(session, campaign_id)
    assert stats["errors_grouped"]["failed"]
    assert stats["variants"]["A"]["sent"] and stats["variants"]["B"]["sent"]
    table = page.locator("table.variants")
    for key in ("A", "B"):
        row = table.locator("tbody tr").filter(has=page.get_by_role("rowheader", name=re.compile(f"^{key}")))
        expect(row.locator("td").nth(1)).to_contain_text(str(stats["variants"][key]["sent"]))
    expect(figure(page, "control")).to_have_text(str(stats["control_group"]))
    expect(page.locator("#live-errors")).to_contain_text("Messages the provider refused or that failed")
    expect(page.locator("#live-errors table").nth(1).locator("tbody tr")).to_have_count(
        len(stats["errors_grouped"]["failed"])
    )

    # some of the messaged and of the control group bought afterwards: the conversion and its lift
    now = int(utcnow().timestamp())
    with site.db.read() as session:
        control, _ = campaign_messages(
            session, site.account.account_id, campaign_id, Filters(states=("control",))
        )
        messaged, _ = campaign_messages(
            session, site.account.account_id, campaign_id, Filters(states=("read",))
        )
    buyers = [r["identity"] for r in control[:2] + messaged[:12]]
    events = [
        {"identity": b, "type": "event", "evtName": "Charged", "ts": now, "evtData": {}} for b in buyers
    ]
    with site.db.session() as session:
        ingest(session, site.account.account_id, events)
    page.reload()
    expect(page.locator(".conversion")).to_contain_text("Lift against the control group")
    expect(page.locator(".conversion .lift strong")).to_have_text(re.compile(r"^[+-]\d+\.\d %$"))
    expect(page.locator("#live-chart [data-chart] canvas")).to_be_visible()
    check_page(page)
    shoot(page, "campaign-stats", tmp_path)


def test_stop_and_resume_from_the_stats_page(site: Site, marketer: Page) -> None:
    page = marketer
    people(site, 20)
    approved = template(site)
    with site.db.session() as session:  # started and paused in one transaction: the worker never sees it run
        paused = create_campaign(
            session,
            site.account.account_id,
            CampaignCreate(
                name="Paused one", template_id=approved, variables=VALUES, system_control_group=False
            ),
        ).id
        start_campaign(session, paused, utcnow())
        pause_campaign(session, paused, "paused: too many errors in a minute")
    page.goto(f"/campaigns/{paused}")
    expect(page.locator("#live-status .badge")).to_have_text("paused")
    expect(page.locator("#live-status")).to_contain_text("too many errors")
    expect(figure(page, "sent")).to_have_text("0")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#live-status .badge")).to_have_text("completed", timeout=WAIT)
    expect(figure(page, "sent")).to_have_text(str(reachable(20)))

    waiting = campaign(site, "Not yet", template(site, "tickets:later", status="PENDING"))
    page.goto(f"/campaigns/{waiting}")
    expect(page.locator("#live-status .badge")).to_have_text("scheduled")
    page.once("dialog", lambda dialog: dialog.accept())  # "Stop …? Messages not sent yet will not be sent."
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#live-status .badge")).to_have_text("stopped")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)


def test_duplicate_makes_a_draft(site: Site, marketer: Page) -> None:
    page = marketer
    people(site, 5)
    original = campaign(site, "Monsoon sale", template(site), send_at=utcnow() + timedelta(days=3))
    page.goto("/campaigns")
    page.get_by_role("button", name="Duplicate Monsoon sale").click()
    expect(page).not_to_have_url(re.compile(rf"/campaigns/{original}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Monsoon sale (copy)")
    expect(page.locator("#live-status .badge")).to_have_text("draft")
    expect(page.get_by_role("link", name="Continue editing")).to_have_attribute(
        "href", re.compile(r"/campaigns/\d+/edit$")
    )
    page.goto("/campaigns?status=draft")
    expect(page.locator("table.campaign-list tbody tr")).to_have_count(1)
    expect(page.locator("table.campaign-list tbody")).to_contain_text("Monsoon sale (copy)")

    # an agent looks, but has no button to change a campaign, and a hand-made form is refused
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, site.user("agent@acme.test", "agent"))
    page.goto(f"/campaigns/{original}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Monsoon sale")
    expect(page.get_by_role("button")).to_have_text(["Sign out"])
    token = page.locator("input[name=csrf_token]").first.input_value()  # (the sign-out form's)
    refused = page.request.post(f"/campaigns/{original}/stop", form={"csrf_token": token})
    assert refused.status == 403 and "needs the marketer role" in refused.text()
    page.goto("/campaigns")
    expect(page.get_by_role("link", name="+ Campaign")).to_have_count(0)
    expect(page.locator("#live-status, table.campaign-list tbody")).to_contain_text("scheduled")


def test_recipients_of_one_user_and_the_csv(site: Site, marketer: Page, tmp_path: Path) -> None:
    page = marketer
    people(site, 30)
    first = template(site)
    campaign_id = campaign(site, "Ticket confirmations", first)
    wait_until_done(page, campaign_id)
    page.get_by_role("link", name="Recipients").click()
    expect(page.locator("table.recipients tbody tr")).to_have_count(30)

    page.get_by_label("Identity or phone starts with").fill("asha")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.recipients tbody tr")
    expect(rows).to_have_count(1)
    asha = rows.first
    expect(asha).to_contain_text("+919810000001")
    expect(asha.locator(".message-text")).to_have_text("Hello Asha, your ticket is T101.")
    expect(asha.locator(".params")).to_contain_text("Asha")
    expect(asha.locator(".times")).to_contain_text("Sent")
    expect(asha.locator(".times")).to_contain_text("Planned")

    page.goto(f"/campaigns/{campaign_id}/messages?q=u1")
    expect(rows).to_have_count(10)
    check_page(page)
    shoot(page, "campaign-messages", tmp_path)

    page.goto(f"/campaigns/{campaign_id}")  # a reason's count leads to the users it concerns
    page.get_by_role("link", name=re.compile(r"see who \(not_opted_in\)")).click()
    expect(page.locator(".notice")).to_contain_text("not_opted_in")
    expect(rows).to_have_count(sum(1 for i in range(30) if i % 7 == 3))

    page.goto(f"/campaigns/{campaign_id}/messages")
    page.get_by_label("State").select_option("skipped")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(30 - reachable(30))
    expect(rows.filter(has_text="not_opted_in").first).to_contain_text("has not opted in")

    page.goto(f"/campaigns/{campaign_id}/messages")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    path = tmp_path / "recipients.csv"
    download.value.save_as(path)
    with path.open(newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == 30
    assert {line["identity"] for line in lines} == {"asha", *(f"u{i}" for i in range(30) if i != 1)}
    row = next(line for line in lines if line["identity"] == "asha")
    assert row["params"] == '["Asha", "T101"]' and row["sent_at"]


def events_of(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The server-sent events of a stream, each as its fields (a comment as ``comment``)."""
    event: dict[str, str] = {}
    for line in lines:
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def test_the_live_stream_resumes_where_the_browser_was(
    site: Site, marketer: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream lasts a while (so that a page left open never holds up a server that stops), then the
    browser reconnects with the last event's id, and gets only the parts that changed since."""
    people(site, 3)
    campaign_id = campaign(site, "Next week", template(site), send_at=utcnow() + timedelta(days=7))
    monkeypatch.setattr(pages, "LIVE_STREAM", 0.0)  # one tick a stream
    session = next(c for c in marketer.context.cookies() if c["name"] == "tidings_session")["value"]
    with httpx.Client(base_url=site.url, cookies={"tidings_session": session}) as client:
        with client.stream("GET", f"/campaigns/{campaign_id}/live") as first:
            assert first.headers["content-type"].startswith("text/event-stream")
            events = list(events_of(first.iter_lines()))  # (it ends by itself: no "done")
        assert events[0] == {"retry": "1000"} and events[1]["event"] == "update"
        parts = json.loads(events[1]["data"])
        assert set(parts) == set(pages.LIVE_PARTS) and "scheduled" in parts["live-status"]
        assert not any(e.get("event") == "done" for e in events)

        again = {"last-event-id": events[1]["id"]}
        with client.stream("GET", f"/campaigns/{campaign_id}/live", headers=again) as second:
            assert list(events_of(second.iter_lines())) == [{"retry": "1000"}, {"comment": "still here"}]
        with site.db.session() as db_session:
            stop_campaign(db_session, site.account.account_id, campaign_id)
        with client.stream("GET", f"/campaigns/{campaign_id}/live", headers=again) as third:
            changed = [e for e in events_of(third.iter_lines()) if e.get("event") == "update"]
        assert set(json.loads(changed[0]["data"])) == {"live-actions", "live-status"}  # Stop is gone
