"""Signing in and out in the browser, and what the session cookie and CSRF protect."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.web.conftest import PASSWORD, Site, check_page, shoot, sign_in


def test_sign_in_and_out(site: Site, page: Page, tmp_path: Path) -> None:
    email = site.user("asha@acme.test", "marketer")
    page.goto("/campaigns")
    expect(page).to_have_url(re.compile(r"/signin\?next=%2Fcampaigns$"))  # a page needs a session
    check_page(page)
    shoot(page, "signin", tmp_path)

    sign_in(page, email, "not the password")
    expect(page.get_by_role("alert")).to_contain_text("Wrong e-mail or password")

    page.goto("/signin?next=%2Fcampaigns")
    sign_in_from_here = page.get_by_label("E-mail", exact=True)
    sign_in_from_here.fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/campaigns$"))
    cookie = next(c for c in page.context.cookies() if c["name"] == "tidings_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
    expect(page.get_by_role("navigation", name="Main")).to_contain_text("asha@acme.test")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    # the old cookie opens nothing any more
    page.context.add_cookies([cookie])
    page.goto("/campaigns")
    expect(page).to_have_url(re.compile(r"/signin"))


def test_a_form_without_its_csrf_token_changes_nothing(site: Site) -> None:
    email = site.user("asha@acme.test", "marketer")
    with httpx.Client(base_url=site.url) as client:
        form = client.get("/signin")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        # (the cookie is Secure, which a browser keeps for loopback but httpx sends over HTTPS only)
        client.cookies = httpx.Cookies({"tidings_csrf": form.cookies["tidings_csrf"]})
        # another site's form: no token, or the wrong one — refused before the password is looked at
        refused = client.post("/signin", data={"email": email, "password": PASSWORD})
        assert refused.status_code == 403
        refused = client.post("/signin", data={"email": email, "password": PASSWORD, "csrf_token": "x"})
        assert refused.status_code == 403
        signed_in = client.post(
            "/signin", data={"email": email, "password": PASSWORD, "csrf_token": token.group(1)}
        )
        assert signed_in.status_code == 303
        session = signed_in.cookies["tidings_session"]
    with httpx.Client(base_url=site.url, cookies={"tidings_session": session}) as client:
        # signed in, but the sign-out form posted without the session's CSRF token: still signed in
        assert client.post("/signout").status_code == 403
        assert client.get("/campaigns", follow_redirects=False).status_code != 303
