"""Every page route of the dashboard refuses whom it must, against the real server: without a session it
sends to the sign-in page; an agent is refused (403) the admin pages and the marketer's forms and every
change, a marketer the admin pages; a change without its CSRF token is refused (403) and changes nothing.

The routes are those of ``web.PAGE_ROUTERS`` as the app serves them (the list grows with the dashboard);
what each needs is the product's rule, written once here from the URL map, so that a page registered
with a weaker role than its URL says fails here. Path parameters get real ids from a small data set made
through the API. (The API's own refusals, per API-key role for every /api/v1 route, are in
tests/test_users.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import select

from tests.conftest import basic
from tests.web.conftest import Site
from tidings import web
from tidings.conversations import service as conversations
from tidings.db import Base, utcnow
from tidings.errors import _api_routes  # the app's routes, those of included routers too
from tidings.providers.base import InboundReply
from tidings.users import service as users
from tidings.users.models import Role
from tidings.web.auth import SESSION_COOKIE, csrf_for

PUBLIC = {"/signin", "/"}  # the sign-in form, and "/" (a redirect to the campaigns)


def needed(method: str, path: str) -> Role:
    """The role a page route needs, by the URL map: the account's settings (not the templates, which
    marketers keep) are an admin's; a "new" or "edit" form and every change a marketer's; anything else
    any signed-in user may look at; signing out is anyone's."""
    if path == "/signout" or path.startswith("/inbox"):  # agents answer conversations
        return Role.agent
    if path.startswith("/settings/") and not path.startswith("/settings/whatsapp/templates"):
        return Role.admin
    if method == "GET" and not re.search(r"/(new|edit)$", path):
        return Role.agent
    return Role.marketer


def page_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves from ``web.PAGE_ROUTERS``."""
    declared = {
        (method, route.path)
        for router in web.PAGE_ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    served = {(method, route.path) for route in _api_routes(app) for method in route.methods}
    assert declared <= served
    return sorted(declared)


@pytest.fixture
def ids(site: Site) -> dict[str, str]:
    """A small data set made through the API; each path parameter's value is one of its real ids."""
    auth = basic(site.account)
    with httpx.Client(base_url=site.url, headers=auth) as api:

        def made(path: str, body: dict[str, Any]) -> dict[str, Any]:
            answer = api.post(path, json=body)
            assert answer.status_code in (200, 201), answer.text
            found: dict[str, Any] = answer.json()
            return found

        profile = {
            "identity": "asha-1",
            "type": "profile",
            "profileData": {"Name": "Asha", "Phone": "+919800000001"},
        }
        made("/1/upload", {"d": [profile]})
        body = {"name": "shop:hello", "category": "MARKETING", "body": "Hi {{1}}", "language": "en"}
        template = made("/api/v1/templates", body)
        segment = made(
            "/api/v1/segments",
            {"name": "Pune", "definition": {"property": "City", "op": "equals", "value": "Pune"}},
        )
        campaign = made(
            "/api/v1/campaigns",
            {"name": "Draft", "template_id": template["id"], "variables": ["x"], "draft": True},
        )
        user = made("/api/v1/users", {"email": "someone@acme.test", "role": "agent", "password": "x" * 12})
        key = made("/api/v1/api-keys", {"name": "CRM", "role": "marketer"})
    with site.db.session() as session:
        said = InboundReply("wamid.1", "+919800000001", utcnow(), text="Hello")
        conversations.record_inbound(session, site.account.account_id, "sandbox", said)
        conversation = conversations.conversation_by_phone(session, site.account.account_id, "+919800000001")
        assert conversation is not None
        conversation.unread = 0  # (opening it then marks nothing: the worker's read mark would race)
        media = conversations.store_media(session, site.account.account_id, b"GIF89a", "image/gif", None)
        saved = conversations.save_reply(session, site.account.account_id, "hours", "Open 9 to 6.")
        conversation_id, media_id, saved_reply_id = conversation.id, media.id, saved.id
    return {
        "conversation_id": str(conversation_id),
        "media_id": str(media_id),
        "saved_reply_id": str(saved_reply_id),
        "campaign_id": str(campaign["id"]),
        "segment_id": str(segment["id"]),
        "template_id": str(template["id"]),
        "ref": template["name"],
        "identity": "asha-1",
        "user_id": str(user["id"]),
        "key_id": str(key["id"]),
    }


def url_of(path: str, ids: dict[str, str]) -> str:
    names = re.findall(r"{(\w+)(?::\w+)?}", path)
    missing = [name for name in names if name not in ids]
    if missing:
        pytest.fail(f"{path}: add a real value for {missing} to the `ids` fixture of tests/web/test_roles.py")
    return re.sub(r"{(\w+)(?::\w+)?}", lambda m: ids[m.group(1)], path)


