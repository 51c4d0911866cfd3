"""The dashboard's browser tests: Debian's Chromium (``/usr/bin/chromium``), driven by Playwright, against
the real server on loopback with its worker and the sandbox provider (the ``live`` fixture).

``shoot(page, name)`` writes a screenshot: to ``docs/screenshots/`` when ``TIDINGS_SCREENSHOTS`` names it
(``make screenshots``), else to the test's temporary folder. ``check_page(page)`` runs axe-core (from
``node_modules``, installed by the set-up) in the page and fails on any serious or critical violation,
and fails on any error the browser's console reported (a script or style the page's CSP refused)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi import FastAPI
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, sync_playwright

from tests.conftest import new_account
from tidings.accounts.service import NewAccount
from tidings.db import Database
from tidings.secrets import SecretBox
from tidings.users.service import create_user

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "correct horse battery"
# Chromium's own connections are refused by this machine's closed network: ask for none.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# One browser a module: while Playwright's sync API runs, its event loop is the thread's, so that no
# other test could start one (asyncio.run) while a session-wide browser stayed open.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: `make test` installs it (npm ci)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Site:
    """The running dashboard: its URL, the app (for its database and settings), and an account."""

    url: str
    app: FastAPI
    account: NewAccount

    @property
    def db(self) -> Database:
        db: Database = self.app.state.db
        return db

    def user(self, email: str, role: str, password: str = PASSWORD) -> str:
        with self.db.session() as session:
            create_user(session, self.account.account_id, email=email, role=role, password=password)
        return email


@pytest.fixture
def site(live: tuple[str, FastAPI], db: Database, box: SecretBox) -> Site:
    url, app = live
    return Site(url=url, app=app, account=new_account(db, box, "Acme Retail"))


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, base_url=site.url)
    page = context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_response(response: Response) -> None:  # a script, style or fetch the page needed, refused
        if response.status >= 400 and response.request.resource_type != "document":
            errors.append(f"{response.status} {response.url}")

    page.on("response", on_response)
    page.console_errors = errors  # type: ignore[attr-defined]
    yield page
    context.close()


def sign_in(page: Page, email: str, password: str = PASSWORD, account: str = "") -> None:
    page.goto("/signin")
    page.get_by_label("E-mail", exact=True).fill(email)
    page.get_by_label("Password").fill(password)
    if account:
        page.get_by_label("Account ID", exact=False).fill(account)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


@pytest.fixture
def admin(site: Site, page: Page) -> Page:
    """The page, signed in as the account's admin."""
    sign_in(page, site.user("admin@acme.test", "admin"))
    return page


@pytest.fixture
def marketer(site: Site, page: Page) -> Page:
    """The page, signed in as a marketer."""
    sign_in(page, site.user("marketer@acme.test", "marketer"))
    return page


def shoot(page: Page, name: str, tmp_path: Path | None = None) -> Path:
    """A screenshot of the page as a 1280 x 800 laptop shows it (the whole page's height)."""
    folder = Path(os.environ.get("TIDINGS_SCREENSHOTS") or tmp_path or ROOT / "var" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def check_page(page: Page) -> None:
    """No serious or critical accessibility violation (axe-core), no console error."""
    page.evaluate(AXE.read_text())  # by DevTools evaluation: the page's CSP allows no injected script
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    described = [{"id": v["id"], "help": v["help"], "html": [n["html"] for n in v["nodes"][:3]]} for v in bad]
    assert not bad, json.dumps(described, indent=1)
    errors = page.console_errors  # type: ignore[attr-defined]
    assert not errors, errors
