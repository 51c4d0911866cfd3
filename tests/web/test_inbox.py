"""The inbox as agents use it, on the real server with its worker and the sandbox: a user answers a
campaign and the conversation appears without a reload; one agent takes it and answers (the ticks fill in
as the sandbox reports), a second agent is told who holds it and cannot answer over them; the 24-hour
window closes (the app's clock moved on) and the reply box offers templates only; the agent resolves it;
the user writes STOP and the profile beside the thread shows them opted out."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select, update

from tests.conftest import basic, new_account
from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.accounts.models import Integration
from tidings.accounts.service import NewAccount
from tidings.config import SandboxSettings, Settings
from tidings.conversations.models import InboundMessage, MediaFile
from tidings.conversations.service import conversation_by_phone, record_inbound, save_reply, store_media
from tidings.db import Database, utcnow
from tidings.delivery.models import Message
from tidings.profiles.service import ingest
from tidings.providers.base import InboundReply
from tidings.providers.sandbox import user_says_blocking, webhook_base_url
from tidings.secrets import SecretBox
from tidings.templates.service import create_template
from tidings.users.service import create_user, start_session
from tidings.web.auth import SESSION_COOKIE, csrf_for
from tidings.web.pages.inbox import LIST_PAGE

WAIT = 60_000  # ms: through the worker, the sandbox and its webhooks, on a busy machine
PHONE = "+919810000001"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cf"
    "c0f01f0005000201ffa8f5a3b10000000049454e44ae426082"
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The sandbox delivers and reads every message and never answers by itself: the user's words are
    the test's."""
    sandbox = SandboxSettings(
        min_latency=0.0,
        max_latency=0.01,
        seed="tests",
        delivery_rate=1,
        read_rate=1,
        reply_rate=0,
        failure_rate=0,
    )
    return settings.model_copy(update={"sandbox": sandbox})


def user_says(site: Site, box: SecretBox, text: str, **more: Any) -> str:
    """Asha writes to the business, as the sandbox posts it (``sandbox.user_says``: Vonage's inbound
    shape, signed with the account's sandbox secret). Run in a thread of its own: Playwright's sync API
    holds this thread's event loop."""
    with site.db.read() as session:
        integration = session.get(Integration, site.account.account_id)
        assert integration is not None
        secret = str(box.open(integration.secrets)["signature_secret"])
    base = webhook_base_url(site.url, site.account.account_id)
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(user_says_blocking, base, secret, PHONE, text, **more).result()


def campaign_sent(site: Site) -> str:
    """A one-time campaign to Asha, through the API; its message's provider id once the sandbox took it."""
    auth = basic(site.account)
    with site.db.session() as session:
        profile = {"Name": "Asha", "City": "Pune", "Phone": PHONE, "MSG-whatsapp": True}
        assert not ingest(
            session,
            site.account.account_id,
            [{"type": "profile", "identity": "asha", "profileData": profile}],
        ).unprocessed
        template = create_template(
            session,
            site.account.account_id,
            name="shop:sale",
            body="Hi {{1}}, the sale is on!",
            category="MARKETING",
        )
        create_template(
            session,
            site.account.account_id,
            name="shop:follow_up",
            body="Hi {{1}}, about your question: {{2}}",
            category="UTILITY",
        )
        save_reply(session, site.account.account_id, "hours", "We are open 9 to 6, Monday to Saturday.")
        template_id = template.id
    created = httpx.post(
        f"{site.url}/api/v1/campaigns",
        headers=auth,
        json={"name": "Winter sale", "template_id": template_id, "variables": ["{{ Profile.Name }}"]},
    )
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + WAIT / 1000
    while time.monotonic() < deadline:
        with site.db.read() as session:
            sent = session.scalar(select(Message.provider_message_id).where(Message.state == "read"))
        if sent:
            return sent
        time.sleep(0.1)
    raise AssertionError("the campaign's message was not read in time")