def signed_in(site: Site, role: Role) -> tuple[dict[str, str], str]:
    """The Cookie header of a new session of a user with ``role``, and its CSRF token. (The cookie is
    Secure, which httpx keeps for HTTPS only: the header is set by hand.)"""
    with site.db.session() as session:
        user = users.create_user(
            session,
            site.account.account_id,
            email=f"{role.value}@acme.test",
            role=role.value,
            password="p" * 12,
        )
        token = users.start_session(session, user).token
    return {"Cookie": f"{SESSION_COOKIE}={token}"}, csrf_for(token)


@pytest.fixture
def http(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.url, follow_redirects=False, timeout=30) as client:
        yield client


def ask(
    http: httpx.Client, method: str, url: str, headers: dict[str, str], form: dict[str, str]
) -> httpx.Response:
    """The answer's status and headers (a page of live figures streams on: its body is not read)."""
    data = form if method != "GET" else None
    with http.stream(method, url, headers=headers, data=data) as answer:
        if answer.status_code != 200:
            answer.read()
        return answer


def snapshot(site: Site) -> dict[str, list[Any]]:
    """Every row of every table, to show that a refused request changed nothing."""
    with site.db.read() as session:
        return {
            table.name: sorted(tuple(map(repr, row)) for row in session.execute(select(table)))
            for table in Base.metadata.sorted_tables
        }


def test_the_page_routes_are_found_and_include_the_settings(site: Site) -> None:
    routes = page_routes(site.app)
    for expected in [("GET", "/campaigns"), ("GET", "/settings/users"), ("POST", "/settings/api-keys")]:
        assert expected in routes


def test_without_a_session_every_page_sends_to_the_sign_in_page(
    site: Site, http: httpx.Client, ids: dict[str, str]
) -> None:
    for method, path in page_routes(site.app):
        if path in PUBLIC:
            continue
        answer = ask(http, method, url_of(path, ids), {}, {})
        assert answer.status_code == 303, (method, path, answer.status_code)
        assert answer.headers["location"].startswith("/signin?next="), (method, path)


@pytest.mark.parametrize("role", [Role.agent, Role.marketer, Role.admin])
def test_each_role_is_refused_the_pages_above_it(
    site: Site, http: httpx.Client, ids: dict[str, str], role: Role
) -> None:
    cookie, token = signed_in(site, role)
    refused = 0
    for method, path in page_routes(site.app):
        if path in PUBLIC:
            continue
        needs = needed(method, path)
        if role.allows(needs) and method != "GET":
            continue  # a change it may make: not made here (each page's own test makes it)
        before = snapshot(site) if method != "GET" else None
        answer = ask(http, method, url_of(path, ids), cookie, {"csrf_token": token})
        where = (role.value, method, path)
        if role.allows(needs):
            assert answer.status_code not in (401, 403), where
            assert not answer.headers.get("location", "").startswith("/signin"), where
        else:
            refused += 1
            assert answer.status_code == 403, where
            assert f"This page needs the {needs.value} role" in answer.text, where
            if before is not None:
                assert snapshot(site) == before, where
    assert refused or role == Role.admin  # (the test found something to refuse)


def test_a_change_without_its_csrf_token_is_refused_and_changes_nothing(
    site: Site, http: httpx.Client, ids: dict[str, str]
) -> None:
    cookie, token = signed_in(site, Role.admin)  # allowed everything: only the token is missing
    changes = [(m, p) for m, p in page_routes(site.app) if m not in ("GET", "HEAD")]
    assert ("POST", "/settings/users") in changes
    # a form that would work with the token: a new user, a key, settings, a sign-in
    form = {"email": "new@acme.test", "role": "admin", "password": "p" * 12, "name": "k", "timezone": "UTC"}
    before = snapshot(site)
    for method, path in changes:
        url = url_of(path, ids)
        for sent in ({}, {"csrf_token": "not-the-token"}, {"csrf_token": csrf_for("another session")}):
            answer = ask(http, method, url, cookie, {**form, **sent})
            assert answer.status_code == 403, (method, path, sent)
            assert "nothing was changed" in answer.text, (method, path)
    assert snapshot(site) == before
    # (the same form with the token is accepted: the refusals above were the token's)
    added = ask(http, "POST", "/settings/users", cookie, {**form, "csrf_token": token})
    assert added.status_code == 303
    assert snapshot(site) != before
