"""Account settings in the browser: the time zone and engagement rules (errors next to their field), users
(invite with a typed or a generated first password, change role, disable, remove; never one's own user),
API keys (the secret shown once, with a copy button; the list; revoke)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.accounts.models import Account
from tidings.accounts.service import update_account
from tidings.campaigns.rules import ConsentReplies
from tidings.users import service as users

KEYWORDS = {"es": {"opt_out": ["BAJA"], "opt_in": ["ALTA"]}}
DEFAULT_CONVERSATIONS = {"reply_attribution_hours": 24, "consent_replies": ConsentReplies().model_dump()}


def test_the_account_settings_are_saved_and_each_error_is_shown_next_to_its_field(
    site: Site, admin: Page, tmp_path: Path
) -> None:
    with site.db.session() as session:  # set through the API's service: kept by the page, which omits them
        update_account(session, site.account.account_id, settings={"keywords": KEYWORDS})
    page = admin
    page.goto("/settings/account")
    expect(page.get_by_role("heading", name="Account settings")).to_be_visible()
    page.get_by_label("Account time zone").select_option("Asia/Kolkata")
    page.get_by_label("Share of all profiles").select_option("3")
    page.get_by_label("Messages at most").fill("0")  # below 1, and no hours
    page.get_by_role("button", name="Save settings").click()

    expect(page.get_by_role("alert").first).to_contain_text("Nothing was saved")
    expect(page.locator("#e-cap_max")).to_contain_text("greater than or equal to 1")
    expect(page.get_by_label("Messages at most")).to_have_attribute(
        "aria-describedby", re.compile("e-cap_max")
    )
    expect(page.locator("#e-cap_hours")).to_contain_text("required")
    expect(page.get_by_label("Account time zone")).to_have_value("Asia/Kolkata")  # what was typed stays
    with site.db.read() as session:
        assert session.get_one(Account, site.account.account_id).timezone == "UTC"  # nothing saved

    page.get_by_label("Messages at most").fill("3")
    page.get_by_label("Within hours").fill("168")
    page.get_by_label("From").fill("22:00")
    page.get_by_label("Until").fill("08:00")
    page.get_by_label("A message due in DND").select_option("drop")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    with site.db.read() as session:
        account = session.get_one(Account, site.account.account_id)
        assert account.timezone == "Asia/Kolkata"
        assert account.settings == {
            "system_control_group_pct": 3,
            "frequency_cap": {"max": 3, "hours": 168},
            "dnd": {"start": "22:00", "end": "08:00", "timezone": "account", "action": "drop"},
            "keywords": KEYWORDS,
            **DEFAULT_CONVERSATIONS,
        }
    expect(page.get_by_label("Within hours")).to_have_value("168")  # read back
    check_page(page)
    shoot(page, "settings-account", tmp_path)

    # emptied, the cap and DND are gone (the page replaces the rules as a whole)
    page.get_by_label("Messages at most").fill("")
    page.get_by_label("Within hours").fill("")
    page.get_by_label("From").fill("")
    page.get_by_label("Until").fill("")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    with site.db.read() as session:
        saved = session.get_one(Account, site.account.account_id).settings
    assert saved == {"system_control_group_pct": 3, "keywords": KEYWORDS, **DEFAULT_CONVERSATIONS}

    # Conversations: how long a reply counts for a campaign, and the STOP / START confirmation.
    page.get_by_label("Reply attribution window (hours)").fill("0")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#e-reply_attribution_hours")).to_contain_text("greater than or equal to 1")
    page.get_by_label("Reply attribution window (hours)").fill("48")
    page.get_by_label("Confirm STOP and START with one message").uncheck()
    page.get_by_label("After STOP").fill("Done: no more messages. START to come back.")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    with site.db.read() as session:
        saved = session.get_one(Account, site.account.account_id).settings
    assert saved["reply_attribution_hours"] == 48
    assert saved["consent_replies"] == {
        **ConsentReplies().model_dump(),
        "enabled": False,
        "opt_out": "Done: no more messages. START to come back.",
    }
    expect(page.get_by_label("Confirm STOP and START with one message")).not_to_be_checked()


def _id_of(site: Site, email: str) -> int:
    with site.db.read() as session:
        return next(u.id for u in users.list_users(session, site.account.account_id) if u.email == email)


def test_an_admin_invites_changes_disables_and_removes_users_but_not_their_own(
    site: Site, admin: Page, browser: Browser, tmp_path: Path
) -> None:
    page = admin
    page.goto("/settings/users")
    page.get_by_label("E-mail").fill("not-an-address")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#e-email")).to_contain_text("is not an e-mail address")

    page.get_by_label("E-mail").fill("ravi@acme.test")
    page.get_by_label("Role", exact=True).select_option("marketer")
    page.get_by_label("First password").fill("short")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("#e-password")).to_contain_text("12 to 256 characters")
    expect(page.get_by_label("E-mail")).to_have_value("ravi@acme.test")
    page.get_by_label("First password").fill("a first password for Ravi")
    page.get_by_role("button", name="Add user").click()
    ravi = page.get_by_role("row", name=re.compile("ravi@acme.test"))
    expect(ravi).to_contain_text("active")

    # no password typed: one is made and shown once
    page.get_by_label("E-mail").fill("meera@acme.test")
    page.get_by_label("Role", exact=True).select_option("agent")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_contain_text("meera@acme.test was added")
    password = page.locator("#new-password").inner_text().strip()
    assert len(password) >= 12
    check_page(page)
    shoot(page, "settings-users", tmp_path)

    other = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=site.url)
    meera_page = other.new_page()
    sign_in(meera_page, "meera@acme.test", password)
    expect(meera_page).to_have_url(re.compile(r"/campaigns$"))
    page.goto("/settings/users")
    expect(page.get_by_text(password)).to_have_count(0)  # shown once

    ravi.get_by_label("Role of ravi@acme.test").select_option("admin")
    ravi.get_by_role("button", name="Change role").click()
    expect(ravi.get_by_label("Role of ravi@acme.test")).to_have_value("admin")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Disable meera@acme.test").click()
    expect(page.get_by_role("row", name=re.compile("meera@acme.test"))).to_contain_text("disabled")
    meera_page.goto("/campaigns")  # signed out by it
    expect(meera_page).to_have_url(re.compile(r"/signin"))
    other.close()

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Remove ravi@acme.test").click()
    expect(page.get_by_role("row", name=re.compile("ravi@acme.test"))).to_have_count(0)

    # one's own row has no buttons; the form sent by hand is refused, in the row
    me = page.get_by_role("row", name=re.compile("admin@acme.test"))
    expect(me.get_by_role("button")).to_have_count(0)
    token = page.locator("input[name=csrf_token]").first.get_attribute("value") or ""
    mine = _id_of(site, "admin@acme.test")
    for action, form in (("remove", {}), ("disable", {}), ("role", {"role": "agent"})):
        answer = page.request.post(f"/settings/users/{mine}/{action}", form={"csrf_token": token, **form})
        assert answer.status == 409, action
        assert "yourself" in answer.text(), action
    with site.db.read() as session:
        assert users.get_user(session, site.account.account_id, mine).role == "admin"


def test_an_api_key_is_shown_once_listed_and_revoked(site: Site, admin: Page, tmp_path: Path) -> None:
    page = admin
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto("/settings/api-keys")
    expect(page.get_by_text("No API keys yet.")).to_be_visible()
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#e-name")).to_contain_text("the key needs a name")

    page.get_by_label("Name").fill("CRM sync")
    page.get_by_label("Role", exact=True).select_option("marketer")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("status")).to_contain_text("shown only once")
    secret = page.locator("#new-secret").inner_text().strip()
    assert secret.startswith("tid_")
    check_page(page)
    shoot(page, "settings-api-keys", tmp_path)
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    bearer = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=site.url, headers=bearer) as api:
        assert api.get("/api/v1/templates").status_code == 200  # a marketer's key
        assert api.get("/api/v1/users").status_code == 403
    page.goto("/settings/api-keys")
    expect(page.get_by_text(secret)).to_have_count(0)  # shown once
    row = page.get_by_role("row", name=re.compile("CRM sync"))
    expect(row).to_contain_text(secret[:10] + "…")
    expect(row).to_contain_text("marketer")
    expect(row.locator("td").nth(4)).not_to_have_text("never")  # last used: just now

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke CRM sync").click()
    expect(page.get_by_role("row", name=re.compile("CRM sync"))).to_contain_text("revoked")
    with httpx.Client(base_url=site.url, headers=bearer) as api:
        assert api.get("/api/v1/templates").status_code == 401
