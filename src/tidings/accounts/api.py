"""The account's WhatsApp integration: read (secrets masked), configure, send a test message."""

# No ``from __future__ import annotations``: the PUT body's type is made from the registry when the routes
# are, and FastAPI reads the routes' annotations as objects.

from datetime import datetime
from typing import Annotated, Any, Literal, Union

import httpx
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from tidings.accounts import integrations, service
from tidings.accounts.models import Account
from tidings.accounts.sandbox_user import sandbox_user_writes
from tidings.accounts.service import get_integration
from tidings.accounts.testsend import send_test_message
from tidings.campaigns.rules import AccountOut, AccountUpdate, Rules
from tidings.deps import ADMIN, CurrentAccount, Db, get_box, get_settings
from tidings.providers import registry
from tidings.providers.plugin import AnyProviderType
from tidings.providers.sandbox import USER_KINDS
from tidings.webhooks.lane import WebhookLane


def _integration_in(plugin: AnyProviderType) -> type[BaseModel]:
    """The body of ``PUT`` for one provider: its kind, its settings and secrets models, a rate."""
    rate = f"{plugin.default_rate:g}" if plugin.default_rate else "unlimited"
    fields: dict[str, Any] = dict(
        kind=(Literal[plugin.kind], ...),
        settings=(
            plugin.settings_model | None,
            Field(None, description="Left out: every setting at its default (refused if one is required)."),
        ),
        secrets=(
            plugin.secrets_model,
            Field(
                default_factory=plugin.secrets_model,
                description="Left out with the same kind: the saved value stays. Never shown again.",
            ),
        ),
        rate_limit=(
            float | None,
            Field(None, description=f"Messages a second for the sender (default: {rate})."),
        ),
    )
    title = f"{plugin.title[:1].upper()}{plugin.title[1:]}"
    return create_model(
        f"IntegrationIn_{plugin.kind}", __doc__=f"{title} as the account's WhatsApp provider.", **fields
    )


def integration_in() -> Any:
    """The body of ``PUT /api/v1/integrations/whatsapp``: one shape per provider, told apart by ``kind``
    (the OpenAPI document describes each provider's settings and secrets)."""
    variants = tuple(_integration_in(plugin) for plugin in registry.plugins())
    if len(variants) == 1:
        return variants[0]
    return Annotated[Union[variants], Field(discriminator="kind")]  # noqa: UP007 - a tuple of models


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


class SandboxUserMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_phone: str = Field(
        alias="from", description="The sandbox user's number, E.164.", examples=["+14155550123"]
    )
    kind: Literal[USER_KINDS] = Field("text", description="What the user sends.")  # type: ignore[valid-type]
    text: str = Field(
        "", max_length=4096, description="The text; a button's label; a file's caption; an emoji."
    )
    context: str | None = Field(
        None, description="The provider id of the message it answers (or reacts to)", max_length=128
    )
    payload: str | None = Field(None, max_length=256, description="A button's payload or a reply's id.")
    profile_name: str = Field("Sandbox user", max_length=100, description="The user's WhatsApp name.")


class SandboxUserMessageOut(BaseModel):
    provider_message_id: str


def integrations_router() -> APIRouter:
    """The integration's routes, for the providers registered when the app is made."""
    router = APIRouter(prefix="/api/v1/integrations/whatsapp", tags=["integrations"], dependencies=[ADMIN])
    IntegrationIn = integration_in()

    @router.get("", response_model=IntegrationOut)
    def read(request: Request, account: CurrentAccount, db: Db) -> IntegrationOut:
        with db.session() as session:
            integration = get_integration(session, account.id)
            shown = integrations.describe(integration, get_box(request), get_settings(request).public_url)
        return IntegrationOut(**shown)

    @router.put("", response_model=IntegrationOut)
    def configure(
        body: IntegrationIn,  # type: ignore[valid-type] # made from the registry
        request: Request,
        account: CurrentAccount,
        db: Db,
    ) -> IntegrationOut:
        chosen: Any = body
        box = get_box(request)
        with db.session() as session:
            integration = integrations.configure(
                session,
                box,
                account.id,
                kind=chosen.kind,
                settings=chosen.settings.model_dump() if chosen.settings is not None else {},
                secrets=chosen.secrets.model_dump(exclude_unset=True),
                rate_limit=chosen.rate_limit,
                extra_hosts=get_settings(request).extra_provider_hosts,
            )
            shown = integrations.describe(integration, box, get_settings(request).public_url)
        return IntegrationOut(**shown)

    @router.post("/test", response_model=TestSendOut)
    async def send_test(body: TestSend, request: Request, account: CurrentAccount) -> TestSendOut:
        """Send one message with the account's provider now and report what the provider answered."""
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

    @router.post("/sandbox/messages", response_model=SandboxUserMessageOut, status_code=202)
    async def sandbox_user_message(
        body: SandboxUserMessage, request: Request, account: CurrentAccount
    ) -> SandboxUserMessageOut:
        """Write to the business as a sandbox user (the sandbox provider only; 409 ``not_sandbox``): the
        message goes through the account's own signed inbound webhook, as a real user's does, and lands in
        the inbox."""
        into_app = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=WebhookLane(request.app, request.app.state.webhooks)),
            timeout=15,
        )
        async with into_app:
            found = await sandbox_user_writes(
                request.app.state.db,
                get_box(request),
                get_settings(request).public_url,
                account.id,
                from_phone=body.from_phone,
                text=body.text,
                kind=body.kind,
                context=body.context,
                http=into_app,
                payload=body.payload,
                profile_name=body.profile_name,
            )
        return SandboxUserMessageOut(provider_message_id=found)

    return router


account_router = APIRouter(prefix="/api/v1/account", tags=["account"], dependencies=[ADMIN])


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
        return _account_out(
            service.update_account(
                session,
                account.id,
                name=body.name,
                timezone=body.timezone,
                settings=body.settings.stored() if body.settings is not None else None,
            )
        )