@pytest.fixture
def second(browser: Browser, site: Site) -> Iterator[Page]:
    """Another agent, in a browser of their own."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=site.url)
    page = context.new_page()
    sign_in(page, site.user("bela@acme.test", "agent"))
    yield page
    context.close()


def csrf(page: Page) -> str:
    return page.locator("input[name=csrf_token]").first.get_attribute("value") or ""


def test_an_agent_answers_a_campaign_reply(
    site: Site, box: SecretBox, page: Page, second: Page, tmp_path: Any
) -> None:
    provider_id = campaign_sent(site)
    sign_in(page, site.user("asha.agent@acme.test", "agent"))
    page.goto("/inbox")
    expect(page.get_by_role("link", name="Inbox")).to_have_attribute("aria-current", "page")
    expect(page.locator(".conv-none")).to_be_visible()
    check_page(page)

    # The user answers the campaign: the conversation appears as New, without a reload.
    user_says(site, box, "Is the sale still on tomorrow?", context=provider_id)
    conv = page.locator(".conv").first
    expect(conv).to_contain_text("Asha", timeout=WAIT)
    expect(conv).to_contain_text("Is the sale still on tomorrow?")
    expect(conv.locator(".badge")).to_have_text("new")
    expect(page.locator("[data-tab=new] .count")).to_have_text("1")
    expect(conv.locator(".unread-count")).to_contain_text("1")
    shoot(page, "inbox", tmp_path)

    # Agent A opens it: the campaign message is marked with its name, the window shows its time left.
    conv.get_by_role("link").click()
    conversation_id = int(re.search(r"/inbox/(\d+)", page.url).group(1))  # type: ignore[union-attr]
    thread = page.locator("#inbox-thread")
    expect(thread.locator(".from-campaign")).to_contain_text("Campaign · Winter sale")
    expect(thread.locator(".from-user")).to_contain_text("Is the sale still on tomorrow?")
    expect(page.locator("#inbox-window")).to_contain_text(re.compile(r"Window open — 23 h 5\d min left"))
    expect(page.locator("#inbox-profile")).to_contain_text("Winter sale")
    page.get_by_role("button", name="Take").click()
    expect(page.locator("#inbox-head .holder")).to_have_text("You hold it")

    # Asha sends a photo: the worker fetches it from the sandbox, and it shows in the thread.
    user_says(site, box, "the dent", media_kind="image")
    photo = thread.locator(".from-user img.bubble-image")
    expect(photo).to_be_visible(timeout=WAIT)
    expect(photo).to_have_js_property("complete", True)
    assert photo.evaluate("img => img.naturalWidth") > 0
    expect(thread.locator(".from-user").last).to_contain_text("the dent")

    # … answers with a saved reply (typed as /hours then Tab), and sees the ticks fill in.
    box_ = page.get_by_label("Reply", exact=True)
    box_.fill("Yes! ")
    box_.press("End")
    box_.type("/hours")
    box_.press("Tab")
    expect(box_).to_have_value("Yes! We are open 9 to 6, Monday to Saturday.")
    page.get_by_role("button", name="Send", exact=True).click()
    mine = thread.locator(".from-agent")
    expect(mine).to_contain_text("We are open 9 to 6")
    expect(mine.locator(".ticks")).to_have_attribute("data-state", "read", timeout=WAIT)
    expect(page.locator(".conv").first.locator(".badge")).to_have_text("active")
    check_page(page)

    # The same form sent twice (its idempotency key) sends one message.
    form = {"csrf_token": csrf(page), "key": "twice", "text": "Anything else?"}
    for _ in range(2):
        assert page.request.post(f"/inbox/{conversation_id}/reply", multipart=form).ok
    twice = thread.locator(".from-agent", has_text="Anything else?")
    expect(twice).to_have_count(1, timeout=WAIT)
    expect(twice.locator(".ticks")).to_have_attribute("data-state", "read", timeout=WAIT)

    # A file, with a caption: kept, sent by link, and served to the account's users.
    page.get_by_label("Reply", exact=True).fill("Our shop front")
    page.get_by_label("Attach a file").set_input_files(
        files=[{"name": "shop.png", "mimeType": "image/png", "buffer": PNG}]
    )
    page.get_by_role("button", name="Send", exact=True).click()
    sent_file = thread.locator(".from-agent", has_text="Our shop front").locator("img.bubble-image")
    expect(sent_file).to_be_visible(timeout=WAIT)  # shown inline, as the user's photos are
    with site.db.read() as session:
        media_id = session.scalar(select(MediaFile.id).where(MediaFile.filename == "shop.png"))
    expect(sent_file).to_have_attribute("src", f"/inbox/media/{media_id}")
    served = page.request.get(f"/inbox/media/{media_id}")
    assert served.ok and served.body() == PNG and served.headers["content-type"] == "image/png"

    # Agent B is told who holds it and may not answer over them; their note shows in A's thread live.
    second.goto(f"/inbox/{conversation_id}")
    expect(second.locator("#inbox-head .holder")).to_have_text("Held by asha.agent@acme.test")
    expect(second.locator(".held")).to_contain_text("asha.agent@acme.test holds this conversation")
    expect(second.get_by_label("Reply", exact=True)).to_have_count(0)
    refused = second.request.post(
        f"/inbox/{conversation_id}/reply", multipart={"csrf_token": csrf(second), "key": "b1", "text": "Hi"}
    )
    assert refused.status == 409
    assert "asha.agent@acme.test holds this conversation" in refused.text()
    second.get_by_text("Add a private note").click()
    second.get_by_label("Note (only agents see it)").fill("She asked me yesterday too")
    second.get_by_role("button", name="Add note").click()
    expect(thread.locator(".from-note")).to_contain_text("She asked me yesterday too", timeout=WAIT)
    expect(thread.locator(".from-note")).to_contain_text("Private note · bela@acme.test")
    shoot(page, "inbox-thread", tmp_path)

    # A day passes: the window closes, and the reply box offers templates only (live, no reload).
    site.app.state.clock = lambda: utcnow() + timedelta(hours=24, minutes=1)
    expect(page.locator("#inbox-window")).to_contain_text("Window closed at", timeout=WAIT)
    expect(page.get_by_label("Reply", exact=True)).to_have_count(0)
    page.get_by_label("Template").select_option(label="shop:follow_up (en)")
    expect(page.locator("#template-fields")).to_contain_text("about your question")
    expect(page.locator("#template-fields input[name=param]")).to_have_count(2)
    expect(page.locator(".conv").first.locator(".badge")).to_have_text("inactive")
    check_page(page)

    # A sends free text anyway (a form drawn before the window closed): refused with when it closed.
    late = page.request.post(
        f"/inbox/{conversation_id}/reply",
        multipart={"csrf_token": csrf(page), "key": "late", "text": "Hello?"},
    )
    assert late.status == 409 and "window closed at" in late.text()

    # A resolves it.
    page.get_by_role("button", name="Resolve").click()
    expect(page.locator("#inbox-head .badge")).to_have_text("resolved")
    expect(page.locator("[data-tab=resolved] .count")).to_have_text("1")

    # The user writes STOP: opted out; the conversation opens again (A holds it: pending).
    user_says(site, box, "STOP")
    profile = page.locator("#inbox-profile")
    expect(profile.locator(".consent-now")).to_contain_text("MSG-whatsapp: false", timeout=WAIT)
    expect(profile.locator(".consent-changes")).to_contain_text("in → out")
    expect(page.locator("#inbox-head .badge")).to_have_text("pending")
    expect(thread.locator(".from-user").last).to_contain_text("STOP")
    expect(page.locator(".conv").first.locator(".unread-count")).to_have_count(0)  # read: A has it open
    check_page(page)


def test_the_inbox_needs_a_signed_in_user(client: TestClient) -> None:
    for path in ("/inbox", "/inbox/1", "/inbox/live", "/inbox/media/1"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/signin?next=%2Finbox"), path
    refused = client.post("/inbox/1/reply", data={"text": "hi"}, follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"].startswith("/signin")


def test_a_file_is_served_to_its_account_only(
    client: TestClient, db: Database, box: SecretBox, account: NewAccount
) -> None:
    other = new_account(db, box, "Other")
    with db.session() as session:
        ours = store_media(session, account.account_id, PNG, "image/png", "a.png").id
        page = store_media(session, account.account_id, b"<script>x()</script>", "text/html", "a.html").id
        theirs = store_media(session, other.account_id, PNG, "image/png", "b.png").id
        user = create_user(
            session, account.account_id, email="agent@acme.test", role="agent", password="x" * 12
        )
        token = start_session(session, user).token
    client.cookies.set("tidings_session", token)
    shown = client.get(f"/inbox/media/{ours}")
    assert shown.status_code == 200 and shown.content == PNG
    assert shown.headers["content-type"] == "image/png"
    assert shown.headers["x-content-type-options"] == "nosniff"
    assert shown.headers["content-security-policy"].startswith("sandbox")
    # anything but a picture, a video or a sound is downloaded, never shown as a page of the site
    downloaded = client.get(f"/inbox/media/{page}")
    assert downloaded.headers["content-type"] == "application/octet-stream"
    assert downloaded.headers["content-disposition"] == 'attachment; filename="a.html"'
    assert client.get(f"/inbox/media/{theirs}").status_code == 404


def said(db: Database, account: NewAccount, text: str, **more: Any) -> int:
    """A user's message recorded as a webhook would (no server needed): its conversation's id."""
    reply = InboundReply(f"wamid.{uuid.uuid4()}", PHONE, utcnow(), text=text, **more)
    with db.session() as session:
        record_inbound(session, account.account_id, "sandbox", reply)
        conversation = conversation_by_phone(session, account.account_id, PHONE)
        assert conversation is not None
        return conversation.id


def session_of(db: Database, account: NewAccount, email: str, role: str) -> tuple[dict[str, str], str, int]:
    """The Cookie header of a new session of a new user, its CSRF token and the user's id."""
    with db.session() as session:
        user = create_user(session, account.account_id, email=email, role=role, password="p" * 12)
        token = start_session(session, user).token
        return {"Cookie": f"{SESSION_COOKIE}={token}"}, csrf_for(token), user.id


