"""The saved replies page (``/inbox/saved-replies``), on the real server in Chromium: an agent adds one,
sees it listed, is told next to the field when a shortcut is taken (what they typed kept), deletes
another after confirming, then inserts the saved one in a conversation's reply box by typing its
shortcut and Tab. Without a browser: a refusal of each field, another account's reply is not found."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi.testclient import TestClient
from playwright.sync_api import Page, expect

from tests.conftest import new_account
from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.accounts.service import NewAccount
from tidings.conversations.service import conversation_by_phone, record_inbound, save_reply, saved_replies
from tidings.db import Database, utcnow
from tidings.providers.base import InboundReply
from tidings.secrets import SecretBox
from tidings.users.service import create_user, start_session
from tidings.web.auth import SESSION_COOKIE, csrf_for

PHONE = "+919810000002"
HOURS = "We are open 9 to 6,\nMonday to Saturday."


def conversation(site: Site) -> int:
    """A user wrote just now (its window open): the conversation's id."""
    said = InboundReply(f"wamid.{uuid.uuid4()}", PHONE, utcnow(), text="When are you open?")
    with site.db.session() as session:
        record_inbound(session, site.account.account_id, "sandbox", said)
        found = conversation_by_phone(session, site.account.account_id, PHONE)
        assert found is not None
        return found.id


def test_an_agent_keeps_saved_replies_and_uses_one(site: Site, page: Page, tmp_path: Path) -> None:
    conversation_id = conversation(site)
    with site.db.session() as session:
        save_reply(session, site.account.account_id, "bye", "Thanks, bye!")
    sign_in(page, site.user("agent@acme.test", "agent"))

    # From the reply box's hint to the page (the Inbox stays the current area).
    page.goto(f"/inbox/{conversation_id}")
    page.get_by_role("link", name="Manage saved replies").click()
    expect(page).to_have_url(f"{site.url}/inbox/saved-replies")
    expect(page.get_by_role("heading", name="Saved replies")).to_be_visible()
    expect(page.get_by_role("link", name="Inbox", exact=True)).to_have_attribute("aria-current", "page")

    page.get_by_label("Shortcut").fill("/Hours")
    page.get_by_label("Text").fill(HOURS)
    page.get_by_role("button", name="Add saved reply").click()
    expect(page.get_by_role("status")).to_contain_text("Saved /hours")
    row = page.locator("tbody tr", has_text="/hours")
    expect(row).to_contain_text("We are open 9 to 6")
    expect(page.get_by_label("Shortcut")).to_have_value("")
    check_page(page)

    # The same shortcut again: the error next to the field, what was typed kept.
    page.get_by_label("Shortcut").fill("hours")
    page.get_by_label("Text").fill("Another text")
    page.get_by_role("button", name="Add saved reply").click()
    expect(page.locator("#e-shortcut")).to_have_text("/hours is already a saved reply")
    expect(page.get_by_label("Shortcut")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Shortcut")).to_have_value("hours")
    expect(page.get_by_label("Text")).to_have_value("Another text")
    check_page(page)
    shoot(page, "saved-replies", tmp_path)

    # Delete /bye: refused once at the confirm, then accepted.
    delete = page.get_by_role("button", name="Delete /bye")
    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    expect(delete).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    expect(page.get_by_role("button", name="Delete /bye")).to_have_count(0)
    expect(page.locator("tbody tr", has_text="/hours")).to_have_count(1)
    with site.db.read() as session:
        assert [s.shortcut for s in saved_replies(session, site.account.account_id)] == ["hours"]

    # In the conversation: /hours then Tab inserts the text.
    page.get_by_role("link", name="← Back to the inbox").click()
    page.goto(f"/inbox/{conversation_id}")
    reply = page.get_by_label("Reply", exact=True)
    reply.click()
    reply.type("/hours")
    reply.press("Tab")
    expect(reply).to_have_value(HOURS)
    expect(page.locator("#reply-hint")).not_to_contain_text("/bye")


def test_refusals_are_shown_next_to_their_field(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    other = new_account(db, box, "Other")
    with db.session() as session:
        theirs = save_reply(session, other.account_id, "hours", "Theirs").id
        user = create_user(
            session, account.account_id, email="cara@acme.test", role="agent", password="p" * 12
        )
        token = start_session(session, user).token
    cookie, csrf = {"Cookie": f"{SESSION_COOKIE}={token}"}, csrf_for(token)

    bad = client.post(
        "/inbox/saved-replies",
        data={"csrf_token": csrf, "shortcut": "open hours!", "text": "Nine to six"},
        headers=cookie,
    )
    assert bad.status_code == 422
    assert 'id="e-shortcut"' in bad.text and 'id="e-text"' not in bad.text
    assert 'value="open hours!"' in bad.text and "Nine to six</textarea>" in bad.text

    empty = client.post(
        "/inbox/saved-replies", data={"csrf_token": csrf, "shortcut": "hours", "text": " "}, headers=cookie
    )
    assert empty.status_code == 422 and 'id="e-text"' in empty.text and 'id="e-shortcut"' not in empty.text

    # Another account's shortcut is free here; its reply is not ours to delete.
    added = client.post(
        "/inbox/saved-replies",
        data={"csrf_token": csrf, "shortcut": "hours", "text": "Ours"},
        headers=cookie,
        follow_redirects=False,
    )
    assert added.status_code == 303 and added.headers["location"] == "/inbox/saved-replies?added=hours"
    refused = client.post(f"/inbox/saved-replies/{theirs}/delete", data={"csrf_token": csrf}, headers=cookie)
    assert refused.status_code == 404
    with db.read() as session:
        assert [s.text for s in saved_replies(session, other.account_id)] == ["Theirs"]
        assert [s.text for s in saved_replies(session, account.account_id)] == ["Ours"]
