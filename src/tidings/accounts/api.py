"""The account's WhatsApp integration: read (secrets masked), configure, send a test message."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tidings.accounts import integrations
from tidings.accounts.models import Account
from tidings.accounts.service import get_integration
from tidings.campaigns.rules import AccountOut, AccountUpdate, Rules
from tidings.deps import CurrentAccount, Db, get_box, get_settings
from tidings.errors import Invalid

router = APIRouter(prefix="/api/v1/integrations/whatsapp", tags=["integrations"])


class IntegrationIn(BaseModel):
    kind: Literal["sandbox", "vonage", "meta"]
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="vonage: sender, base_url, application_id, legacy_template_names; "
        "meta: phone_number_id, waba_id, base_url, api_version, verify_token.",
    )
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="vonage: private_key, api_key, api_secret, signature_secret; meta: access_token, "
        "app_secret. Left out with the same kind: the saved value stays. Never shown again.",
    )
    rate_limit: float | None = Field(
        None, description="Messages a second for the sender (default: meta 80, vonage 30, sandbox unlimited)."
    )


class IntegrationOut(BaseModel):
    kind: str
    settings: dict[str, Any]
    secrets: dict[str, str] = Field(description="Masked hints of the saved secrets.")
    rate_limit: float | None
    webhook_urls: dict[str, str] = Field(description="The URLs to give the provider.")
    updated_at: datetime


class TestSend(BaseModel):
    to: str = Field(description="E.164 number, e.g. +14155550123.")
    text: str | None = Field(None, description="Free text (only inside the 24-hour window on real WhatsApp).")
    template: str | None = Field(None, description="`<namespace>:<name>` of an approved template.")
    language: str = "en"
    params: list[str] = Field(default_factory=list)


class TestSendOut(BaseModel):
    outcome: str
    provider: str
    provider_message_id: str | None
    error_code: str | None
    error_detail: str | None


@router.get("", response_model=IntegrationOut)
def read(request: Request, account: CurrentAccount, db: Db) -> IntegrationOut:
    with db.session() as session:
        integration = get_integration(session, account.id)
        shown = integrations.describe(integration, get_box(request), get_settings(request).public_url)
    return IntegrationOut(**shown)


@router.put("", response_model=IntegrationOut)
def configure(body: IntegrationIn, request: Request, account: CurrentAccount, db: Db) -> IntegrationOut:
    box = get_box(request)
    with db.session() as session:
        integration = integrations.configure(
            session,
            box,
            account.id,
            kind=body.kind,
            settings=body.settings,
            secrets=body.secrets,
            rate_limit=body.rate_limit,
            extra_hosts=get_settings(request).extra_provider_hosts,
        )
        shown = integrations.describe(integration, box, get_settings(request).public_url)
    return IntegrationOut(**shown)


@router.post("/test", response_model=TestSendOut)
async def send_test(body: TestSend, request: Request, account: CurrentAccount) -> TestSendOut:
    """Send one message with the account's provider now and report what the provider answered."""
    from tidings.accounts.testsend import send_test_message

    result = await send_test_message(
        request.app.state.db,
        get_box(request),
        get_settings(request),
        account.id,
        to=body.to,
        text=body.text,
        template=body.template,
        language=body.language,
        params=body.params,
    )
    return TestSendOut(**result)


account_router = APIRouter(prefix="/api/v1/account", tags=["account"])


def _account_out(account: Account) -> AccountOut:
    settings = Rules.model_validate(account.settings or {})
    return AccountOut(id=account.id, name=account.name, timezone=account.timezone, settings=settings)


@account_router.get("", response_model=AccountOut, response_model_exclude_unset=True)
def read_account(account: CurrentAccount) -> AccountOut:
    """The account: name, time zone, its engagement rules (system control group, frequency cap, DND) and
    its own consent keywords per language (``settings.keywords``)."""
    return _account_out(account)


@account_router.patch("", response_model=AccountOut, response_model_exclude_unset=True)
def update_account(body: AccountUpdate, account: CurrentAccount, db: Db) -> AccountOut:
    with db.session() as session:
        row = session.get(Account, account.id)
        assert row is not None
        if body.name is not None:
            row.name = body.name
        if body.timezone is not None:
            try:
                ZoneInfo(body.timezone)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise Invalid(f"timezone {body.timezone!r} is not an IANA time zone") from exc
            row.timezone = body.timezone
        if body.settings is not None:
            row.settings = body.settings.stored()
        session.flush()
        return _account_out(row)