def test_an_admin_assigns_and_the_list_filters(client: TestClient, db: Database, account: NewAccount) -> None:
    conversation_id = said(db, account, "Where is my order?")
    admin, admin_csrf, _ = session_of(db, account, "boss@acme.test", "admin")
    agent, agent_csrf, agent_id = session_of(db, account, "cara@acme.test", "agent")
    page = client.get(f"/inbox/{conversation_id}", headers=admin)
    assert page.status_code == 200 and "Assign to" in page.text
    assert "Assign to" not in client.get(f"/inbox/{conversation_id}", headers=agent).text  # an admin's

    form = {"csrf_token": admin_csrf, "assignee": str(agent_id), "back": "state=new"}
    given = client.post(f"/inbox/{conversation_id}/assign", data=form, headers=admin, follow_redirects=False)
    assert given.status_code == 303 and given.headers["location"] == f"/inbox/{conversation_id}?state=new"
    mine = client.get("/inbox?assignee=mine", headers=agent).text
    assert "Where is my order?" in mine and "You hold it" not in mine  # (no thread open)
    assert "Where is my order?" not in client.get("/inbox?assignee=none", headers=agent).text
    assert "Where is my order?" in client.get("/inbox?q=order", headers=agent).text
    assert "Where is my order?" not in client.get("/inbox?q=refund", headers=agent).text
    assert "Where is my order?" not in client.get("/inbox?state=resolved", headers=agent).text

    labelled = {"csrf_token": agent_csrf, "labels": "Shipping, vip"}
    client.post(f"/inbox/{conversation_id}/labels", data=labelled, headers=agent, follow_redirects=False)
    assert "Where is my order?" in client.get("/inbox?label=vip", headers=agent).text
    assert "Where is my order?" not in client.get("/inbox?label=refund", headers=agent).text

    # The agent who holds it answers; the admin's answer over them is theirs to give, an agent's is not.
    other, other_csrf, _ = session_of(db, account, "dev@acme.test", "agent")
    refused = client.post(
        f"/inbox/{conversation_id}/resolve",
        data={"csrf_token": other_csrf},
        headers=other,
        follow_redirects=False,
    )
    assert refused.status_code == 409 and "cara@acme.test holds this conversation" in refused.text
    # A refused answer keeps what was written.
    long = "a" * 4100
    too_long = client.post(
        f"/inbox/{conversation_id}/reply", data={"csrf_token": agent_csrf, "text": long}, headers=agent
    )
    assert too_long.status_code == 422 and "at most 4096 characters" in too_long.text
    assert f">{long}</textarea>" in too_long.text
    # An admin takes it over from whoever holds it, and may resolve it.
    taken = client.post(
        f"/inbox/{conversation_id}/take",
        data={"csrf_token": admin_csrf},
        headers=admin,
        follow_redirects=False,
    )
    assert taken.status_code == 303
    assert "You hold it" in client.get(f"/inbox/{conversation_id}", headers=admin).text
    resolved = client.post(
        f"/inbox/{conversation_id}/resolve",
        data={"csrf_token": admin_csrf},
        headers=admin,
        follow_redirects=False,
    )
    assert resolved.status_code == 303


