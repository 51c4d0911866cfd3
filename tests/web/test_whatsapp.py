"""Settings → WhatsApp in the browser: connecting a provider (the form drawn from its plug-in's models),
secrets that never come back, a test message, and the Templates tab with its live preview."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect
from pydantic import Field

from tests.web.conftest import Site, check_page, shoot, sign_in
from tidings.accounts import integrations
from tidings.accounts.service import get_integration
from tidings.providers import registry
from tidings.providers.base import Provider, WebhookEvent
from tidings.providers.plugin import Deployment, ProviderSecrets, ProviderSettings, ProviderType, shaped
from tidings.templates.service import create_template

SECRET = "vonage-api-secret-Zq81Lm"
SIGNATURE = "vonage-signature-secret-Pw44Kd"


def _provider(page: Page, kind: str) -> None:
    page.get_by_label("Send WhatsApp messages with").select_option(kind)


def _fieldset(page: Page, kind: str):  # type: ignore[no-untyped-def]
    return page.locator(f"fieldset[data-provider={kind}]")


def _use_vonage(site: Site) -> None:
    with site.db.session() as session:
        integrations.configure(
            session,
            site.app.state.box,
            site.account.account_id,
            kind="vonage",
            settings={"sender": "447700900000"},
            secrets={"api_key": "k", "api_secret": SECRET, "signature_secret": SIGNATURE},
        )


def test_admin_connects_the_sandbox_and_sends_a_test(site: Site, admin: Page, tmp_path: Path) -> None:
    page = admin
    _use_vonage(site)  # so that connecting the sandbox is a change
    page.goto("/settings/whatsapp")
    expect(page.get_by_role("heading", name="WhatsApp", level=1)).to_be_visible()
    tabs = page.get_by_role("navigation", name="WhatsApp settings")
    expect(tabs.get_by_role("link", name="Integration")).to_have_attribute("aria-current", "page")
    expect(_fieldset(page, "vonage")).to_be_visible()
    _provider(page, "sandbox")
    expect(_fieldset(page, "vonage")).to_be_hidden()
    expect(_fieldset(page, "sandbox")).to_be_visible()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("The sandbox is the account's WhatsApp provider")

    base = f"{site.url}/webhooks/sandbox/{site.account.account_id}"
    webhooks = page.get_by_role("region", name="Webhook URLs")
    expect(webhooks.get_by_role("definition")).to_have_text([f"{base}/status Copy", f"{base}/inbound Copy"])
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy = webhooks.locator("button[data-copy='#wh-status']")
    expect(copy).to_have_accessible_description("Status URL")
    copy.click()
    expect(copy).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"{base}/status"

    page.get_by_label("To (phone number)").fill("+14155550123")
    page.get_by_role("button", name="Send test message").click()
    answer = page.locator("#test-answer")
    expect(answer).to_contain_text("Accepted by sandbox")
    expect(answer).to_contain_text("Message id")
    assert page.url.endswith("/settings/whatsapp?saved=1")  # the answer came in place (htmx)

    page.get_by_label("To (phone number)").fill("not a number")
    page.get_by_role("button", name="Send test message").click()
    expect(answer).to_contain_text("not a phone number in E.164 form")
    page.get_by_label("To (phone number)").fill("+14155550123")
    page.get_by_role("button", name="Send test message").click()
    expect(answer).to_contain_text("Accepted by sandbox")
    expect(copy).to_have_text("Copy")  # back after a moment
    check_page(page)
    shoot(page, "whatsapp-settings", tmp_path)


def test_saved_secrets_never_come_back_to_the_page(site: Site, admin: Page) -> None:
    page = admin
    page.goto("/settings/whatsapp")
    _provider(page, "vonage")
    vonage = _fieldset(page, "vonage")
    vonage.get_by_label("Sender", exact=True).fill("447700900000")
    vonage.get_by_label("API key (optional)").fill("a1b2c3d4")
    vonage.get_by_label("API secret (optional)").fill(SECRET)
    vonage.get_by_label("Signature secret (optional)").fill(SIGNATURE)
    vonage.get_by_label("Messaging limit (optional)").fill("1000")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Vonage is the account's WhatsApp provider")
    html = page.content()
    assert SECRET not in html and SIGNATURE not in html
    expect(vonage.get_by_label("API secret (optional)")).to_have_value("")
    expect(vonage).to_contain_text(f"Saved (…{SECRET[-4:]}): leave empty to keep it.")
    expect(vonage.get_by_label("Messaging limit (optional)")).to_have_value("1000")
    expect(vonage.get_by_label("Rate (messages a second, optional)")).to_have_value("30")

    # a new sender without typing the secrets again: they are kept, and still not shown
    vonage.get_by_label("Sender", exact=True).fill("447700900001")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(vonage.get_by_label("Sender", exact=True)).to_have_value("447700900001")
    expect(vonage).to_contain_text(f"Saved (…{SIGNATURE[-4:]}): leave empty to keep it.")
    html = page.content()
    assert SECRET not in html and SIGNATURE not in html
    with site.db.read() as session:
        sealed = get_integration(session, site.account.account_id).secrets
    assert site.app.state.box.open(sealed)["api_secret"] == SECRET


def test_a_refused_value_is_shown_next_to_its_field(site: Site, admin: Page) -> None:
    page = admin
    page.goto("/settings/whatsapp")
    _provider(page, "vonage")
    vonage = _fieldset(page, "vonage")
    sender = vonage.get_by_label("Sender", exact=True)
    sender.fill("44-77-ab")
    vonage.get_by_label("API key (optional)").fill("a1b2c3d4")
    vonage.get_by_label("API secret (optional)").fill(SECRET)
    vonage.get_by_label("Signature secret (optional)").fill(SIGNATURE)
    page.get_by_role("button", name="Save").click()
    expect(sender).to_have_attribute("aria-invalid", "true")
    expect(vonage.get_by_role("alert")).to_have_text(
        "Sender must be the WhatsApp number in E.164 digits, e.g. 447700900000"
    )
    expect(sender).to_have_value("44-77-ab")  # what was typed stays, the secrets do not
    assert SECRET not in page.content()

    _provider(page, "meta")
    meta = _fieldset(page, "meta")
    meta.get_by_label("Phone number ID", exact=True).fill("1234567")
    # each save below is refused for one field (the secrets typed are never shown again: typed each time)
    for typed, field, said in (
        ({"App secret (optional)": ""}, "App secret (optional)", "App secret is required"),
        (
            {"Graph API version (optional)": "23"},
            "Graph API version (optional)",
            "Graph API version must be a Graph API version such as v23.0",
        ),
        (
            {"Graph API version (optional)": "v23.0", "Rate (messages a second, optional)": "-5"},
            "Rate (messages a second, optional)",
            "The rate must be a positive number of messages a second",
        ),
    ):
        for label, value in {
            "Access token (optional)": "EAAG-token",
            "App secret (optional)": "meta-app-secret",
            **typed,
        }.items():
            meta.get_by_label(label).fill(value)
        page.get_by_role("button", name="Save").click()
        expect(meta.get_by_label(field)).to_have_attribute("aria-invalid", "true")
        expect(meta.get_by_role("alert")).to_have_text(said)
    with site.db.read() as session:
        assert get_integration(session, site.account.account_id).kind == "sandbox"  # nothing was saved


def test_add_a_template_with_the_format_error_first(site: Site, marketer: Page, tmp_path: Path) -> None:
    page = marketer
    page.goto("/settings/whatsapp/templates")
    tabs = page.get_by_role("navigation", name="WhatsApp settings")
    expect(tabs.get_by_role("link", name="Templates")).to_have_attribute("aria-current", "page")
    expect(tabs.get_by_role("link", name="Integration")).to_have_count(0)  # an admin's tab
    page.get_by_role("link", name="+ Add New").click()
    expect(page).to_have_url(re.compile(r"/settings/whatsapp/templates/new$"))
    expect(page.get_by_role("note")).to_contain_text(
        "write its name in this format: <template_namespace>:<template_name>"
    )

    page.get_by_label("Name").fill("booking_confirmation")
    page.get_by_label("Language").fill("en_US")
    page.get_by_label("Category").select_option("UTILITY")
    page.get_by_label("Body").fill("Hi {{1}}, your booking {{2}} is confirmed. See you on {{3}}!")
    preview = page.locator("#preview")
    expect(preview.locator(".var")).to_have_text(["{{1}}", "{{2}}", "{{3}}"])  # live, before saving
    expect(preview).to_contain_text("3 variables")
    page.get_by_role("button", name="Save template").click()
    name = page.get_by_label("Name")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#e-name")).to_have_text(
        "name must be <template_namespace>:<template_name>, e.g. tickets:booking_confirmation "
        "(the colon between the two parts is missing)"
    )
    expect(preview.locator(".var")).to_have_count(3)  # the refused form keeps the body and its preview
    check_page(page)
    shoot(page, "template-new", tmp_path)

    page.get_by_label("Body").fill("Hi {{1}}, your booking {{3}} is confirmed.")
    expect(preview).to_contain_text("{{2}} is missing")
    page.get_by_label("Body").fill("Hi {{1}}, your booking {{2}} is confirmed. See you on {{3}}!")
    expect(preview.locator(".var")).to_have_count(3)
    name.fill("tickets:booking_confirmation")
    page.get_by_role("button", name="Save template").click()

    expect(page).to_have_url(re.compile(r"/settings/whatsapp/templates\?created="))
    expect(page.get_by_role("status")).to_contain_text("Template tickets:booking_confirmation added")
    row = page.get_by_role("row").filter(has_text="tickets:booking_confirmation")
    expect(row).to_contain_text("APPROVED")
    expect(row).to_contain_text("en_US")
    expect(row).to_contain_text("Utility")
    expect(page.get_by_role("button", name="Sync")).to_be_visible()  # the sandbox reviews templates
    check_page(page)
    shoot(page, "templates-list", tmp_path)


def test_sync_only_where_the_provider_can(site: Site, marketer: Page) -> None:
    page = marketer
    with site.db.session() as session:  # made here, waiting for the provider's review
        create_template(
            session,
            site.account.account_id,
            name="tickets:reminder",
            body="See you {{1}}",
            category="UTILITY",
            status="PENDING",
        )
    page.goto("/settings/whatsapp/templates")
    row = page.get_by_role("row").filter(has_text="tickets:reminder")
    expect(row).to_contain_text("PENDING")
    page.get_by_role("button", name="Sync").click()  # the sandbox approves what it reviews
    expect(page.get_by_role("status")).to_have_text("Synced with the provider: 1 approved.")
    expect(row).to_contain_text("APPROVED")
    _use_vonage(site)
    page.goto("/settings/whatsapp/templates")
    expect(page.get_by_role("link", name="+ Add New")).to_be_visible()
    expect(page.get_by_role("button", name="Sync")).to_have_count(0)  # Vonage lists no templates


def test_roles(site: Site, page: Page) -> None:
    with site.db.session() as session:
        create_template(
            session,
            site.account.account_id,
            name="tickets:reminder",
            body="See you {{1}}",
            category="UTILITY",
        )
    sign_in(page, site.user("agent@acme.test", "agent"))
    response = page.goto("/settings/whatsapp/templates")
    assert response is not None and response.status == 200
    expect(page.get_by_role("row").filter(has_text="tickets:reminder")).to_contain_text("APPROVED")
    expect(page.get_by_role("link", name="+ Add New")).to_have_count(0)
    expect(page.get_by_role("button", name="Sync")).to_have_count(0)
    for path in ("/settings/whatsapp", "/settings/whatsapp/templates/new"):
        response = page.goto(path)
        assert response is not None and response.status == 403, path
        expect(page.get_by_role("main")).to_contain_text("you are signed in as agent")
    refused = page.request.post("/settings/whatsapp/templates/sync")  # no form of the agent's can post
    assert refused.status == 403

    page.context.clear_cookies()
    sign_in(page, site.user("marketer@acme.test", "marketer"))
    response = page.goto("/settings/whatsapp")
    assert response is not None and response.status == 403
    response = page.goto("/settings/whatsapp/templates/new")
    assert response is not None and response.status == 200


class EchoSettings(ProviderSettings):
    endpoint: str = shaped(r"[a-z]{3,10}", "three to ten small letters", description="Where it sends.")
    loud: bool = Field(False, description="Whether it shouts.")


class EchoSecrets(ProviderSecrets):
    token: str = Field("", description="Its token.")


class Echo(ProviderType[EchoSettings, EchoSecrets]):
    """A provider that only this test knows: its form comes from its two models alone."""

    kind = "echo"
    title = "Echo"
    settings_model = EchoSettings
    secrets_model = EchoSecrets

    def check(self, settings: EchoSettings, secrets: EchoSecrets) -> None:
        if not secrets.token:
            raise ValueError("echo: secrets.token is required")

    def build(self, settings: EchoSettings, secrets: EchoSecrets, deployment: Deployment) -> Provider:
        raise NotImplementedError

    def read_webhook(
        self, route: str, headers: Mapping[str, str], body: bytes, settings: Any, secrets: Any
    ) -> list[WebhookEvent]:
        return []


def test_a_new_provider_gets_its_form_for_free(site: Site, admin: Page) -> None:
    page = admin
    with registry.registered(Echo()):
        page.goto("/settings/whatsapp")
        _provider(page, "echo")
        echo = _fieldset(page, "echo")
        expect(echo.get_by_role("group", name="Echo")).to_have_count(0)  # the fieldset is the group
        endpoint = echo.get_by_label("Endpoint", exact=True)
        expect(endpoint).to_have_accessible_description(
            "Where it sends. It must be three to ten small letters."
        )
        expect(echo.get_by_label("Loud")).not_to_be_checked()
        endpoint.fill("ABC")
        echo.get_by_label("Token (optional)").fill("echo-token-81x")
        page.get_by_role("button", name="Save").click()
        expect(endpoint).to_have_attribute("aria-invalid", "true")
        expect(echo.get_by_role("alert")).to_have_text("Endpoint must be three to ten small letters")
        endpoint.fill("abc")
        echo.get_by_label("Loud").check()
        echo.get_by_label("Token (optional)").fill("echo-token-81x")
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_contain_text("Echo is the account's WhatsApp provider")
        expect(endpoint).to_have_value("abc")
        expect(echo.get_by_label("Loud")).to_be_checked()
        expect(echo.get_by_label("Token (optional)")).to_have_accessible_description(
            "Its token. Saved (…-81x): leave empty to keep it."
        )
        assert "echo-token-81x" not in page.content()
        with site.db.read() as session:
            saved = get_integration(session, site.account.account_id)
            assert (saved.kind, saved.settings) == ("echo", {"endpoint": "abc", "loud": True})
