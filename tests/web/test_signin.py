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


def test_the_eleventh_wrong_password_waits_but_the_users_own_address_still_signs_in(site: Site) -> None:
    """Failed sign-ins are limited per e-mail (10 within 5 minutes, guards.SignInLimiter) and per address;
    an address the user signed in from before is trusted, so that someone guessing from elsewhere does not
    lock the user out. The server takes the address from X-Forwarded-For (uvicorn trusts its loopback
    proxy), so two clients on this machine stand for two places."""
    email = site.user("asha@acme.test", "marketer")

    tokens: dict[int, str] = {}  # each client's sign-in form token

    def attempt(client: httpx.Client, password: str) -> httpx.Response:
        if id(client) not in tokens:
            tokens[id(client)] = client.get("/signin").cookies["tidings_csrf"]
        token = tokens[id(client)]
        # (the form's cookie is Secure, which httpx sends over HTTPS only: sent by hand)
        cookie = {"Cookie": f"tidings_csrf={token}"}
        form = {"email": email, "password": password, "csrf_token": token}
        return client.post("/signin", data=form, headers=cookie)

    with (
        httpx.Client(base_url=site.url, headers={"X-Forwarded-For": "198.51.100.7"}) as home,
        httpx.Client(base_url=site.url, headers={"X-Forwarded-For": "203.0.113.9"}) as elsewhere,
    ):
        assert attempt(home, PASSWORD).status_code == 303  # Asha signs in from home
        for _ in range(10):
            wrong = attempt(elsewhere, "a wrong guess")
            assert wrong.status_code == 401 and "Wrong e-mail or password" in wrong.text
        eleventh = attempt(elsewhere, "a wrong guess")
        assert eleventh.status_code == 429
        wait = re.search(r"try again in (\d+) s", eleventh.text)
        assert wait is not None and 0 < int(wait.group(1)) <= 300, eleventh.text
        assert 'role="alert"' in eleventh.text and "<form" in eleventh.text  # the page, with the wait
        # even the right password waits there: the limit is checked before the password is looked at
        assert attempt(elsewhere, PASSWORD).status_code == 429
        # from home, where Asha signed in before, the right password still works
        assert attempt(home, PASSWORD).status_code == 303