def test_what_users_send_is_shown(client: TestClient, db: Database, account: NewAccount) -> None:
    said(db, account, "Here is the place", kind="location", data={"latitude": 18.52, "longitude": 73.85})
    said(db, account, "", kind="reaction", data={"emoji": "❤️", "message_id": "x"})
    conversation_id = said(db, account, "The receipt", kind="image")
    with db.session() as session:
        kept = store_media(session, account.account_id, PNG, "image/png", None)
        doc = store_media(session, account.account_id, b"%PDF-1.4", "application/pdf", "bill.pdf")
        session.execute(
            update(InboundMessage).where(InboundMessage.text == "The receipt").values(media_id=kept.id)
        )
        session.add(
            InboundMessage(
                account_id=account.account_id,
                from_phone=PHONE,
                provider="sandbox",
                provider_message_id="wamid.doc",
                kind="document",
                media_id=doc.id,
                received_at=utcnow(),
            )
        )
    agent, _, _ = session_of(db, account, "cara@acme.test", "agent")
    page = client.get(f"/inbox/{conversation_id}", headers=agent).text
    assert f'src="/inbox/media/{kept.id}"' in page
    assert f'href="/inbox/media/{doc.id}" download' in page
    assert "18.52, 73.85" in page
    assert "Reacted ❤️" in page


def test_the_list_shows_a_page_then_more(client: TestClient, db: Database, account: NewAccount) -> None:
    with db.session() as session:
        for i in range(LIST_PAGE + 1):
            said = InboundReply(f"wamid.{i}", f"+9198200{i:05d}", utcnow(), text=f"Message {i}")
            record_inbound(session, account.account_id, "sandbox", said)
    agent, _, _ = session_of(db, account, "cara@acme.test", "agent")
    first = client.get("/inbox?state=new", headers=agent).text
    assert first.count('class="conv ') == LIST_PAGE
    assert 'href="/inbox?state=new&amp;shown=100">Show more conversations' in first
    more = client.get("/inbox?state=new&shown=100", headers=agent).text
    assert more.count('class="conv ') == LIST_PAGE + 1 and "Show more" not in more
